"""Extraction: one forward pass reads every requested depth (forward hooks, globally pooled) and the pooled feature."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from ..backbones import adapter_for
from ..backbones.adapter import _StopForward
from ..errors import TransferError
from ..layers import LayerMap
from ..modeling_probe import global_pool as _global_pool
from .frozen import frozen_forward
from .threads import ThreadChooser, restored_threads

# Images per forward. 32 rather than 64: measured here on EfficientNet-Lite0 at 96 px (frozen forward, one thread),
# 2.8 ms of CPU per image at 32 against 3.7-4.0 at 64 and 5.0-5.2 at 128; the activations of a smaller batch stay
# in the CPU's caches. The features do not depend on it (eval mode: every image is computed on its own).
EXTRACTION_BATCH = 32
from .layers import POOLED, FeatureLayer

def global_pool(output, nhwc: bool = False, pooling: str = "avg") -> torch.Tensor:
    """A depth group's output -> (N, C), or (N, 2C) for avgmax (the exported probe model pools the same way: one
    definition, there)."""
    try:
        return _global_pool(output, nhwc, pooling)
    except ValueError as err:
        raise TransferError(str(err)) from None


class FeatureExtractor:
    """Run a backbone once and return the requested layers' pooled features, shape (N, C) each.

    Depth groups are read with forward hooks on their output modules (layout from the adapter: NCHW maps, NHWC maps
    or tokens); the pooled feature is the adapter's (the head's input). A concatenation is its parts side by side.
    """

    def __init__(self, model, layers: Sequence[FeatureLayer], layer_map: LayerMap | None = None):
        self.model = model
        self.adapter = adapter_for(model)
        self.layers = list(layers)
        self.layer_map = layer_map or self.adapter.layer_map()
        singles = list(dict.fromkeys(single for layer in self.layers for single in layer.singles))
        self.wants_pooled = any(layer.is_pooled for layer in singles)
        depth_layers = [layer for layer in singles if not layer.is_pooled]
        self.stop_after = None if self.wants_pooled or not depth_layers else max(depth_layers, key=lambda l: l.depth).module
        self._store: dict[str, torch.Tensor] = {}
        self._depth_layers = depth_layers
        self._singles = singles

    def _hooks(self):
        modules = dict(self.model.named_modules())
        handles = []
        by_module: dict[str, list[FeatureLayer]] = {}
        for layer in self._depth_layers:  # one module can be read with two poolings
            by_module.setdefault(layer.module, []).append(layer)
        for module_name, module_layers in by_module.items():
            def hook(module, args, output, module_layers=module_layers, module_name=module_name):
                for layer in module_layers:
                    self._store[layer.key] = global_pool(output, self.adapter.feature_layout(module), layer.pooling).float()
                if module_name == self.stop_after and len(self._store) == len(self._depth_layers):
                    raise _StopForward

            handles.append(modules[module_name].register_forward_hook(hook))
        return handles

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward(pixel_values)

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """{layer key: (N, C)} of one batch (no inference mode of its own: `frozen.frozen_forward` traces it)."""
        self._store = {}
        handles = self._hooks()
        try:
            # The pooled path also runs for depth-only requests: a last body group can sit under the classifier's
            # module (ConvNeXt's head.norm); a stop hook ends the forward before that when it is not needed.
            pooled = self.adapter.pooled_features(pixel_values)
            if self.wants_pooled:
                self._store[POOLED] = pooled.flatten(1).float()
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = [layer.name for layer in self._singles if layer.key not in self._store]
        if missing:
            raise TransferError(f"the forward of {type(self.model).__name__} never ran {', '.join(missing)}; choose "
                                "other depths with --layers (or --layer_regex for this architecture)")
        return {layer.key: torch.cat([self._store[p.key] for p in layer.singles], dim=1) if layer.is_concat
                else self._store[layer.key] for layer in self.layers}


def iter_batches(dataset, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """(pixel_values, labels) batches from a `with_transforms` dataset, in order."""
    for start in range(0, len(dataset), batch_size):
        batch = dataset[start:start + batch_size]
        pixels = batch["pixel_values"]
        pixels = torch.stack(pixels) if isinstance(pixels, list) else pixels
        yield pixels, torch.as_tensor(batch["labels"])


class ProcessorImages:
    """Pixel batches made by an image processor from a split's undecoded images, each image decoded once.

    Given the processor the exported folder carries, the probe is fitted on exactly the pixels pipeline() will give
    the exported model (the same code on the same decoded image), not on a re-implementation that differs in a
    resize's rounding (#18: 2 of 120 images predicted differently). Called as ``source(dataset, batch_size)``.
    """

    def __init__(self, processor, image_column: str, label_column: str):
        self.processor, self.image_column, self.label_column = processor, image_column, label_column

    def __call__(self, dataset, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        from concurrent.futures import ThreadPoolExecutor

        from ..transforms import _to_rgb, decode_image

        raw = dataset.with_format(None)  # the undecoded cells, without a transform that `with_transforms` attached
        starts = range(0, len(raw), batch_size)

        def make(start: int) -> tuple[torch.Tensor, torch.Tensor]:
            batch = raw[start:start + batch_size]
            images = [_to_rgb(decode_image(cell)) for cell in batch[self.image_column]]
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
            return pixels, torch.as_tensor(batch[self.label_column])

        # The next batch is decoded and preprocessed in a thread while the caller runs the forward on this one
        # (PIL and torch release the GIL): the CPU time of preprocessing no longer adds to the extraction's wall time.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(make, starts[0]) if len(starts) else None
            for i in range(len(starts)):
                ready = pending.result()
                if i + 1 < len(starts):
                    pending = pool.submit(make, starts[i + 1])
                yield ready


def extract_features(model, dataset, layers: Sequence[FeatureLayer], *, layer_map: LayerMap | None = None,
                     batch_size: int = EXTRACTION_BATCH, desc: str = "features",
                     source=None, log=None, forwards: dict | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Features of every image in ``dataset`` (eval mode, inference mode, batched) -> ({layer key: (N, C)}, labels).

    ``source(dataset, batch_size)`` makes the pixel batches (default: the dataset's own `with_transforms` output).
    Convolutional backbones run a frozen TorchScript copy of the forward on large sets (`frozen.frozen_forward`:
    batch norms folded, checked against the eager forward first); ``log`` hears when it falls back to eager.
    ``forwards``: a dict that keeps the forward chosen here for the next call with the same layers and batch size
    (the splits of one `compute_features` call: one trace, and a validation split below `FREEZE_FROM_IMAGES` runs
    the frozen forward too). Only for calls on one model with unchanged weights: freezing copies them."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    channels_last = adapter_for(model).prefers_channels_last()
    if channels_last:
        model.to(memory_format=torch.channels_last)  # ~1.7x faster CNN inference on CPU
    reuse_key = (tuple(layer.key for layer in layers), batch_size, channels_last)
    # the frozen forward once the first batch has shown it matches (frozen.py), else the eager one
    forward = forwards.get(reuse_key) if forwards is not None else None
    extractor = FeatureExtractor(model, layers, layer_map) if forward is None else None
    chunks: dict[str, list[torch.Tensor]] = {layer.key: [] for layer in layers}
    labels = []
    threads = ThreadChooser()  # threads.py: one or all threads, whichever this machine runs faster right now
    try:
        with tqdm(total=len(dataset), desc=desc, unit="img", leave=False) as bar, restored_threads():
            for pixels, batch_labels in (source or iter_batches)(dataset, batch_size):
                if channels_last:
                    pixels = pixels.contiguous(memory_format=torch.channels_last)
                if forward is None:
                    # One thread: tracing is serial Python work, and two spinning OpenMP threads made the trace and
                    # its check take 7-8 s instead of 1 on a busy machine (measured).
                    with restored_threads(1):
                        forward = frozen_forward(extractor, pixels, len(dataset), log) or extractor
                    if forwards is not None:
                        forwards[reuse_key] = forward
                with threads.batch(len(batch_labels)):
                    features = forward(pixels)
                for key, value in features.items():
                    chunks[key].append(value)
                labels.append(batch_labels)
                bar.update(len(batch_labels))
    finally:
        model.train(was_training)
    return {k: torch.cat(v).numpy() for k, v in chunks.items()}, torch.cat(labels).numpy().astype(np.int64)
