"""Probes: CV fitting, export as models whose logits equal scikit-learn's decision function, LP-FT hand-off."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from hf_transfer import TransferError, load_backbone
from hf_transfer.backbones import data_config, set_preprocessing
from hf_transfer.features import FeatureCache, FeatureExtractor, compute_features, parse_layers
from hf_transfer.backbones import build_layer_map
from hf_transfer.probes import ProbeConfig, export_probe, fit_probe, init_head_from_probe, probe_layers, resolve_probes
from hf_transfer.transforms import with_transforms

FAST = ProbeConfig(cv_folds=2)


@pytest.fixture(scope="module")
def digits():
    from hf_transfer.data import load_image_classification_data

    data = load_image_classification_data("embedded:digits", max_train_samples=60, max_eval_samples=20)
    data.labels = [f"digit {name}" for name in data.labels]  # user-visible names, not "0".."9"
    return data


def _features(model, data, layers_spec, size, tmp_path):
    set_preprocessing(model, size)
    splits = with_transforms(data.splits, data, data_config(model), image_size=size, augmentation="none")
    layer_map = build_layer_map(model)
    layers = parse_layers(layers_spec, layer_map)
    fs = compute_features(model, splits, layers, layer_map=layer_map, cache=FeatureCache(tmp_path / "cache"), image_size=size)
    pixels = torch.stack(splits["validation"][:8]["pixel_values"])
    return fs, layer_map, pixels


def _check_export(model, result, folder, layer_map, pixels, size, labels):
    export_probe(model, result, folder, layer_map=layer_map, image_size=size)
    from transformers import AutoModelForImageClassification, pipeline

    loaded = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.inference_mode():
        logits = loaded(pixel_values=pixels).logits.double().numpy()
    features = FeatureExtractor(model.eval(), [result.layer], layer_map)(pixels)[result.layer.key].double().numpy()
    expected = result.estimator.decision_function(features)  # scikit-learn's own, not our LinearHead
    if expected.ndim == 1:  # binary: logits [0, d]
        expected = np.stack([np.zeros_like(expected), expected], 1)
    # hf_transfer_probe heads run in float64: 1e-5 absolute. A pooled export is the backbone's own float32 head,
    # where x @ W' (standardization folded in) rounds at ~1e-7 of the terms: 1e-5 relative to the logit scale.
    atol = 1e-5 if not result.layer.is_pooled else 1e-5 * max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=atol)
    assert loaded.config.id2label == dict(enumerate(labels))
    from PIL import Image

    image = Image.fromarray(np.uint8(np.random.default_rng(0).integers(0, 255, (20, 20))))
    predictions = pipeline("image-classification", model=str(folder))(image)
    assert predictions and {p["label"] for p in predictions} <= set(labels)
    return loaded


@pytest.mark.parametrize("arch, size, layers", [("test_resnet", 32, "pooled"), ("test_resnet", 32, "2"),
                                                ("test_vit", 160, "3")])
def test_exported_logits_match_decision_function(arch, size, layers, digits, tmp_path):
    model = load_backbone(arch, labels=digits.labels, pretrained=False)
    fs, layer_map, pixels = _features(model, digits, layers, size, tmp_path)
    layer = fs.layers[0]
    result = fit_probe("logreg", layer, fs.features["train"][layer.key], fs.labels["train"], FAST)
    loaded = _check_export(model, result, tmp_path / "probe", layer_map, pixels, size, digits.labels)
    config = json.loads((tmp_path / "probe" / "config.json").read_text())
    if layer.is_pooled:
        assert config["model_type"] == "timm_wrapper"
    else:
        assert config["model_type"] == "hf_transfer_probe" and config["depth"] == layer.depth
        assert loaded.classifier.weight.dtype == torch.float64  # the folded head keeps float64 through save/load
        # the backbone is cut after the probed depth: later blocks carry no weights in the file
        later = [m for g in layer_map.groups if g.index > layer.depth for m in g.module_names]
        assert not any(k.startswith(tuple(m + "." for m in later)) for k in loaded.backbone.state_dict())
        from safetensors import safe_open

        with safe_open(str(tmp_path / "probe" / "model.safetensors"), "pt") as f:
            keys = list(f.keys())
        assert not any(later_name in k for k in keys for later_name in later)


def test_binary_linear_svm_on_hf_model_exports(tiny_hf_folders, tmp_path):
    from hf_transfer.data import load_image_classification_data

    data = load_image_classification_data("embedded:lfw", max_train_samples=40, max_eval_samples=10)
    for layers in ("pooled", "1"):
        model = load_backbone(str(tiny_hf_folders["vit"]), labels=data.labels)
        fs, layer_map, pixels = _features(model, data, layers, 32, tmp_path)
        layer = fs.layers[0]
        result = fit_probe("linear_svm", layer, fs.features["train"][layer.key], fs.labels["train"], FAST)
        assert result.folded_head()[0].shape[0] == 2  # one decision value -> two logits [0, d]
        _check_export(model, result, tmp_path / f"svm_{layers}", layer_map, pixels, 32, data.labels)


def test_pooled_export_loads_without_hf_transfer(digits, tmp_path):
    model = load_backbone("test_resnet", labels=digits.labels, pretrained=False)
    fs, layer_map, _ = _features(model, digits, "pooled", 32, tmp_path)
    result = fit_probe("logreg", fs.layers[0], fs.features["train"]["pooled"], fs.labels["train"], FAST)
    export_probe(model, result, tmp_path / "probe", layer_map=layer_map, image_size=32)
    script = (
        "import sys\n"
        "from transformers import AutoModelForImageClassification, pipeline\n"
        "from PIL import Image\n"
        f"m = AutoModelForImageClassification.from_pretrained({str(tmp_path / 'probe')!r})\n"
        f"out = pipeline('image-classification', model={str(tmp_path / 'probe')!r})(Image.new('L', (8, 8)))\n"
        "assert 'hf_transfer' not in sys.modules, 'hf_transfer was imported'\n"
        "print(out[0]['label'])\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] in digits.labels


def test_kernel_svm_and_knn_are_reported_and_exportable(digits, tmp_path):
    model = load_backbone("test_resnet", labels=digits.labels, pretrained=False)
    fs, layer_map, _ = _features(model, digits, "pooled", 32, tmp_path)
    report = probe_layers(fs, ["rbf_svm", "knn", "logreg"], FAST)
    assert {r.probe for r in report.results} == {"rbf_svm", "knn", "logreg"}
    assert all(0 <= r.eval_metrics["validation_accuracy"] <= 1 and "validation_macro_f1" in r.eval_metrics for r in report.results)
    assert all(r.exportable and r.kernel is not None for r in report.results[:2])  # tests/test_probe_export.py exports them
    assert report.best(exportable_only=True) is report.best()
    report.plot(tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_torch_linear_probe_exports_like_sklearn(digits, tmp_path):
    model = load_backbone("test_resnet", labels=digits.labels, pretrained=False)
    fs, layer_map, pixels = _features(model, digits, "pooled", 32, tmp_path)
    result = fit_probe("torch_linear", fs.layers[0], fs.features["train"]["pooled"], fs.labels["train"], FAST)
    assert result.cv_score > 0.2
    _check_export(model, result, tmp_path / "torch", layer_map, pixels, 32, digits.labels)


def test_init_head_from_probe_round_trip(digits, tmp_path):
    model = load_backbone("test_resnet", labels=digits.labels, pretrained=False)
    fs, layer_map, _ = _features(model, digits, "pooled,2", 32, tmp_path)
    pooled = fit_probe("logreg", fs.layers[-1], fs.features["train"]["pooled"], fs.labels["train"], FAST)
    export_probe(model, pooled, tmp_path / "pooled", layer_map=layer_map, image_size=32)

    fresh = load_backbone("test_resnet", labels=digits.labels, pretrained=False)
    init_head_from_probe(fresh, tmp_path / "pooled")
    weight, bias = pooled.folded_head()
    torch.testing.assert_close(fresh.timm_model.fc.weight, torch.from_numpy(weight).float())
    torch.testing.assert_close(fresh.timm_model.fc.bias, torch.from_numpy(bias).float())

    with pytest.raises(TransferError, match="labels"):
        init_head_from_probe(load_backbone("test_resnet", labels=digits.labels[::-1], pretrained=False), tmp_path / "pooled")
    with pytest.raises(TransferError, match="feature size|different backbone"):
        init_head_from_probe(load_backbone("test_efficientnet", labels=digits.labels, pretrained=False), tmp_path / "pooled")
    depth = fit_probe("logreg", fs.layers[0], fs.features["train"][fs.layers[0].key], fs.labels["train"], FAST)
    export_probe(model, depth, tmp_path / "depth", layer_map=layer_map, image_size=32)
    with pytest.raises(TransferError, match="pooled"):
        init_head_from_probe(fresh, tmp_path / "depth")


def test_resolve_probes():
    assert resolve_probes("auto", 1000) == ["logreg", "rbf_svm", "knn"]
    assert resolve_probes("auto", 10_000) == ["logreg"]
    assert resolve_probes("auto", 100_000) == ["torch_linear"]
    assert resolve_probes("logreg,knn", 10) == ["logreg", "knn"]
    with pytest.raises(TransferError, match="unknown probe"):
        resolve_probes("svm", 10)


def test_cv_scores_and_linear_fits_are_cached_beside_the_features(tmp_path, monkeypatch):
    """A rerun on the same features skips the CV fits and the final fit; other data or another probe misses."""
    import sklearn.model_selection

    from hf_transfer.probes import estimators as probe_module
    from hf_transfer.features import FeatureLayer

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 5)).astype(np.float32), np.repeat([0, 1, 2], 20)
    X[:, 0] += y  # learnable
    cache = FeatureCache(tmp_path)
    layer = FeatureLayer("pooled", None)
    calls, fits = [], []
    real = sklearn.model_selection.cross_validate
    monkeypatch.setattr(sklearn.model_selection, "cross_validate", lambda *a, **k: calls.append(1) or real(*a, **k))
    real_estimator = probe_module._estimator
    monkeypatch.setattr(probe_module, "_estimator", lambda *a: fits.append(a[0]) or real_estimator(*a))
    config = ProbeConfig(cv_folds=2)
    first = fit_probe("logreg", layer, X, y, config, score_cache=cache)
    assert len(calls) == len(config.logreg_c) and not first.from_cache
    fits.clear()
    again = fit_probe("logreg", layer, X, y, config, score_cache=cache)
    assert len(calls) == len(config.logreg_c) and fits == []  # no CV fit, no final fit
    assert again.from_cache and again.estimator is None
    assert (again.cv_score, again.param_value) == (first.cv_score, first.param_value)
    np.testing.assert_allclose(again.decision_function(X), first.estimator.decision_function(X), atol=1e-6)
    np.testing.assert_array_equal(again.folded_head()[0], first.folded_head()[0])
    fit_probe("logreg", layer, X + 1, y, config, score_cache=cache)  # changed features: computed again
    assert len(calls) == 2 * len(config.logreg_c)
    fits.clear()
    knn = fit_probe("knn", layer, X, y, config, score_cache=cache)
    knn_again = fit_probe("knn", layer, X, y, config, score_cache=cache)
    assert fits.count("knn") == len(config.knn_k) + 1  # CV and the final fit once: its head's arrays are cached
    assert knn_again.from_cache and knn_again.kernel is not None
    np.testing.assert_array_equal(knn_again.predict(X), knn.predict(X))


@pytest.mark.parametrize("kind", ["logreg", "linear_svm", "torch_linear"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_linear_head_reproduces_the_fitted_pipeline(kind, n_classes):
    from hf_transfer.features import FeatureLayer
    from hf_transfer.probes import LinearHead

    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(n_classes), 30)
    X = (rng.normal(size=(len(y), 6)) * [1, 5, 0.1, 1, 1, 1] + 3).astype(np.float32)
    X[:, 0] += 2 * y
    result = fit_probe(kind, FeatureLayer("pooled", None), X, y, ProbeConfig(cv_folds=2))
    head = LinearHead.from_arrays(result.linear.arrays())  # the cache's round trip
    np.testing.assert_allclose(head.decision_function(X), result.estimator.decision_function(X), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(head.predict(X), result.estimator.predict(X))
    weight, bias = head.folded()
    logits = X.astype(np.float64) @ weight.T + bias
    assert logits.shape == (len(y), n_classes)
    np.testing.assert_array_equal(head.classes[logits.argmax(1)], result.estimator.predict(X))
