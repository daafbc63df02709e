"""Fingerprints: what determines features (weights, model config, eval transform, images), hashed for cache keys."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re

import numpy as np
import torch

from ..backbones import build_layer_map
from ..layers import LayerMap

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
    """The versions of the libraries that determine features and fits (part of every cache key)."""
    return dict(_library_versions())


@functools.lru_cache(maxsize=1)
def _library_versions() -> tuple[tuple[str, str], ...]:
    # importlib.metadata scans the installed distributions on every call (about 4 ms here, and every cache key
    # asks: 23 times in the default probe run); the installed versions do not change while a process runs
    from importlib.metadata import PackageNotFoundError, version

    versions = []
    for package in ("torch", "timm", "transformers", "scikit-learn", "numpy"):
        try:
            versions.append((package, version(package)))
        except PackageNotFoundError:
            versions.append((package, "-"))
    return tuple(versions)


def dataset_transform_fingerprint(dataset) -> str | None:
    """The fingerprint of the transform attached with `with_transforms` (None when the transform is unknown)."""
    transform = (getattr(dataset, "format", None) or {}).get("format_kwargs", {}).get("transform")
    described = getattr(transform, "hf_transfer_transform", None)
    return None if described is None else transform_fingerprint(described)


def row_keys(dataset) -> tuple[list[bytes], np.ndarray] | None:
    """Per-image keys and labels of a `datasets` split, read from its Arrow data without decoding an image.

    An image's key is a digest of its encoded bytes (a file referenced only by path: its path, size and
    modification time), so features cached for an image serve it in any split or fold that holds it. None when the
    split has no `Image` column or no integer label column (then the split is cached as a whole).
    """
    import pyarrow as pa
    from datasets import ClassLabel

    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    images = [name for name in table.column_names if pa.types.is_struct(table.schema.field(name).type)
              and {"bytes", "path"} <= {f.name for f in table.schema.field(name).type}]
    features = getattr(dataset, "features", None) or {}
    labels = [name for name, feature in features.items() if isinstance(feature, ClassLabel)]
    labels = labels or [name for name in ("label", "labels") if name in table.column_names
                        and pa.types.is_integer(table.schema.field(name).type)]
    if len(images) != 1 or not labels:
        return None
    indices = getattr(dataset, "_indices", None)
    if indices is not None:
        table = table.take(indices.column(0).combine_chunks())
    cells = table.column(images[0]).combine_chunks()
    keys = []
    for data, path in zip(cells.field("bytes").to_pylist(), cells.field("path").to_pylist()):
        if data is not None:
            keys.append(hashlib.sha256(b"bytes:" + data).digest()[:20])
        else:
            stat = os.stat(path) if path and os.path.exists(path) else None
            where = f"path:{path}:{stat.st_size if stat else -1}:{stat.st_mtime_ns if stat else -1}"
            keys.append(hashlib.sha256(where.encode()).digest()[:20])
    return keys, np.asarray(table.column(labels[0]).to_numpy(zero_copy_only=False), dtype=np.int64)
