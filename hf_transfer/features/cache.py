"""The feature cache and `compute_features`: features from the cache where possible, the rest extracted once."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..backbones import build_layer_map
from ..errors import TransferError
from ..layers import LayerMap
from .extract import EXTRACTION_BATCH, extract_features
from ..fingerprint import split_fingerprint
from .fingerprints import (
    dataset_fingerprint,
    dataset_transform_fingerprint,
    model_config_fingerprint,
    model_fingerprint,
    row_keys,
)
from .layers import FeatureLayer

CACHE_ENV = "HF_TRANSFER_CACHE"
CACHE_FORMAT = 3  # bump when the way features are computed changes: old entries then stop matching

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
        import sys

        versions = sys.modules[__package__].library_versions()  # the package's name: the one users and tests patch
        payload = json.dumps({"format": CACHE_FORMAT, "versions": versions, **parts}, sort_keys=True, default=str)
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

    # Features keyed by image: one folder per (weights, layer, transform, size), holding chunks of (image key,
    # feature row). A split or a cross-validation fold reads the rows of its images, wherever they were computed.
    def load_rows(self, group: str, keys: Sequence[bytes]) -> tuple[np.ndarray | None, np.ndarray]:
        """-> (features, found): ``features[i]`` is image ``keys[i]``'s row where ``found[i]`` (None: none found)."""
        found = np.zeros(len(keys), dtype=bool)
        folder = self.dir / "rows" / group
        if not self.enabled or not folder.is_dir():
            return None, found
        from safetensors.numpy import load_file

        wanted = {key: i for i, key in enumerate(keys)}
        features = None
        for chunk in sorted(folder.glob("*.safetensors")):
            try:
                arrays = load_file(str(chunk))
            except Exception:  # noqa: BLE001 - a damaged chunk is recomputed, not fatal
                continue
            for row, key in enumerate(arrays["keys"]):
                i = wanted.get(key.tobytes())
                if i is None:
                    continue
                if features is None:
                    features = np.empty((len(keys), arrays["features"].shape[1]), dtype=np.float32)
                features[i] = arrays["features"][row]
                found[i] = True
        if features is not None:  # the same image twice in a split: every row of it
            for i in np.flatnonzero(~found):
                first = wanted[keys[i]]
                if found[first]:
                    features[i], found[i] = features[first], True
        return features, found

    def save_rows(self, group: str, keys: Sequence[bytes], features: np.ndarray) -> None:
        if not self.enabled or not len(keys):
            return
        from safetensors.numpy import save_file

        folder = self.dir / "rows" / group
        name = hashlib.sha256(b"".join(keys)).hexdigest()[:32]
        arrays = {"keys": np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), -1),
                  "features": np.ascontiguousarray(features, dtype=np.float32)}
        self._write_atomically(folder / f"{name}.safetensors", lambda tmp: save_file(arrays, tmp))

    def _write_atomically(self, path: Path, write) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
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
                     batch_size: int = EXTRACTION_BATCH, source=None, log=None) -> FeatureSet:
    """Features of each split for each layer, from the cache where possible; only missing images are computed.

    The cache is keyed by image (`row_keys`: a digest of each image's bytes), so the folds of a cross-validation,
    a subset or a reordering of a split, reuse what any earlier run computed for those images. A split whose images
    cannot be keyed one by one is cached as a whole. ``transform_key`` names the eval transform (``source``'s, when
    given: a callable ``(dataset, batch_size) -> (pixels, labels) batches``, e.g. `ProcessorImages`). Without it the
    transform attached by `with_transforms` is fingerprinted; a split whose transform cannot be identified is
    computed and never cached, so features made under one transform are never served for another. Only single
    layers are cached; a concatenation is assembled from its parts (``features[split][concat.key]``).
    ``from_cache`` is per single layer: True when every image of the split came from the cache.
    ``log`` hears why extraction stayed on the eager forward, if it did (`extract_features`).
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
    forwards: dict = {}  # one traced forward for every split (extract_features)
    for split_name, dataset in splits.items():
        split_transform = transform_key or dataset_transform_fingerprint(dataset)
        split_cache = cache if split_transform else FeatureCache(cache.dir, enabled=False)

        def entry_key(layer, **data):
            return FeatureCache.key(weights=weights, layer=layer.key, transform=split_transform, image_size=image_size,
                                    model_class=type(model).__name__, **data)

        def extract(rows=None):
            subset = dataset if rows is None else dataset.select(rows)
            return extract_features(model, subset, missing, layer_map=layer_map, batch_size=batch_size,
                                    desc=f"{split_name} features", source=source, log=log, forwards=forwards)

        features[split_name] = {}
        keyed = row_keys(dataset)
        if keyed is not None:  # one row per image, wherever it was computed
            keys, labels[split_name] = keyed
            found = {}
            for layer in singles:
                rows, found[layer.key] = split_cache.load_rows(entry_key(layer), keys)
                features[split_name][layer.key] = rows
                hits[f"{split_name}/{layer.key}"] = bool(found[layer.key].all())
            missing = [layer for layer in singles if not found[layer.key].all()]
            todo = np.flatnonzero(~np.logical_and.reduce([found[layer.key] for layer in missing])) if missing else []
            if len(todo):
                computed, _ = extract(todo.tolist() if len(todo) < len(dataset) else None)
                forwarded += len(todo)
                for layer in missing:
                    rows = features[split_name][layer.key]
                    if rows is None:
                        rows = np.empty((len(dataset), computed[layer.key].shape[1]), dtype=np.float32)
                    rows[todo] = computed[layer.key]
                    features[split_name][layer.key] = rows
                    new = [i for i, row in enumerate(todo) if not found[layer.key][row]]
                    split_cache.save_rows(entry_key(layer), [keys[todo[i]] for i in new], computed[layer.key][new])
        else:  # the split as a whole, keyed by its content
            data_key = split_fingerprint(dataset)  # datasets' own fingerprint (fingerprint.py): no table hashed
            missing = []
            for layer in singles:
                entry = split_cache.load(entry_key(layer, data=data_key))
                hits[f"{split_name}/{layer.key}"] = entry is not None
                if entry is None:
                    missing.append(layer)
                else:
                    features[split_name][layer.key], labels[split_name] = entry
            if missing:
                computed, labels[split_name] = extract()
                forwarded += len(dataset)
                for layer in missing:
                    features[split_name][layer.key] = computed[layer.key]
                    split_cache.save(entry_key(layer, data=data_key), computed[layer.key], labels[split_name],
                                     {"layer": layer.name, "split": split_name, "images": len(dataset)})
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
