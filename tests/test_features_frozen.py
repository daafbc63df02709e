"""The frozen (TorchScript, batch norms folded) feature forward: used only where it equals the eager one."""

import numpy as np
import torch

from hf_transfer import load_backbone
from hf_transfer.backbones import build_layer_map
from hf_transfer.features import extract_features, frozen, parse_layers

IMAGES, BATCH = 10, 4  # a short last batch (2 images): the padded path


def _setup():
    model = load_backbone("test_efficientnet", labels=["a", "b", "c"], pretrained=False).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so folding them is visible if it went wrong
        generator = torch.Generator().manual_seed(0)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    layer_map = build_layer_map(model)
    layers = parse_layers("1,3+pooled", layer_map)
    pixels = torch.randn(IMAGES, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(IMAGES) % 3

    def source(dataset, batch_size):
        for start in range(0, len(dataset), batch_size):
            yield pixels[start:start + batch_size], labels[start:start + batch_size]

    return model, layer_map, layers, source


def _extract(model, layer_map, layers, source, notes=None):
    return extract_features(model, list(range(IMAGES)), layers, layer_map=layer_map, batch_size=BATCH,
                            source=source, log=(notes.append if notes is not None else None))[0]


def test_frozen_features_equal_the_eager_ones_image_by_image(monkeypatch):
    model, layer_map, layers, source = _setup()
    monkeypatch.setattr(frozen, "FREEZE_FROM_IMAGES", 10**9)
    eager = _extract(model, layer_map, layers, source)

    used = []
    real = frozen.frozen_forward
    monkeypatch.setattr(frozen, "FREEZE_FROM_IMAGES", 0)
    monkeypatch.setattr("hf_transfer.features.extract.frozen_forward",
                        lambda *a, **k: used.append(real(*a, **k)) or used[-1])
    notes = []
    fast = _extract(model, layer_map, layers, source, notes)
    assert used and used[0] is not None and notes == []  # the frozen forward ran, without a note
    for layer in layers:
        assert fast[layer.key].shape == eager[layer.key].shape == (IMAGES, eager[layer.key].shape[1])
        scale = np.abs(eager[layer.key]).max()
        assert np.abs(fast[layer.key] - eager[layer.key]).max() <= frozen.FROZEN_TOLERANCE * scale
    # and the model itself is untouched (the export uses it): its batch norms are still there
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_a_frozen_forward_that_differs_is_refused_with_a_note(monkeypatch):
    model, layer_map, layers, source = _setup()
    monkeypatch.setattr(frozen, "FREEZE_FROM_IMAGES", 10**9)
    eager = _extract(model, layer_map, layers, source)

    real_freeze = torch.jit.freeze

    class Off(torch.nn.Module):  # a frozen module whose features are 1% off
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixels):
            return tuple(value * 1.01 for value in self.inner(pixels))

    monkeypatch.setattr(torch.jit, "freeze", lambda module: Off(real_freeze(module)))
    monkeypatch.setattr(frozen, "FREEZE_FROM_IMAGES", 0)
    notes = []
    got = _extract(model, layer_map, layers, source, notes)
    assert len(notes) == 1 and "eager forward" in notes[0] and "differed by 1.0e-02" in notes[0]
    for layer in layers:  # the eager features, not the 1% off ones: equal up to float32 summation order (the
        # thread chooser may run a batch on one thread or on all, which reorders the convolutions' sums)
        scale = np.abs(eager[layer.key]).max()
        assert np.abs(got[layer.key] - eager[layer.key]).max() <= 1e-6 * scale


def test_frozen_forward_only_where_it_is_safe_and_pays():
    model, layer_map, layers, source = _setup()
    from hf_transfer.features import FeatureExtractor

    batch = next(source(list(range(IMAGES)), BATCH))[0]
    few = frozen.FREEZE_FROM_IMAGES - 1
    assert frozen.frozen_forward(FeatureExtractor(model, layers, layer_map), batch, few) is None  # too few images
    shallow = parse_layers("1", layer_map)  # the forward stops early: an exception a trace cannot hold
    assert frozen.frozen_forward(FeatureExtractor(model, shallow, layer_map), batch, 10**6) is None
    vit = load_backbone("test_vit", labels=["a", "b"], pretrained=False).eval()  # not a CNN: stays eager
    vit_layers = parse_layers("pooled", build_layer_map(vit))
    assert frozen.frozen_forward(FeatureExtractor(vit, vit_layers), torch.randn(2, 3, 160, 160), 10**6) is None


def test_the_splits_of_one_call_share_one_trace_and_other_pixel_shapes_run_eager(monkeypatch):
    """compute_features passes one ``forwards`` dict to every split: the second split (below FREEZE_FROM_IMAGES on
    its own) reuses the first split's frozen forward, with the same features; pixels of another size, which the
    trace's padding arithmetic does not hold, take the eager forward."""
    model, layer_map, layers, source = _setup()
    monkeypatch.setattr(frozen, "FREEZE_FROM_IMAGES", 10**9)
    eager = _extract(model, layer_map, layers, source)
    monkeypatch.setattr(frozen, "FREEZE_FROM_IMAGES", IMAGES)
    traces = []
    real_trace = torch.jit.trace
    monkeypatch.setattr(torch.jit, "trace", lambda *a, **k: traces.append(1) or real_trace(*a, **k))
    forwards = {}
    first = extract_features(model, list(range(IMAGES)), layers, layer_map=layer_map, batch_size=BATCH,
                             source=source, forwards=forwards)[0]
    second = extract_features(model, list(range(2 * BATCH)), layers, layer_map=layer_map, batch_size=BATCH,
                              source=source, forwards=forwards)[0]
    assert len(traces) == 1 and len(forwards) == 1
    for layer in layers:
        scale = np.abs(eager[layer.key]).max()
        assert np.abs(first[layer.key] - eager[layer.key]).max() <= frozen.FROZEN_TOLERANCE * scale
        assert np.abs(second[layer.key] - eager[layer.key][:2 * BATCH]).max() <= frozen.FROZEN_TOLERANCE * scale

    shared = next(iter(forwards.values()))
    bigger = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    from hf_transfer.features import FeatureExtractor

    expected = FeatureExtractor(model, layers, layer_map)(bigger)
    got = shared(bigger)
    for layer in layers:
        torch.testing.assert_close(got[layer.key], expected[layer.key], rtol=0, atol=0)
