"""A TorchScript-frozen copy of the feature forward, for extracting many images through a convolutional backbone.

`torch.jit.freeze` of the traced forward (hooks included) folds every eval-mode batch norm into its convolution and
drops the Python module calls: on EfficientNet-Lite0 at 96 px it cut the extraction's CPU time per batch by about
a quarter here (batch norms were a quarter of the eager forward's time). Used only where it is safe to:

* convolutional backbones (the adapter's channels_last choice): their forward has no data-dependent branches, so
  the trace of one batch is the forward of every batch;
* a full forward (no early stop: the stop is an exception, which a trace cannot hold);
* enough images for the trace to pay for itself (`FREEZE_FROM_IMAGES`);
* and only once its features on the first batch equal the eager forward's to `FROZEN_TOLERANCE` of their scale.
  Otherwise (or when tracing fails) extraction stays eager and says why.

Every batch goes through the frozen module at the traced batch size (a short last batch is padded with zeros and
the padding dropped): one specialised graph for all images.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch

FREEZE_FROM_IMAGES = 512  # below this, tracing and freezing (a few seconds) cost more than they save
FROZEN_TOLERANCE = 1e-4  # of each layer's largest absolute feature on the check batch


class _TracedFeatures(torch.nn.Module):
    """The extractor's forward as a module returning a tuple in ``keys`` order (what a trace can record)."""

    def __init__(self, extractor, keys: list[str]):
        super().__init__()
        self.model = extractor.model  # a submodule: freezing inlines its weights
        self._extract = extractor.forward
        self._keys = keys

    def forward(self, pixels: torch.Tensor):
        features = self._extract(pixels)
        return tuple(features[key] for key in self._keys)


def frozen_forward(extractor, first_batch: torch.Tensor, images: int,
                   log: Callable[[str], None] | None = None) -> Callable[[torch.Tensor], dict] | None:
    """A function ``pixels -> {layer key: (N, C)}`` that runs the frozen forward, or None: use the eager one.

    ``first_batch`` is traced and checked against the eager forward; ``images`` is how many the caller will extract.
    """
    if images < FREEZE_FROM_IMAGES or extractor.stop_after is not None or not extractor.adapter.prefers_channels_last():
        return None
    keys = [layer.key for layer in extractor.layers]
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about Python values in timm's padding arithmetic
            traced = torch.jit.trace(_TracedFeatures(extractor, keys).eval(), first_batch, check_trace=False)
            frozen = torch.jit.freeze(traced)
            for _ in range(2):  # the graph executor specialises on the first runs: check what later batches get
                got = frozen(first_batch)
    except Exception as err:  # noqa: BLE001 - any failure to trace means: stay eager
        if log:
            log(f"note: features through the eager forward (the frozen one could not be traced: {type(err).__name__})")
        return None
    expected = extractor(first_batch)
    for key, value in zip(keys, got):
        scale = float(expected[key].abs().max()) or 1.0
        error = float((value - expected[key]).abs().max()) / scale
        if not error <= FROZEN_TOLERANCE:
            if log:
                log(f"note: features through the eager forward (the frozen one differed by {error:.1e} of the scale "
                    f"on {key})")
            return None
    batch, traced_shape, traced_layout = first_batch.shape[0], first_batch.shape[1:], _layout(first_batch)

    @torch.no_grad()
    def run(pixels: torch.Tensor) -> dict:
        if pixels.shape[1:] != traced_shape or _layout(pixels) != traced_layout:
            # the trace holds the first batch's padding arithmetic and layout: other pixels take the eager forward
            with torch.inference_mode():
                return extractor.forward(pixels)
        n = pixels.shape[0]
        if n > batch:
            parts = [run(pixels[i:i + batch]) for i in range(0, n, batch)]
            return {key: torch.cat([part[key] for part in parts]) for key in keys}
        if n != batch:  # the traced batch size, always: a zero-padded tail, dropped below
            pad = pixels.new_zeros((batch - n, *pixels.shape[1:])).contiguous(memory_format=_layout(pixels))
            pixels = torch.cat([pixels, pad]).contiguous(memory_format=_layout(pixels))
        return {key: value[:n] for key, value in zip(keys, frozen(pixels))}

    return run


def _layout(pixels: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if pixels.is_contiguous(memory_format=torch.channels_last) and pixels.dim() == 4 \
        and not pixels.is_contiguous() else torch.contiguous_format


__all__ = ["FREEZE_FROM_IMAGES", "FROZEN_TOLERANCE", "frozen_forward"]
