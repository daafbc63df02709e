"""Shared fixtures: everything offline, tiny models, real tiny images."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_hf_folders(tmp_path_factory):
    """Tiny transformers classifiers (random weights) saved as local folders, as a Hub download would be."""
    from transformers import (
        ConvNextConfig,
        ConvNextForImageClassification,
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    root = tmp_path_factory.mktemp("hf_models")
    torch.manual_seed(0)
    models = {
        "vit": ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                   intermediate_size=37, image_size=32, patch_size=8, num_labels=5)),
        "convnext": ConvNextForImageClassification(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                                                                  image_size=32, num_labels=5)),
        "resnet": ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                            layer_type="basic", num_labels=5)),
    }
    paths = {}
    for name, model in models.items():
        paths[name] = root / name
        model.save_pretrained(paths[name])
    return paths


@pytest.fixture
def image_folder(tmp_path):
    """A small imagefolder dataset from real digits: train/<class>/*.png (two classes, 12 images each)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path / "train"
    for cls in (0, 1):
        (root / f"digit_{cls}").mkdir(parents=True)
        for i, img in enumerate(digits.images[digits.target == cls][:12]):
            Image.fromarray((img * 15).astype(np.uint8)).save(root / f"digit_{cls}" / f"{i}.png")
    return root
