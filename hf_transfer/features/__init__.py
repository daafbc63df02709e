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

from .cache import CACHE_ENV, FeatureCache, FeatureSet, compute_features, concat_features, default_cache_dir, describe_cache_use
from .extract import EXTRACTION_BATCH, FeatureExtractor, ProcessorImages, extract_features, global_pool, iter_batches
from .fingerprints import (
    dataset_fingerprint,
    dataset_transform_fingerprint,
    library_versions,
    model_config_fingerprint,
    model_fingerprint,
    row_keys,
    transform_fingerprint,
)
from .layers import POOLED, POOLINGS, FeatureLayer, auto_depths, concat_layer, parse_layers

__all__ = [
    "EXTRACTION_BATCH",
    "POOLED",
    "FeatureCache",
    "FeatureExtractor",
    "FeatureLayer",
    "FeatureSet",
    "ProcessorImages",
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
    "row_keys",
    "transform_fingerprint",
]
