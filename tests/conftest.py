"""Shared fixtures: everything offline, tiny models, real tiny images."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no spinning threads on a shared CPU (before torch loads)

import contextlib  # noqa: E402
import functools  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("HF_TRANSFER_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))


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


class RandomImages(torch.utils.data.Dataset):
    """A fixed batch of random images with labels, in the dict form Trainer feeds models."""

    def __init__(self, n=16, size=32, classes=2, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.randint(0, classes, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


@pytest.fixture
def random_images():
    return RandomImages


@pytest.fixture
def tiny_training_args(tmp_path):
    """TrainingArguments for a few CPU steps, no logging or saving unless overridden."""
    from transformers import TrainingArguments

    def make(**overrides):
        kwargs = dict(output_dir=str(tmp_path / "out"), use_cpu=True, num_train_epochs=1, per_device_train_batch_size=8,
                      report_to=[], save_strategy="no", logging_strategy="no", remove_unused_columns=False,
                      disable_tqdm=True, learning_rate=1e-2, weight_decay=0.05, seed=0, dataloader_num_workers=0)
        kwargs.update(overrides)
        return TrainingArguments(**kwargs)

    return make


# --------------------------------------------------------------------------------------------- recipes in-process
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RecipeRun:
    """What a recipe run left: the exit code, and what it printed (the shape of subprocess.CompletedProcess)."""

    returncode: int
    stdout: str
    stderr: str


def run_recipe_in_process(recipe: str, *args, env: dict | None = None) -> RecipeRun:
    """Run ``recipes/<recipe>``'s ``main(args)`` in this process: the same code path as the command line, without the
    ~8 s of imports a fresh interpreter pays. Exit codes come from SystemExit; any other exception fails the test
    with its traceback (a recipe must never end that way). Environment and torch's thread count are restored."""
    module = _recipe_module(recipe)
    out, err = io.StringIO(), io.StringIO()
    saved_env, threads = dict(os.environ), torch.get_num_threads()
    os.environ.update({k: str(v) for k, v in (env or {}).items()})
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            module.main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(threads)
    return RecipeRun(code, out.getvalue(), err.getvalue())


@functools.cache
def _recipe_module(recipe: str):
    path = ROOT / recipe if "/" in recipe else ROOT / "recipes" / recipe  # "finetune.py" or "push_scripts/..."
    spec = importlib.util.spec_from_file_location(f"recipe_{Path(recipe).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------ a process without hf_transfer
def run_without_hf_transfer(script: str, *args: str, tmp_path, timeout: int = 600):
    """Run ``script`` (``python -c``, with ``args``) in a fresh process where hf_transfer cannot be imported, as a
    user without the package runs the saved folder. A stub package that raises ImportError shadows the installed
    one, and the script stops if hf_transfer imports all the same. Returns the process's last stdout line as JSON."""
    import json
    import subprocess
    import sys

    stub = tmp_path / "no_hf_transfer" / "hf_transfer"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "__init__.py").write_text("raise ImportError('hf_transfer is not installed here')\n")
    guard = ("try:\n    import hf_transfer\nexcept ImportError:\n    pass\n"
             "else:\n    raise SystemExit('hf_transfer is importable')\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(stub.parent)}
    done = subprocess.run([sys.executable, "-c", guard + script, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
