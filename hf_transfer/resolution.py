"""Changing a backbone's input resolution, and refusing sizes the network cannot take.

What a size change does depends on the family (resampled position embeddings, ``set_input_size``, nothing for
global pooling, or a refusal): the backbone adapter does it and reports it; this module adds the checks that hold
for every backbone.
"""

from __future__ import annotations

from .backbones import adapter_for
from .errors import TransferError


def change_input_size(model, image_size: int | None) -> str:
    """Make ``model`` accept ``image_size`` inputs (in place) and return one line saying what changed."""
    if not image_size:
        return "input size unchanged"
    return adapter_for(model).change_input_size(int(image_size))


def total_stride(model) -> int | None:
    """How many input pixels one cell of the last feature map covers; None when the model does not say."""
    return adapter_for(model).total_stride()


def check_input_size(model, image_size: int, *, forward: bool = True) -> None:
    """Refuse an input size the network cannot take: below its total stride (the last feature map would be
    smaller than one cell, so padding is all the network sees), or, with ``forward``, one its forward rejects (the
    adapter's own check, which every size change already runs)."""
    stride = total_stride(model)
    if stride and image_size < stride:
        raise TransferError(f"--image_size {image_size} is below the backbone's total stride {stride}: its last feature "
                            f"map would be under one cell and the model would train on padding; use at least {stride} "
                            f"(e.g. {max(stride, 2 * stride)})")
    if forward:
        adapter_for(model).check_forward(image_size)
