"""Backbones: load any source as a `PreTrainedModel`, and the adapter that knows its family.

* `loading`: sources (embedded weights, local folders, timm names, transformers Hub ids) -> a model;
* `adapter`: `BackboneAdapter`, the registry and `adapter_for(model)`: the one place that knows a family;
* `timm_adapters`, `transformers_adapters`: the families (generic ones and the special cases).

Everything else in hf_transfer asks the adapter and never checks which library a model comes from.
"""

from .adapter import ADAPTERS, BackboneAdapter, adapter_for, build_layer_map, register_adapter
from . import timm_adapters, transformers_adapters  # noqa: E402,F401 - register the families (generic first)
from . import peft_adapter  # noqa: E402,F401 - a peft wrapper is matched before the family it wraps
from .loading import (
    DEFAULT_BACKBONE,
    EMBEDDED_BACKBONES,
    EMBEDDED_PREFIX,
    EmbeddedBackbone,
    label_maps,
    load_backbone,
    load_backbone_with_adapter,
    wrap_timm_model,
)


def data_config(model) -> dict:
    """Preprocessing of a loaded backbone: input_size, interpolation, mean, std, crop_pct."""
    return adapter_for(model).data_config()


def set_preprocessing(model, image_size: int | None = None) -> None:
    """Record the resolution the model is trained at, so a saved folder preprocesses at that size."""
    adapter_for(model).set_preprocessing(image_size)


__all__ = [
    "ADAPTERS",
    "DEFAULT_BACKBONE",
    "EMBEDDED_BACKBONES",
    "EMBEDDED_PREFIX",
    "BackboneAdapter",
    "EmbeddedBackbone",
    "adapter_for",
    "build_layer_map",
    "data_config",
    "label_maps",
    "load_backbone",
    "load_backbone_with_adapter",
    "register_adapter",
    "set_preprocessing",
    "wrap_timm_model",
]
