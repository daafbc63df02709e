"""End-to-end: recipes/linear_probe.py probes several depths, caches features, and writes a loadable model."""

import json
from conftest import run_recipe_in_process



def run_recipe(*args, cache):
    return run_recipe_in_process("linear_probe.py", *args, env={"HF_TRANSFER_CACHE": cache})


def test_linear_probe_recipe_caches_and_exports(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = ["--model_name_or_path", "test_resnet", "--no_pretrained", "--dataset_name", "embedded:digits",
            "--image_size", "32", "--max_train_samples", "120", "--max_eval_samples", "40", "--layers", "1,3,pooled",
            "--probe", "logreg,knn", "--cv_folds", "2", "--output_dir", out]
    first = run_recipe(*args, cache=cache)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "features computed" in first.stdout
    results = json.loads((out / "all_results.json").read_text())
    assert set(results["layers"]) == {"depth 1 (layer1)", "depth 3 (layer3)", "pooled"}
    assert all(set(per_probe) == {"logreg", "knn"} for per_probe in results["layers"].values())
    assert results["exported"]["probe"] == "logreg" and not results["features_from_cache"]
    assert {"config.json", "model.safetensors", "probe_table.txt", "probe_accuracy_per_depth.png"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob(".staging*"))

    refused = run_recipe(*args, "--probe", "logreg", cache=cache)  # a finished run is never overwritten silently
    assert refused.returncode == 2 and "holds a previous run" in refused.stderr
    second = run_recipe(*args, "--probe", "logreg", "--overwrite_output_dir", cache=cache)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "features loaded from the cache" in second.stdout and "no backbone forward" in second.stdout
    results = json.loads((out / "all_results.json").read_text())
    assert results["features_from_cache"] and results["backbone_forward_images"] == 0

    knn = run_recipe(*args, "--probe", "knn", "--export", "knn", "--overwrite_output_dir", cache=cache)
    assert knn.returncode == 0, knn.stderr[-3000:]  # every probe exports (kernel heads within a size limit)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "hf_transfer_probe" and config["head"] == "knn"
