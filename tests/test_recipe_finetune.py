"""End-to-end: recipes/finetune.py writes a folder that pipeline() and the Auto classes load offline."""

import json
import os

import pytest
from conftest import run_recipe_in_process



def run_recipe(*args, cwd=None):
    if cwd is None:
        return run_recipe_in_process("finetune.py", *args)
    previous = os.getcwd()
    os.chdir(cwd)  # the default output folder is relative to where the user runs the recipe
    try:
        return run_recipe_in_process("finetune.py", *args)
    finally:
        os.chdir(previous)


@pytest.mark.slow
def test_finetune_writes_a_loadable_model(tmp_path):
    out = tmp_path / "run"
    result = run_recipe("--dataset_name", "embedded:digits", "--image_size", "32", "--max_train_samples", "256",
                        "--max_eval_samples", "100", "--num_train_epochs", "1", "--output_dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"config.json", "model.safetensors", "all_results.json"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob(".staging*"))
    results = json.loads((out / "all_results.json").read_text())
    assert 0.0 <= results["eval_accuracy"] <= 1.0 and "eval_macro_f1" in results

    from PIL import Image
    from sklearn.datasets import load_digits
    from transformers import AutoModelForImageClassification, pipeline

    model = AutoModelForImageClassification.from_pretrained(out)
    assert model.config.id2label == {i: str(i) for i in range(10)}
    classify = pipeline("image-classification", model=str(out))
    digits = load_digits()
    labels = classify(Image.fromarray((digits.images[0] * 15).astype("uint8")))
    assert {item["label"] for item in labels} <= {str(i) for i in range(10)}


@pytest.mark.slow
def test_config_file_and_default_output_dir(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("dataset_name: embedded:lfw\nimage_size: 32\nmax_train_samples: 32\nmax_eval_samples: 16\n"
                      "eval_strategy: 'no'\nmodel_name_or_path: embedded:efficientnet_lite0\n")
    result = run_recipe(config, "--num_train_epochs", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "outputs" / "finetune-efficientnet_lite0-lfw"
    assert (folder / "model.safetensors").is_file()
    assert json.loads((folder / "config.json").read_text())["label_names"] == ["not_face", "face"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model_name_or_path", "no-such-model-anywhere"], "cannot load model"),
        (["--dataset_name", "nobody/missing-dataset"], "cannot load dataset"),
        (["--train_dir", "/no/such/folder"], "does not exist"),
        (["--dataset_name", "embedded:digits", "--label_column_name", "species"], "label column 'species' not found"),
    ],
)
def test_bad_input_stops_with_one_line(args, message, tmp_path):
    result = run_recipe(*args, "--output_dir", tmp_path / "out")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("finetune: error:") and message in lines[-1]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.slow
def test_finetune_a_transformers_model_folder(tmp_path, tiny_hf_folders):
    """A transformers checkpoint without an image processor still gives a folder that pipeline() can use."""
    out = tmp_path / "vit"
    result = run_recipe("--model_name_or_path", tiny_hf_folders["vit"], "--dataset_name", "embedded:lfw",
                        "--image_size", "32", "--max_train_samples", "40", "--max_eval_samples", "16",
                        "--eval_strategy", "no", "--output_dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    from PIL import Image
    from transformers import pipeline

    classify = pipeline("image-classification", model=str(out))
    assert classify.image_processor.size == {"height": 32, "width": 32}
    labels = [item["label"] for item in classify(Image.new("L", (25, 25)))]
    assert sorted(labels) == ["face", "not_face"]
