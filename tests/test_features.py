"""Feature extraction (pooled + earlier depths, timm and transformers) and the on-disk feature cache."""

import numpy as np
import pytest
import torch

from hf_transfer import TransferError, load_backbone
from hf_transfer.backbones import data_config, set_preprocessing
from hf_transfer.features import (
    POOLED,
    FeatureCache,
    FeatureExtractor,
    compute_features,
    default_cache_dir,
    parse_layers,
    transform_fingerprint,
)
from hf_transfer.backbones import build_layer_map
from hf_transfer.transforms import build_transform, with_transforms

# (arch, input size, channels per body depth, pooled size); token maps (ViT) are averaged over tokens.
TIMM_CASES = [
    ("test_resnet", 32, [32, 32, 48, 192, 96], 96),
    ("test_efficientnet", 32, None, 256),
    ("test_convnext", 32, None, 64),
    ("test_vit", 160, [64] * 7, 64),
]


@pytest.mark.parametrize("arch, size, channels, pooled", TIMM_CASES)
def test_timm_feature_shapes(arch, size, channels, pooled):
    model = load_backbone(arch, labels=["a", "b", "c"], pretrained=False).eval()
    layer_map = build_layer_map(model)
    layers = parse_layers("all", layer_map)
    assert layers[-1].name == POOLED and len(layers) == len(layer_map.body) + 1
    out = FeatureExtractor(model, layers, layer_map)(torch.randn(2, 3, size, size))
    shapes = [out[layer.key].shape for layer in layers]
    assert all(len(s) == 2 and s[0] == 2 for s in shapes)
    assert shapes[-1][1] == pooled == model.timm_model.num_features
    if channels:
        assert [s[1] for s in shapes[:-1]] == channels


def test_cnn_depth_is_mean_over_hw_and_vit_is_mean_over_tokens():
    model = load_backbone("test_resnet", labels=["a", "b"], pretrained=False).eval()
    layers = parse_layers("2", build_layer_map(model))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        t = model.timm_model
        expected = t.layer2(t.layer1(t.maxpool(t.act1(t.bn1(t.conv1(x)))))).mean((2, 3))
    torch.testing.assert_close(FeatureExtractor(model, layers)(x)[layers[0].key], expected)

    vit = load_backbone("test_vit", labels=["a", "b"], pretrained=False).eval()
    layers = parse_layers("1", build_layer_map(vit))
    x = torch.randn(2, 3, 160, 160)
    with torch.inference_mode():
        tokens = vit.timm_model.blocks[0](vit.timm_model.norm_pre(vit.timm_model._pos_embed(vit.timm_model.patch_embed(x))))
    torch.testing.assert_close(FeatureExtractor(vit, layers)(x)[layers[0].key], tokens.mean(1))


@pytest.mark.parametrize("kind, depth_channels, pooled", [("vit", [32, 32, 32, 32], 32), ("convnext", [8, 8, 16, 16], 16),
                                                          ("resnet", [8, 8, 16], 16)])
def test_transformers_feature_shapes(kind, depth_channels, pooled, tiny_hf_folders):
    model = load_backbone(str(tiny_hf_folders[kind]), labels=["a", "b"]).eval()
    layer_map = build_layer_map(model)
    layers = parse_layers("all", layer_map)
    out = FeatureExtractor(model, layers, layer_map)(torch.randn(3, 3, 32, 32))
    assert [out[layer.key].shape[1] for layer in layers[:-1]] == depth_channels
    assert out[POOLED].shape == (3, pooled)


def test_shallow_request_stops_the_forward_early():
    model = load_backbone("test_resnet", labels=["a", "b"], pretrained=False).eval()
    layers = parse_layers("1", build_layer_map(model))  # the adapter traces one forward to build the map
    calls = []
    model.timm_model.layer4.register_forward_hook(lambda *a: calls.append("layer4"))
    FeatureExtractor(model, layers)(torch.randn(1, 3, 32, 32))
    assert calls == []
    FeatureExtractor(model, parse_layers("1,pooled", build_layer_map(model)))(torch.randn(1, 3, 32, 32))
    assert calls == ["layer4"]


def test_parse_layers_rejects_bad_input():
    layer_map = build_layer_map(load_backbone("test_resnet", labels=["a", "b"], pretrained=False))
    assert [l.depth for l in parse_layers("3, 1,pooled", layer_map)] == [1, 3, None]
    assert parse_layers("-1", layer_map)[0].depth == len(layer_map.body) - 1
    with pytest.raises(TransferError, match="out of range"):
        parse_layers("9", layer_map)
    with pytest.raises(TransferError, match="not understood"):
        parse_layers("middle", layer_map)


def test_parse_layers_concatenations_and_pooling():
    layer_map = build_layer_map(load_backbone("test_resnet", labels=["a", "b"], pretrained=False))
    layers = parse_layers("2, pooled, 3+1, pooled+1+3", layer_map)
    assert [l.spec for l in layers] == ["2", "pooled", "1+3", "1+3+pooled"]  # singles, pooled, then concatenations
    concat = layers[-1]
    assert concat.is_concat and not concat.is_pooled and concat.name == "concat 1+3+pooled"
    assert concat.key == "+".join(p.key for p in concat.parts) and concat.singles == concat.parts
    assert parse_layers("1+3", layer_map)[0].key == parse_layers("3+1", layer_map)[0].key  # one candidate, any order
    assert [l.spec for l in parse_layers("2+2,pooled+pooled", layer_map)] == ["2", "pooled"]
    # auto: depths at 1/4, 1/2, 3/4, pooled, and their concatenation; concat: that concatenation alone
    auto = parse_layers("auto", layer_map)
    depths = [l.depth for l in auto if not l.is_pooled and not l.is_concat]
    assert len(depths) == 3 and auto[3].is_pooled and auto[4].spec == "+".join(map(str, depths)) + "+pooled"
    assert [l.spec for l in parse_layers("concat", layer_map)] == [auto[4].spec]
    # avg keeps the key cached entries always had; avgmax is another entry
    avg, avgmax = parse_layers("1", layer_map)[0], parse_layers("1", layer_map, "avgmax")[0]
    assert avg.key == f"depth1:{avg.module}" and avgmax.key == avg.key + ":avgmax" and avgmax.pooling == "avgmax"
    assert parse_layers("pooled", layer_map, "avgmax")[0].key == POOLED  # the bottleneck keeps the model's pooling
    with pytest.raises(TransferError, match="not understood"):
        parse_layers("1+middle", layer_map)
    with pytest.raises(TransferError, match="out of range"):
        parse_layers("1+9", layer_map)
    with pytest.raises(TransferError, match="--pooling 'max' is not understood"):
        parse_layers("1", layer_map, "max")


# ------------------------------------------------------------------------------------------------ cache
@pytest.fixture(scope="module")
def digits_data():
    from hf_transfer.data import load_image_classification_data

    return load_image_classification_data("embedded:digits", max_train_samples=48, max_eval_samples=16)


def _setup(data, size=32, mean=None):
    model = load_backbone("test_resnet", labels=data.labels, pretrained=False)
    torch.manual_seed(0)
    set_preprocessing(model, size)
    cfg = data_config(model)
    if mean is not None:
        cfg = {**cfg, "mean": mean}
    splits = with_transforms(data.splits, data, cfg, image_size=size, augmentation="none")
    return model, splits, transform_fingerprint(build_transform(cfg, image_size=size), cfg, size)


def _count_forwards(model):
    counter = {"n": 0}
    model.timm_model.conv1.register_forward_hook(lambda *a: counter.__setitem__("n", counter["n"] + 1))
    return counter


def test_cache_hit_runs_no_forward_and_changes_invalidate(digits_data, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    model, splits, tkey = _setup(digits_data)
    layers = parse_layers("1,pooled", build_layer_map(model))
    counter = _count_forwards(model)
    first = compute_features(model, splits, layers, cache=cache, transform_key=tkey, image_size=32)
    assert counter["n"] > 0 and not any(first.from_cache.values())
    assert first.features["train"][POOLED].shape == (48, 96) and first.labels["validation"].shape == (16,)

    counter["n"] = 0
    second = compute_features(model, splits, layers, cache=cache, transform_key=tkey, image_size=32)
    assert counter["n"] == 0 and second.all_cached and second.forward_images == 0
    for split in ("train", "validation"):
        np.testing.assert_array_equal(second.features[split][POOLED], first.features[split][POOLED])
        np.testing.assert_array_equal(second.labels[split], first.labels[split])

    # A new layer alone is computed; the cached one is reused.
    more = compute_features(model, splits, parse_layers("2,pooled", build_layer_map(model)), cache=cache,
                            transform_key=tkey, image_size=32)
    assert more.from_cache["train/pooled"] and not more.from_cache[f"train/{more.layers[0].key}"]

    # Another transform (normalization) -> miss.
    _, splits_b, tkey_b = _setup(digits_data, mean=(0.4, 0.4, 0.4))
    assert tkey_b != tkey
    counter["n"] = 0
    changed = compute_features(model, splits_b, layers, cache=cache, transform_key=tkey_b, image_size=32)
    assert counter["n"] > 0 and not any(changed.from_cache.values())

    # Features are keyed by image: a reordered subset of cached images (a fold) is served from the cache, row by row.
    order = [5, 3, 39, 0]
    other = {"train": splits["train"].select(order), "validation": splits["validation"]}
    counter["n"] = 0
    subset = compute_features(model, other, layers, cache=cache, transform_key=tkey, image_size=32)
    assert counter["n"] == 0 and subset.all_cached
    np.testing.assert_array_equal(subset.features["train"][POOLED], first.features["train"][POOLED][order])
    np.testing.assert_array_equal(subset.labels["train"], first.labels["train"][order])

    # Changed weights -> miss.
    with torch.no_grad():
        next(model.timm_model.layer1.parameters()).add_(0.01)
    changed = compute_features(model, splits, layers, cache=cache, transform_key=tkey, image_size=32)
    assert not any(changed.from_cache.values())
    assert not list((tmp_path / "cache").glob(".*.tmp"))  # atomic writes leave no temp files


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TRANSFER_CACHE", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"
    assert FeatureCache().dir == tmp_path / "elsewhere"
    monkeypatch.delenv("HF_TRANSFER_CACHE")
    assert str(default_cache_dir()).endswith(".cache/hf_transfer/features")
