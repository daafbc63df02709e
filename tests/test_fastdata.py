"""The prepared image store gives the lazy path's pixels; importing the package leaves the environment alone."""

import json
import os
import subprocess
import sys

import pytest
import torch

from hf_transfer import load_image_classification_data
from hf_transfer.fastdata import PixelBatchCollator, PreparedImages, ScaleNormalize, TransformStages, prepare_splits
from hf_transfer.transforms import build_transform, with_transforms

CFG = {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.4), "crop_pct": 0.875}


def lazy_batch(split, indices):
    from transformers import default_data_collator

    return default_data_collator(split.__getitems__(indices))


@pytest.mark.parametrize("augmentation", ["none", "flip", "gentle"])
def test_prepared_store_matches_lazy_transform_bit_for_bit(image_folder, augmentation):
    data = load_image_classification_data(train_dir=str(image_folder), validation_split=0.25)
    lazy = with_transforms(data.splits, data, CFG, image_size=24, augmentation=augmentation)
    splits, collator, note = prepare_splits(data, lazy, CFG, image_size=24, augmentation=augmentation, channels_last=True)
    assert isinstance(splits["train"], PreparedImages) and isinstance(splits["validation"], PreparedImages), note
    assert isinstance(collator.finish, ScaleNormalize)  # the plain-ops normalization, checked against v2's below
    for name in ("train", "validation"):
        indices = list(range(len(splits[name])))[::-1]
        torch.manual_seed(3)  # same draws for the random augmentation on both paths
        want = lazy_batch(lazy[name], indices)
        torch.manual_seed(3)
        got = collator(splits[name].__getitems__(indices))
        assert got["pixel_values"].is_contiguous(memory_format=torch.channels_last)
        assert got["pixel_values"].dtype == torch.float32 and got["pixel_values"].shape == want["pixel_values"].shape
        assert torch.equal(got["pixel_values"], want["pixel_values"]), name
        assert torch.equal(got["labels"], want["labels"])


def test_strong_augmentation_and_small_budget_keep_the_lazy_path(image_folder, monkeypatch):
    assert TransformStages.split(build_transform(CFG, augmentation="strong")) is None
    data = load_image_classification_data(train_dir=str(image_folder), validation_split=0.25)
    lazy = with_transforms(data.splits, data, CFG, image_size=24, augmentation="strong")
    splits, collator, _ = prepare_splits(data, lazy, CFG, image_size=24, augmentation="strong")
    assert splits["train"] is lazy["train"] and isinstance(splits["validation"], PreparedImages)
    batch = collator(lazy["train"].__getitems__([0, 1]))  # float items from the lazy path pass through unchanged
    assert batch["pixel_values"].dtype == torch.float32 and batch["pixel_values"].shape == (2, 3, 24, 24)
    monkeypatch.setenv("HF_TRANSFER_IMAGE_STORE_BYTES", "1000")
    splits, _, note = prepare_splits(data, lazy, CFG, image_size=24, augmentation="none")
    assert splits["train"] is lazy["train"] and "budget" in note


def test_collator_keeps_contiguous_layout_when_asked():
    items = [{"pixel_values": torch.zeros(3, 4, 4, dtype=torch.uint8), "labels": 1}] * 2
    batch = PixelBatchCollator(None)(items)
    assert batch["pixel_values"].is_contiguous() and batch["labels"].tolist() == [1, 1]


def test_importing_hf_transfer_changes_no_environment_variable():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = ("import json, os; before = dict(os.environ); import hf_transfer, hf_transfer.trainer, hf_transfer.jobs.finetune; "
            "print(json.dumps({k: (before.get(k), os.environ.get(k)) for k in set(before) | set(os.environ) "
            "if before.get(k) != os.environ.get(k)}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}
