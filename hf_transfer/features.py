"""Frozen-backbone features: the pooled bottleneck and globally pooled earlier layers, with an on-disk cache.

A *feature layer* is either ``pooled`` (the input of the classifier: timm ``forward_head(pre_logits=True)``, the
pooled output of a transformers model), one depth group of the `LayerMap` (the same map the fine-tuning core
freezes by), or a concatenation of those (``3+7+pooled``: their features side by side). A depth group's output is
read with a forward hook on ``DepthGroup.output_module`` and pooled globally: CNN maps (N, C, H, W) -> mean over
H×W, token maps (N, L, C) -> mean over tokens (class token included); ``avgmax`` pooling puts the max beside the
mean. When no requested layer needs the end of the network, the forward stops right after the deepest one.

Features are cached under ``~/.cache/hf_transfer/features`` (``HF_TRANSFER_CACHE`` or ``cache_dir`` override it),
one safetensors file per (split, single layer), keyed by everything that determines them: the weights, the layer
and its pooling, the eval transform, the images and labels, and the image size. Change any of these and the key
changes. Concatenations are never cached: they are assembled from their parts' entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .fingerprint import split_fingerprint
from .errors import TransferError
from .backbones import adapter_for, build_layer_map
from .layers import LayerMap
from .modeling_probe import global_pool as _global_pool

POOLED = "pooled"
CACHE_ENV = "HF_TRANSFER_CACHE"
CACHE_FORMAT = 2  # bump when the way features are computed changes: old entries then stop matching


# ------------------------------------------------------------------------------------------- feature layers
POOLINGS = ("avg", "avgmax")


@dataclass(frozen=True)
class FeatureLayer:
    """Where features are read: ``depth`` None is the pooled bottleneck; ``parts`` makes a concatenation.

    A concatenation (``3+7+pooled``) is its single layers' features side by side, in ``parts`` order (shallow first,
    pooled last). It is built from the single layers' (cached) features: it never needs a forward of its own.
    """

    name: str  # "pooled", "depth 12 (blocks.5.0)", "concat 3+7+12+pooled"
    depth: int | None = None
    module: str | None = None  # the hooked output module (None for pooled and for concatenations)
    pooling: str = "avg"  # a depth map's global pooling: avg, or avgmax (average and max side by side)
    parts: tuple["FeatureLayer", ...] = ()

    @property
    def is_pooled(self) -> bool:
        return self.depth is None and not self.parts

    @property
    def is_concat(self) -> bool:
        return bool(self.parts)

    @property
    def singles(self) -> tuple["FeatureLayer", ...]:
        """The single layers whose features this one is made of (itself, unless a concatenation)."""
        return self.parts or (self,)

    @property
    def key(self) -> str:
        if self.parts:
            return "+".join(part.key for part in self.parts)
        if self.is_pooled:
            return POOLED
        # avg keeps the key it always had: entries cached before avgmax existed stay valid
        return f"depth{self.depth}:{self.module}" + ("" if self.pooling == "avg" else f":{self.pooling}")

    @property
    def spec(self) -> str:
        """The --layers text that names this layer (``3``, ``pooled``, ``3+7+pooled``); pooling is --pooling's."""
        if self.parts:
            return "+".join(part.spec for part in self.parts)
        return POOLED if self.is_pooled else str(self.depth)


def _depth_layer(group, pooling: str = "avg") -> FeatureLayer:
    suffix = "" if pooling == "avg" else " avg+max"
    return FeatureLayer(f"depth {group.index} ({group.name}){suffix}", group.index, group.output_module, pooling)


def concat_layer(parts: Sequence[FeatureLayer]) -> FeatureLayer:
    """Single layers -> their concatenation, parts ordered shallow first, pooled last (``3+7`` equals ``7+3``)."""
    ordered = sorted(dict.fromkeys(parts), key=lambda l: (l.is_pooled, l.depth if l.depth is not None else 0))
    if len(ordered) == 1:
        return ordered[0]
    suffix = " avg+max" if any(p.pooling != "avg" and not p.is_pooled for p in ordered) else ""
    return FeatureLayer("concat " + "+".join(p.spec for p in ordered) + suffix, parts=tuple(ordered))


def auto_depths(layer_map: LayerMap) -> list[int]:
    """Three evenly spaced depths, at 1/4, 1/2 and 3/4 of the body."""
    count = len(layer_map.body)
    return sorted({max(0, round(count * f) - 1) for f in (0.25, 0.5, 0.75)})


def parse_layers(spec: str | Sequence[str] | None, layer_map: LayerMap, pooling: str = "avg") -> list[FeatureLayer]:
    """``--layers`` text -> feature layers: single depths shallow first, pooled, then concatenations.

    Comma-separated candidates, each ``pooled``, a depth index (negative counts from the end), ``all`` (every depth
    + pooled), ``auto``, ``concat``, or depths joined with ``+`` into one concatenated feature (``3+7+pooled``).
    ``auto`` is three evenly spaced depths (at 1/4, 1/2, 3/4 of the body), ``pooled``, and their concatenation:
    enough to see where features transfer best without probing every block (dissimilar data often peaks in the
    middle of the network, and the depths side by side often beat any one of them). ``concat`` is that
    concatenation alone. ``pooling`` (avg | avgmax) is how depth maps are pooled; the bottleneck keeps the model's.
    """
    if pooling not in POOLINGS:
        raise TransferError(f"--pooling {pooling!r} is not understood; use avg (global average) or avgmax "
                            "(global average and global max side by side)")
    body = layer_map.body
    if spec is None:
        spec = "auto"
    items = [s.strip() for part in ([spec] if isinstance(spec, str) else spec) for s in str(part).split(",") if s.strip()]
    if not items:
        raise TransferError("--layers is empty; pass pooled, all, auto, concat or depth indices such as '3,7,pooled' "
                            "or '3+7+pooled'")

    def depth_of(item: str) -> int:
        if not re.fullmatch(r"-?\d+", item):
            raise TransferError(f"--layers entry {item!r} is not understood; use pooled, all, auto, concat, depth "
                                "indices like '3,7,pooled', or depths joined with + like '3+7+pooled'")
        depth = int(item) + (len(body) if int(item) < 0 else 0)
        if not 0 <= depth < len(body):
            raise TransferError(
                f"--layers depth {item} is out of range: this backbone has depths 0-{len(body) - 1} "
                f"(and 'pooled'); see the depth table printed at start"
            )
        return depth

    def single(item: str) -> FeatureLayer:
        return FeatureLayer(POOLED) if item == POOLED else _depth_layer(body[depth_of(item)], pooling)

    def auto_concat() -> FeatureLayer:
        return concat_layer([_depth_layer(body[d], pooling) for d in auto_depths(layer_map) if body[d].output_module]
                            + [FeatureLayer(POOLED)])

    depths: set[int] = set()
    pooled = False
    concats: list[FeatureLayer] = []

    def add(joined: FeatureLayer) -> None:  # a "concatenation" of one layer is that layer
        nonlocal pooled
        if joined.is_concat:
            concats.append(joined)
        elif joined.is_pooled:
            pooled = True
        else:
            depths.add(joined.depth)

    for item in items:
        if item == POOLED:
            pooled = True
        elif item == "all":
            depths.update(g.index for g in body)
            pooled = True
        elif item == "auto":
            depths.update(auto_depths(layer_map))
            pooled = True
            add(auto_concat())
        elif item == "concat":
            add(auto_concat())
        elif "+" in item:
            parts = [single(p.strip()) for p in item.split("+")]
            unpoolable = [p for p in parts if not p.is_pooled and not p.module]
            if unpoolable:
                raise TransferError(f"--layers {item!r}: depth {unpoolable[0].depth} has no single output module to "
                                    "read features from; choose other depths (see the depth table)")
            add(concat_layer(parts))
        else:
            depths.add(depth_of(item))
    layers = [_depth_layer(body[d], pooling) for d in sorted(depths) if body[d].output_module]
    if pooled:
        layers.append(FeatureLayer(POOLED))
    return layers + list({c.key: c for c in concats}.values())


# ------------------------------------------------------------------------------------------------ extraction
def global_pool(output, nhwc: bool = False, pooling: str = "avg") -> torch.Tensor:
    """A depth group's output -> (N, C), or (N, 2C) for avgmax (the exported probe model pools the same way: one
    definition, there)."""
    try:
        return _global_pool(output, nhwc, pooling)
    except ValueError as err:
        raise TransferError(str(err)) from None


class _StopForward(Exception):
    """Raised by the hook on the deepest requested layer: nothing after it is computed."""


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


def extract_features(model, dataset, layers: Sequence[FeatureLayer], *, layer_map: LayerMap | None = None,
                     batch_size: int = 64, desc: str = "features") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Features of every image in ``dataset`` (eval mode, inference mode, batched) -> ({layer key: (N, C)}, labels)."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    channels_last = adapter_for(model).prefers_channels_last()
    if channels_last:
        model.to(memory_format=torch.channels_last)  # ~1.7x faster CNN inference on CPU
    extractor = FeatureExtractor(model, layers, layer_map)
    chunks: dict[str, list[torch.Tensor]] = {layer.key: [] for layer in layers}
    labels = []
    try:
        with tqdm(total=len(dataset), desc=desc, unit="img", leave=False) as bar:
            for pixels, batch_labels in iter_batches(dataset, batch_size):
                if channels_last:
                    pixels = pixels.contiguous(memory_format=torch.channels_last)
                for key, value in extractor(pixels).items():
                    chunks[key].append(value)
                labels.append(batch_labels)
                bar.update(len(batch_labels))
    finally:
        model.train(was_training)
    return {k: torch.cat(v).numpy() for k, v in chunks.items()}, torch.cat(labels).numpy().astype(np.int64)


# ---------------------------------------------------------------------------------------------- fingerprints
def model_fingerprint(model, layer_map: LayerMap | None = None) -> str:
    """Hash of every body weight and buffer (names, dtypes, shapes, values): a changed weight changes it.

    The classifier is left out: it never affects features, and a new head is randomly initialized on each load.
    """
    layer_map = layer_map or build_layer_map(model)
    head = set(layer_map.head.param_names)
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if name in head:
            continue
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        if tensor.numel():
            digest.update(tensor.view(torch.uint8).numpy().data)
    return digest.hexdigest()[:32]


def dataset_fingerprint(dataset) -> str:
    """Content hash of a `datasets.Dataset` split: its Arrow data (image bytes or paths, labels) and row order.

    Files referenced only by path are hashed by size and modification time, so an edited image invalidates.
    """
    digest = hashlib.sha256()
    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    for column in table.column_names:
        digest.update(f"column:{column};".encode())
        for chunk in table.column(column).chunks:
            _hash_array(digest, chunk)
            if column.lower() in ("image", "img") or "path" in str(chunk.type):
                _hash_referenced_files(digest, chunk)
    indices = getattr(dataset, "_indices", None)
    if indices is not None:
        digest.update(b"indices;")
        for chunk in indices.column(0).chunks:
            _hash_array(digest, chunk)
    return digest.hexdigest()[:32]


def _hash_array(digest, array) -> None:
    digest.update(f"{array.type}:{array.offset}:{len(array)};".encode())
    for buffer in array.buffers():
        if buffer is not None:
            digest.update(memoryview(buffer))


def _hash_referenced_files(digest, chunk) -> None:
    import pyarrow as pa

    if not pa.types.is_struct(chunk.type) or chunk.type.get_field_index("path") < 0:
        return
    if chunk.type.get_field_index("bytes") >= 0 and chunk.field("bytes").null_count == 0:
        return  # the bytes themselves are hashed already
    for path in chunk.field("path").to_pylist():
        if path and os.path.exists(path):
            stat = os.stat(path)
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns};".encode())


def transform_fingerprint(transform, data_cfg: dict | None = None, image_size: int | None = None) -> str:
    """The eval transform as text (memory addresses removed) plus the data config it was built from."""
    text = re.sub(r" at 0x[0-9a-f]+", "", repr(transform))
    payload = json.dumps({"transform": text, "data_cfg": data_cfg, "image_size": image_size}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def model_config_fingerprint(model) -> str:
    """The model's configuration and module structure, labels aside: two models with equal weights can still give
    other features (timm ``global_pool``, a changed ``drop_path`` or norm ``eps``, another model class)."""
    config = model.config.to_dict() if hasattr(model, "config") else {}
    for key in ("id2label", "label2id", "label_names", "num_labels", "num_classes", "_name_or_path", "transformers_version"):
        config.pop(key, None)
    structure = re.sub(r"out_features=\d+", "", re.sub(r" at 0x[0-9a-f]+", "", repr(model)))  # the head's size is a label count
    payload = json.dumps({"class": type(model).__name__, "config": config, "structure": structure}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "timm", "transformers", "scikit-learn", "numpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "-"
    return versions


def dataset_transform_fingerprint(dataset) -> str | None:
    """The fingerprint of the transform attached with `with_transforms` (None when the transform is unknown)."""
    transform = (getattr(dataset, "format", None) or {}).get("format_kwargs", {}).get("transform")
    described = getattr(transform, "hf_transfer_transform", None)
    return None if described is None else transform_fingerprint(described)


# ----------------------------------------------------------------------------------------------------- cache
def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hf_transfer" / "features").expanduser()


class FeatureCache:
    """One safetensors file per (split, layer) entry, written atomically (temp file + rename)."""

    def __init__(self, cache_dir: str | os.PathLike | None = None, enabled: bool = True):
        self.dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.enabled = enabled

    @staticmethod
    def key(**parts) -> str:
        """Every entry's key holds the cache format and the versions of the libraries that compute features and fit
        probes: an upgrade (a changed kernel, a new solver default) misses instead of serving stale results."""
        payload = json.dumps({"format": CACHE_FORMAT, "versions": library_versions(), **parts}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:40]

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.safetensors"

    def load(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        tensors = self.load_arrays(key)
        return None if tensors is None else (tensors["features"], tensors["labels"])

    def save(self, key: str, features: np.ndarray, labels: np.ndarray, metadata: dict | None = None) -> None:
        self.save_arrays(key, {"features": np.asarray(features, dtype=np.float32),
                               "labels": np.asarray(labels, dtype=np.int64)}, metadata)

    # Named arrays (features, or a fitted linear probe's parameters) as one safetensors file: no pickles.
    def load_arrays(self, key: str) -> dict[str, np.ndarray] | None:
        if not self.enabled or not self.path(key).is_file():
            return None
        from safetensors.numpy import load_file

        try:
            return load_file(str(self.path(key)))
        except Exception:  # noqa: BLE001 - a damaged entry is recomputed, not fatal
            return None

    def save_arrays(self, key: str, arrays: dict[str, np.ndarray], metadata: dict | None = None) -> None:
        if not self.enabled:
            return
        from safetensors.numpy import save_file

        self._write_atomically(self.path(key), lambda tmp: save_file(
            {name: np.ascontiguousarray(array) for name, array in arrays.items()},
            tmp, metadata={k: str(v) for k, v in (metadata or {}).items()}))

    # Small JSON results derived from cached features (cross-validation scores): plain data, never pickles.
    def load_json(self, key: str) -> dict | None:
        path = self.dir / f"{key}.json"
        if not self.enabled or not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def save_json(self, key: str, payload: dict) -> None:
        if self.enabled:
            self._write_atomically(self.dir / f"{key}.json", lambda tmp: Path(tmp).write_text(json.dumps(payload)))

    def _write_atomically(self, path: Path, write) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=self.dir)
        os.close(handle)
        try:
            write(tmp)
            os.replace(tmp, path)  # readers see the old entry or the whole new one, never a part
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


@dataclass
class FeatureSet:
    """Cached or freshly computed features: ``features[split][layer.key]`` is (N, C), ``labels[split]`` is (N,)."""

    layers: list[FeatureLayer]
    features: dict[str, dict[str, np.ndarray]]
    labels: dict[str, np.ndarray]
    from_cache: dict[str, bool]  # "split/layer key" -> hit
    forward_images: int = 0  # images pushed through the backbone in this call
    seconds: float = 0.0

    @property
    def all_cached(self) -> bool:
        return all(self.from_cache.values())


def compute_features(model, splits: dict, layers: Sequence[FeatureLayer], *, layer_map: LayerMap | None = None,
                     cache: FeatureCache | None = None, transform_key: str | None = None, image_size: int | None = None,
                     batch_size: int = 64) -> FeatureSet:
    """Features of each split for each layer, from the cache where possible; only missing layers are computed.

    ``transform_key`` names the eval transform the splits carry. Without it the transform attached by
    `with_transforms` is fingerprinted; a split whose transform cannot be identified is computed and never cached,
    so features made under one transform are never served for another. Only single layers are cached; a
    concatenation is assembled from its parts (``features[split][concat.key]``), so ``3+7+pooled`` after ``3,7,pooled``
    runs no forward. ``from_cache`` is per single layer.
    """
    import time

    start = time.perf_counter()
    cache = cache or FeatureCache()
    layer_map = layer_map or build_layer_map(model)
    singles = list(dict.fromkeys(single for layer in layers for single in layer.singles))
    weights = model_fingerprint(model, layer_map) + model_config_fingerprint(model)
    features: dict[str, dict[str, np.ndarray]] = {}
    labels: dict[str, np.ndarray] = {}
    hits: dict[str, bool] = {}
    forwarded = 0
    for split_name, dataset in splits.items():
        data_key = split_fingerprint(dataset)  # datasets' own fingerprint (fingerprint.py): no table hashed
        split_transform = transform_key or dataset_transform_fingerprint(dataset)
        split_cache = cache if split_transform else FeatureCache(cache.dir, enabled=False)
        keys = {layer.key: FeatureCache.key(weights=weights, layer=layer.key, transform=split_transform, data=data_key,
                                            image_size=image_size, model_class=type(model).__name__) for layer in singles}
        features[split_name] = {}
        missing = []
        for layer in singles:
            entry = split_cache.load(keys[layer.key])
            hits[f"{split_name}/{layer.key}"] = entry is not None
            if entry is None:
                missing.append(layer)
            else:
                features[split_name][layer.key], labels[split_name] = entry
        if missing:
            computed, split_labels = extract_features(model, dataset, missing, layer_map=layer_map, batch_size=batch_size,
                                                      desc=f"{split_name} features")
            forwarded += len(dataset)
            labels[split_name] = split_labels
            for layer in missing:
                features[split_name][layer.key] = computed[layer.key]
                split_cache.save(keys[layer.key], computed[layer.key], split_labels,
                           {"layer": layer.name, "split": split_name, "images": len(dataset), "weights": weights})
        for layer in layers:
            if layer.is_concat:
                features[split_name][layer.key] = concat_features(features[split_name], layer)
    return FeatureSet(list(layers), features, labels, hits, forwarded, time.perf_counter() - start)


def concat_features(features: dict[str, np.ndarray], layer: FeatureLayer) -> np.ndarray:
    """``layer``'s (N, C) features from a {single layer key: (N, C)} dict: a concatenation is its parts side by side."""
    missing = [part.name for part in layer.singles if part.key not in features]
    if missing:
        raise TransferError(f"no features for {', '.join(missing)}; compute them (compute_features) before "
                            f"probing {layer.name}")
    if not layer.is_concat:
        return features[layer.key]
    return np.concatenate([features[part.key] for part in layer.parts], axis=1)


def describe_cache_use(feature_set: FeatureSet, cache: FeatureCache) -> str:
    hits = sum(feature_set.from_cache.values())
    total = len(feature_set.from_cache)
    if not cache.enabled:
        return f"features computed ({feature_set.forward_images} images through the backbone, cache disabled)"
    if hits == total:
        return f"features loaded from the cache ({hits}/{total} entries in {cache.dir}); no backbone forward"
    if hits == 0:
        return f"features computed ({feature_set.forward_images} images through the backbone) and cached in {cache.dir}"
    return (f"features partly from the cache ({hits}/{total} entries); the rest computed "
            f"({feature_set.forward_images} images) and cached in {cache.dir}")


__all__ = [
    "POOLED",
    "FeatureCache",
    "FeatureExtractor",
    "FeatureLayer",
    "FeatureSet",
    "POOLINGS",
    "auto_depths",
    "compute_features",
    "concat_features",
    "concat_layer",
    "dataset_fingerprint",
    "default_cache_dir",
    "describe_cache_use",
    "extract_features",
    "global_pool",
    "model_fingerprint",
    "parse_layers",
    "transform_fingerprint",
]
