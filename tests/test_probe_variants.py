"""Better probes: concatenated depths, avg+max pooling, the MLP probe, class weighting, export auto.

One tiny backbone (test_resnet, random weights) on 60 + 20 sklearn digits, features computed once per module.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hf_transfer import TransferError, load_backbone
from hf_transfer.backbones import build_layer_map, data_config, set_preprocessing
from hf_transfer.features import FeatureCache, FeatureLayer, compute_features, parse_layers
from hf_transfer.probes import (
    DepthProbeReport,
    LinearHead,
    ProbeConfig,
    ProbeResult,
    evaluate_probe,
    export_probe,
    fit_probe,
    probe_features,
    probe_layers,
)
from hf_transfer.probes.estimators import BlockStandardScaler, class_weights
from hf_transfer.transforms import with_transforms

FAST = ProbeConfig(cv_folds=2, mlp_weight_decay=(0.05,), mlp_max_epochs=30)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from hf_transfer.data import load_image_classification_data

    data = load_image_classification_data("embedded:digits", max_train_samples=60, max_eval_samples=20)
    data.labels = [f"digit {name}" for name in data.labels]
    model = load_backbone("test_resnet", labels=data.labels, pretrained=False)
    set_preprocessing(model, 32)
    splits = with_transforms(data.splits, data, data_config(model), image_size=32, augmentation="none")
    layer_map = build_layer_map(model)
    cache = FeatureCache(tmp_path_factory.mktemp("cache"))
    singles = compute_features(model, splits, parse_layers("1,2,pooled", layer_map), layer_map=layer_map, cache=cache,
                               image_size=32)
    pixels = torch.stack(splits["validation"][:]["pixel_values"])
    return SimpleNamespace(data=data, model=model, splits=splits, layer_map=layer_map, cache=cache, singles=singles,
                           pixels=pixels)


def _count_forwards(model):
    counter = {"n": 0}
    handle = model.timm_model.conv1.register_forward_hook(lambda *a: counter.__setitem__("n", counter["n"] + 1))
    return counter, handle


def test_concatenation_comes_from_cached_parts_and_avgmax_is_mean_then_max(setup):
    s = setup
    counter, handle = _count_forwards(s.model)
    try:
        concat = compute_features(s.model, s.splits, parse_layers("pooled+2+1", s.layer_map), layer_map=s.layer_map,
                                  cache=s.cache, image_size=32)
        assert counter["n"] == 0 and concat.all_cached  # no forward: built from the cached single depths
        layer = concat.layers[0]
        assert layer.is_concat and layer.spec == "1+2+pooled" and [p.depth for p in layer.parts] == [1, 2, None]
        for split in ("train", "validation"):
            expected = np.hstack([s.singles.features[split][p.key] for p in layer.parts])
            np.testing.assert_array_equal(concat.features[split][layer.key], expected)

        avgmax = compute_features(s.model, s.splits, parse_layers("2", s.layer_map, "avgmax"), layer_map=s.layer_map,
                                  cache=s.cache, image_size=32)
        assert counter["n"] > 0 and not any(avgmax.from_cache.values())  # its own cache entry, not avg's
    finally:
        handle.remove()
    depth2 = avgmax.layers[0]
    assert depth2.key != s.singles.layers[1].key and depth2.name.endswith("avg+max")
    features = avgmax.features["validation"][depth2.key]
    captured = {}
    hook = s.model.timm_model.layer2.register_forward_hook(lambda m, a, out: captured.setdefault("map", out))
    with torch.inference_mode():
        s.model.eval()(pixel_values=s.pixels[:4])
    hook.remove()
    channels = captured["map"].shape[1]
    assert features.shape == (20, 2 * channels)
    np.testing.assert_allclose(features[:4, :channels], captured["map"].mean((2, 3)).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(features[:4, channels:], captured["map"].amax((2, 3)).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(features[:, :channels], s.singles.features["validation"][s.singles.layers[1].key],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec, pooling, probe", [("1+pooled", "avg", "logreg"), ("pooled", "avg", "mlp"),
                                                  ("1+2", "avgmax", "mlp")])
def test_exported_probe_predicts_like_the_probe_on_the_validation_set(spec, pooling, probe, setup, tmp_path):
    from transformers import AutoModelForImageClassification

    s = setup
    fs = compute_features(s.model, s.splits, parse_layers(spec, s.layer_map, pooling), layer_map=s.layer_map,
                          cache=s.cache, image_size=32)
    report = probe_layers(fs, [probe], FAST, label_names=s.data.labels)
    result = report.results[0]
    export_probe(s.model, result, tmp_path, layer_map=s.layer_map, image_size=32)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "hf_transfer_probe" and config["head"] == ("mlp" if probe == "mlp" else "linear")
    assert config["layers"] == result.layer.spec
    reads_pooled = "pooled" in spec
    assert config["identity_modules"] == (["timm_model.fc"] if reads_pooled else [])
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not any(k.startswith("backbone.timm_model.fc.") for k in keys)  # the identity classifier has no weights
    if not reads_pooled:  # cut after depth 2: later blocks are not in the file
        assert config["pruned_modules"] and not any(".layer3." in k or ".layer4." in k for k in keys)

    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    with torch.inference_mode():
        logits = loaded(pixel_values=s.pixels).logits.double().numpy()
    features = fs.features["validation"][result.layer.key]
    expected = result.decision_function(features)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(expected).max()))
    np.testing.assert_array_equal(logits.argmax(1), result.predict(features))  # the very same predictions


def test_an_export_that_would_not_reproduce_the_probe_is_refused(setup, tmp_path, monkeypatch):
    from hf_transfer import modeling_probe

    s = setup
    layer = s.singles.layers[1]
    result = fit_probe("logreg", layer, s.singles.features["train"][layer.key], s.singles.labels["train"], FAST)
    real = modeling_probe.HFTransferProbeForImageClassification.pooled_features
    monkeypatch.setattr(modeling_probe.HFTransferProbeForImageClassification, "pooled_features",
                        lambda self, x: real(self, x) * 1.05)  # a misread layer: 5% off
    with pytest.raises(TransferError, match="does not reproduce the probe") as err:
        export_probe(s.model, result, tmp_path / "out", layer_map=s.layer_map, image_size=32)
    assert "\n" not in str(err.value) and not (tmp_path / "out" / "config.json").exists()


def test_block_scaler_gives_every_part_an_equal_share_and_folds_exactly():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    X = np.hstack([rng.normal(size=(90, 4)) * 3 + 1, rng.normal(size=(90, 36)) * 0.2]).astype(np.float32)
    X[:, 0] += y
    scaled = BlockStandardScaler((4, 36)).fit_transform(X)
    np.testing.assert_allclose([scaled[:, :4].var(0).sum(), scaled[:, 4:].var(0).sum()], [20.0, 20.0], rtol=1e-5)
    result = fit_probe("logreg", FeatureLayer("concat"), X, y, FAST, blocks=[4, 36])
    head = LinearHead.from_arrays(result.linear.arrays())
    np.testing.assert_allclose(head.decision_function(X), result.estimator.decision_function(X), rtol=1e-5, atol=1e-5)
    weight, bias = head.folded()
    np.testing.assert_array_equal((X.astype(np.float64) @ weight.T + bias).argmax(1), result.estimator.predict(X))
    with pytest.raises(TransferError, match="features wide"):
        fit_probe("logreg", FeatureLayer("concat"), X, y, FAST, blocks=[4, 30])


def test_balanced_class_weights_raise_minority_recall_for_every_trainable_probe():
    from sklearn.utils.class_weight import compute_class_weight

    rng = np.random.default_rng(0)
    y = np.array([0] * 120 + [1] * 12 + [2] * 12)
    X = rng.normal(size=(len(y), 6)).astype(np.float32)
    X[:, 0] += 1.2 * y  # overlapping classes: the unweighted probe favours the majority
    weights = class_weights(torch.as_tensor(y), 3, "balanced").double()
    sklearn_weights = torch.from_numpy(compute_class_weight("balanced", classes=np.arange(3), y=y))
    torch.testing.assert_close(weights / weights[0], sklearn_weights / sklearn_weights[0])  # the same ratios
    # only the ratios count in torch's weighted mean cross-entropy: scikit-learn's scale fits the same probe
    from hf_transfer.probes import estimators

    for probe in ("torch_linear",):  # (the MLP's early stopping can turn on such rounding: 4 of 144 labels moved)
        config = ProbeConfig(cv_folds=2, class_weight="balanced")
        ours = fit_probe(probe, FeatureLayer("pooled"), X, y, config)
        real = estimators.class_weights
        try:
            estimators.class_weights = lambda t, k, w: None if w is None else torch.from_numpy(
                compute_class_weight("balanced", classes=np.arange(k), y=t.numpy())).float()
            theirs = fit_probe(probe, FeatureLayer("pooled"), X, y, config)
        finally:
            estimators.class_weights = real
        np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
        # equal losses up to float rounding, which AdamW compounds over the epochs (seen: 1.7e-3 of logits ~1)
        np.testing.assert_allclose(ours.decision_function(X), theirs.decision_function(X), rtol=0, atol=1e-2)
    names = ["common", "rare a", "rare b"]
    for probe in ("logreg", "torch_linear", "mlp"):
        recalls = {}
        for weighting in (None, "balanced"):
            config = ProbeConfig(cv_folds=2, class_weight=weighting, select_by="macro_f1", mlp_weight_decay=(0.05,),
                                 mlp_max_epochs=30)
            result = fit_probe(probe, FeatureLayer("pooled"), X, y, config)
            evaluate_probe(result, X, y, prefix="validation", label_names=names)
            assert result.cv_score == result.cv_metrics["macro_f1"] and result.selected_by == "macro_f1"
            recalls[weighting] = result.per_class_recall["validation"]
            assert set(recalls[weighting]) == set(names) and result.summary()["class_weight"] == weighting
        minority = lambda r: r["rare a"] + r["rare b"]  # noqa: E731
        assert minority(recalls["balanced"]) > minority(recalls[None]), (probe, recalls)


def test_mlp_fit_and_cv_scores_come_back_from_the_cache(tmp_path):
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 20)
    X = rng.normal(size=(60, 8)).astype(np.float32)
    X[:, 0] += 2 * y
    cache = FeatureCache(tmp_path)
    config = ProbeConfig(cv_folds=2, mlp_weight_decay=(0.05,), mlp_max_epochs=30)
    first = fit_probe("mlp", FeatureLayer("pooled"), X, y, config, score_cache=cache)
    again = fit_probe("mlp", FeatureLayer("pooled"), X, y, config, score_cache=cache)
    assert not first.from_cache and again.from_cache and again.estimator is None
    assert again.cv_metrics == first.cv_metrics
    np.testing.assert_array_equal(again.decision_function(X), first.decision_function(X))
    np.testing.assert_array_equal(first.decision_function(X), first.estimator.decision_function(X))
    other = fit_probe("mlp", FeatureLayer("pooled"), X, y, ProbeConfig(cv_folds=2, mlp_weight_decay=(0.05,),
                                                                       mlp_max_epochs=30, class_weight="balanced"),
                      score_cache=cache)
    assert not other.from_cache  # another class weighting is another fit


def test_an_mlp_fit_does_not_depend_on_what_the_process_ran_before():
    """Dropout's masks come from the fit's own seed, not from torch's global generator: the same data and settings
    give the same probe whatever was drawn before (another layer's fit, or none when it came from the cache)."""
    import torch

    rng = np.random.default_rng(2)
    y = np.repeat([0, 1, 2], 20)
    X = rng.normal(size=(60, 8)).astype(np.float32)
    X[:, 0] += 2 * y
    config = ProbeConfig(cv_folds=2, mlp_weight_decay=(0.05,), mlp_max_epochs=30)
    fits = []
    for draws in (0, 1000):
        torch.manual_seed(0)
        torch.rand(draws)  # what an earlier fit would have drawn
        fits.append(fit_probe("mlp", FeatureLayer("pooled"), X, y, config))
    assert fits[0].cv_metrics == fits[1].cv_metrics
    np.testing.assert_array_equal(fits[0].decision_function(X), fits[1].decision_function(X))
    torch.manual_seed(5)  # and the global generator is left where it was
    expected = torch.rand(3)
    torch.manual_seed(5)
    fit_probe("mlp", FeatureLayer("pooled"), X, y, config)
    assert torch.equal(torch.rand(3), expected)


def test_report_names_a_better_probe_too_large_to_export(monkeypatch):
    from hf_transfer.probes import search

    def fake(probe, cv, head_bytes=0):
        kernel = SimpleNamespace(nbytes=head_bytes, module=SimpleNamespace(support=np.zeros((4, 2)))) if head_bytes else None
        return ProbeResult(probe, FeatureLayer("pooled"), cv, 0.0, "C", 1.0, None, cv_metrics={"accuracy": cv},
                           kernel=kernel)

    monkeypatch.setattr(search, "MAX_HEAD_BYTES", 1000)
    report = DepthProbeReport([fake("logreg", 0.80), fake("mlp", 0.85), fake("rbf_svm", 0.90, 2000)], "validation")
    assert report.best(exportable_only=True).probe == "mlp"
    assert report.better_non_exportable().probe == "rbf_svm"
    assert report.as_dict()["better_non_exportable"]["probe"] == "rbf_svm"
    report = DepthProbeReport([fake("logreg", 0.80), fake("rbf_svm", 0.90, 500)], "validation")
    assert report.best(exportable_only=True).probe == "rbf_svm"  # within the limit: a kernel probe exports
    assert report.better_non_exportable() is None and report.as_dict()["better_non_exportable"] is None


def test_probe_features_assembles_concatenations_from_a_plain_dict(setup):
    """The library entry the strategy advisor uses: {layer key: features} + parsed layers -> CV scores."""
    s = setup
    layers = parse_layers("2,1+2+pooled", s.layer_map)
    report = probe_features(s.singles.features["train"], s.singles.labels["train"], layers, ["logreg"], FAST)
    assert [r.layer.spec for r in report.results] == ["2", "1+2+pooled"]
    assert all(0 <= r.cv_score <= 1 and not r.eval_metrics for r in report.results)
    with pytest.raises(TransferError, match="no features for"):
        probe_features(s.singles.features["train"], s.singles.labels["train"], parse_layers("3+pooled", s.layer_map),
                       ["logreg"], FAST)


def test_probe_job_exports_auto_the_cv_best_probe_a_kernel_one_included(setup, tmp_path, monkeypatch, capsys):
    import functools

    from hf_transfer.arguments import DataArguments, ModelArguments
    from hf_transfer.jobs import probe as job

    # logreg crippled (C = 1e-6 predicts the majority): knn wins by CV, and --export auto exports it
    monkeypatch.setattr(job, "ProbeConfig", functools.partial(job.ProbeConfig, logreg_c=(1e-6,)))
    monkeypatch.setenv("HF_TRANSFER_CACHE", str(setup.cache.dir))
    results = job.run_linear_probe(
        ModelArguments(model_name_or_path="test_resnet", no_pretrained=True, image_size=32),
        DataArguments(dataset_name="embedded:digits", max_train_samples=60, max_eval_samples=20),
        job.ProbeArguments(layers="1+pooled", probe="logreg,knn", cv_folds=2, output_dir=str(tmp_path / "run")))
    out = capsys.readouterr().out
    assert results["exported"]["probe"] == "knn" and results["exported"]["layer_spec"] == "1+pooled"
    assert results["exported"]["head_bytes"] > 0 and results["better_non_exportable"] is None
    assert "exported knn on concat 1+pooled" in out and "trust_remote_code=True" in out
    assert len(results["eval_per_class_recall"]) == 10
    assert results["eval_macro_f1"] == pytest.approx(results["exported"]["validation_macro_f1"], abs=1e-5)
    table = (tmp_path / "run" / "probe_table.txt").read_text()
    assert "per-class validation recall of knn on concat 1+pooled" in table
    card = (tmp_path / "run" / "README.md").read_text()
    assert "| class | recall |" in card and "cannot be exported as a model" not in card
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model_type"] == "hf_transfer_probe"
    # the job writes its typed record: the file reads back to the same record, key for key
    from hf_transfer.record import RunRecord

    written = json.loads((tmp_path / "run" / "all_results.json").read_text())
    record = RunRecord.read(tmp_path / "run")
    assert written == results == record.to_results() and record.is_probe
    assert record.data.samples == {"train": 60, "eval": 20} and record.imbalance == {"class_weighting": "none"}


@pytest.mark.parametrize("kind", ["vit", "resnet", "convnext"])
def test_concatenations_with_the_pooled_feature_export_for_transformers_models(kind, tiny_hf_folders, tmp_path):
    """The classifier becomes the identity (ResNet's is Sequential(Flatten, Linear)): logits are the probe's."""
    from transformers import AutoModelForImageClassification

    from hf_transfer.features import FeatureExtractor

    model = load_backbone(str(tiny_hf_folders[kind]), labels=["a", "b", "c"]).eval()
    layer_map = build_layer_map(model)
    layer = parse_layers("0+pooled", layer_map)[0]
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    features = FeatureExtractor(model, [layer], layer_map)(x)[layer.key].numpy()
    y = np.arange(len(features)) % 3
    X = np.repeat(features, 4, axis=0) + np.random.default_rng(0).normal(scale=0.01, size=(20, features.shape[1]))
    result = fit_probe("logreg", layer, X.astype(np.float32), np.tile(y, 4), FAST,
                       blocks=[FeatureExtractor(model, [p], layer_map)(x[:1])[p.key].shape[1] for p in layer.parts])
    export_probe(model, result, tmp_path, layer_map=layer_map, image_size=32)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["identity_modules"] == ["classifier.1" if kind == "resnet" else "classifier"]
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    with torch.inference_mode():
        logits = loaded(pixel_values=x).logits.double().numpy()
    np.testing.assert_allclose(logits, result.decision_function(features), rtol=1e-5, atol=1e-5)


def test_a_folder_exported_before_concatenations_still_loads(setup, tmp_path):
    """Old hf_transfer_probe configs name one output_module and no parts/head: the current class reads them."""
    from transformers import AutoModelForImageClassification

    s = setup
    layer = s.singles.layers[1]
    result = fit_probe("logreg", layer, s.singles.features["train"][layer.key], s.singles.labels["train"], FAST)
    export_probe(s.model, result, tmp_path, layer_map=s.layer_map, image_size=32)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("parts", "identity_modules", "head", "hidden_size", "activation", "layers"):
        config.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.parts == [{"module": layer.module, "depth": layer.depth, "pooling": "avg"}]
    with torch.inference_mode():
        logits = loaded(pixel_values=s.pixels).logits.double().numpy()
    np.testing.assert_allclose(logits, result.decision_function(s.singles.features["validation"][layer.key]),
                               rtol=1e-5, atol=1e-5)
