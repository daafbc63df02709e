"""Changing a backbone's input resolution, and saying what that did to the model.

CNNs with global pooling have no size-dependent parameters: any resolution works unchanged. Vision transformers
carry position embeddings for a fixed patch grid: they are resampled (bicubic) to the new grid, timm through
``set_input_size``, transformers ViT-style models through their own ``interpolate_pos_encoding``. Anything else
with size-dependent parameters is refused with the reason.
"""

from __future__ import annotations

import re

import torch

from .backbones import is_timm_wrapper
from .errors import TransferError

POSITION_PARAM = re.compile(r"(^|\.)(pos_embed|position_embeddings|absolute_pos_embed)$")


def _grid(tokens: int, prefix_tokens: int) -> str:
    side = int(round((tokens - prefix_tokens) ** 0.5))
    return f"{side}x{side}"


def _position_params(model) -> dict[str, torch.Size]:
    return {n: p.shape for n, p in model.named_parameters() if POSITION_PARAM.search(n)}


def change_input_size(model, image_size: int | None) -> str:
    """Make ``model`` accept ``image_size`` inputs (in place) and return one line saying what changed."""
    if not image_size:
        return "input size unchanged"
    image_size = int(image_size)
    before = _position_params(model)
    if not before:
        return f"{image_size} px: no size-dependent parameters (global pooling), the weights are unchanged"
    if is_timm_wrapper(model):
        inner = model.timm_model
        if not hasattr(inner, "set_input_size"):
            raise TransferError(f"--image_size {image_size}: timm {type(inner).__name__} cannot resample its position "
                                "embeddings; use its native size or a model with set_input_size")
        patch = getattr(getattr(inner, "patch_embed", None), "patch_size", (1, 1))[0]
        if image_size % patch:
            raise TransferError(f"--image_size {image_size} is not a multiple of the patch size {patch}; use e.g. {image_size // patch * patch}")
        prefix = getattr(inner, "num_prefix_tokens", 1) if not getattr(inner, "no_embed_class", False) else 0
        inner.set_input_size(img_size=image_size)
        # A saved folder rebuilds the timm model from config.model_args: record the size there too.
        model.config.model_args = {**(model.config.model_args or {}), "img_size": image_size}
        after = _position_params(model)
        name = next(iter(before))
        return (f"{image_size} px: position embeddings {name.removeprefix('timm_model.')} resampled from grid "
                f"{_grid(before[name][1], prefix)} to {_grid(after[name][1], prefix)} ({before[name].numel()} -> "
                f"{after[name].numel()} values); other weights unchanged")
    embeddings = getattr(getattr(model, getattr(model, "base_model_prefix", ""), None), "embeddings", None)
    if embeddings is None or not hasattr(embeddings, "interpolate_pos_encoding") or not hasattr(embeddings, "patch_embeddings"):
        raise TransferError(f"--image_size {image_size}: {type(model).__name__} has size-dependent position embeddings "
                            f"({', '.join(before)}) that hf_transfer cannot resample; use the model's native size")
    patch_embeddings = embeddings.patch_embeddings
    patch = patch_embeddings.patch_size[0] if isinstance(patch_embeddings.patch_size, (tuple, list)) else patch_embeddings.patch_size
    if image_size % patch:
        raise TransferError(f"--image_size {image_size} is not a multiple of the patch size {patch}; use e.g. {image_size // patch * patch}")
    old = embeddings.position_embeddings
    if tuple(patch_embeddings.image_size) == (image_size, image_size):
        return f"{image_size} px: the native size, position embeddings unchanged"
    grid = image_size // patch
    probe = torch.zeros(1, grid * grid + 1, old.shape[-1], dtype=old.dtype)
    with torch.no_grad():
        resampled = embeddings.interpolate_pos_encoding(probe, image_size, image_size).detach().clone()
    embeddings.position_embeddings = torch.nn.Parameter(resampled, requires_grad=old.requires_grad)
    patch_embeddings.image_size = (image_size, image_size)
    patch_embeddings.num_patches = grid * grid
    embeddings.image_size = (image_size, image_size)
    model.config.image_size = image_size
    return (f"{image_size} px: position embeddings resampled from grid {_grid(old.shape[1], 1)} to {grid}x{grid} "
            f"({old.numel()} -> {resampled.numel()} values); other weights unchanged")


def total_stride(model) -> int | None:
    """How many input pixels one cell of the last feature map covers (timm's ``feature_info`` reduction, or the
    transformers config's patch size); None when the model does not say."""
    if is_timm_wrapper(model):
        info = getattr(model.timm_model, "feature_info", None)
        if info:
            last = info[-1] if isinstance(info, list) else None
            reduction = last.get("reduction") if isinstance(last, dict) else None
            return int(reduction) if reduction else None
        return None
    patch = getattr(model.config, "patch_size", None)
    if isinstance(patch, (list, tuple)):
        patch = patch[0]
    return int(patch) if patch else None


def check_input_size(model, image_size: int) -> None:
    """Refuse an input size the network cannot take: below its total stride (the last feature map would be
    smaller than one cell, so padding is all the network sees), or one its forward rejects."""
    stride = total_stride(model)
    if stride and image_size < stride:
        raise TransferError(f"--image_size {image_size} is below the backbone's total stride {stride}: its last feature "
                            f"map would be under one cell and the model would train on padding; use at least {stride} "
                            f"(e.g. {max(stride, 2 * stride)})")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(pixel_values=torch.zeros(1, 3, image_size, image_size))
    except Exception as err:  # noqa: BLE001 - any failure here means this size cannot train
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise TransferError(f"--image_size {image_size}: the backbone cannot take {image_size} px inputs "
                            f"({type(err).__name__}: {first_line}); use its native size or another --image_size") from None
    finally:
        model.train(was_training)
