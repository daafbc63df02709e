"""What a saved output folder's config.json and weight names say about the model family, without loading it.

The model card, the push checks and resume read folders; only this module (with the adapters) knows how timm
models are saved through transformers: a ``timm_wrapper`` config whose ``pretrained_cfg`` carries the
preprocessing, the Hub id and the license, and weights under timm's own names when the folder loads in timm.
"""

from __future__ import annotations

TIMM_WRAPPER_TYPE = "timm_wrapper"
TIMM_WRAPPER_PREFIX = "timm_model."  # the prefix TimmWrapper puts before timm's own parameter names
# The card's timm snippet reads the class names where timm keeps them.
TIMM_LABELS_LINE = "labels = model.pretrained_cfg['label_names']"
NO_PREPROCESSING_FIX = "save the image processor, or for timm models keep pretrained_cfg in config.json"


def is_timm_wrapper(config: dict) -> bool:
    return config.get("model_type") == TIMM_WRAPPER_TYPE


def loads_in_timm(config: dict, weight_names: list[str]) -> bool:
    """timm's local-dir:/hf-hub: loader reads the folder: a TimmWrapper config and weights under timm's own names."""
    if not is_timm_wrapper(config) or config.get("model_args") is None:
        return False
    return bool(weight_names) and not any(n.startswith(TIMM_WRAPPER_PREFIX) for n in weight_names)


def timm_hub_id(config: dict) -> str | None:
    """The Hub id timm resolved a bare architecture name to (None when it has no weights there)."""
    hub_id = (config.get("pretrained_cfg") or {}).get("hf_hub_id")
    return hub_id.split("@")[0] if hub_id and "/" in hub_id else None


def license_of(config: dict) -> str | None:
    return (config.get("pretrained_cfg") or {}).get("license")


def saved_input_size(config: dict) -> list | None:
    """The input size a timm folder was saved for ([C, H, W]; None when the config does not say)."""
    return (config.get("pretrained_cfg") or {}).get("input_size")


def family_note(config: dict) -> str:
    """Words after the model type in the card."""
    return " (a timm model wrapped for transformers)" if is_timm_wrapper(config) else ""
