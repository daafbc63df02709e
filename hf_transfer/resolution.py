"""Changing a backbone's input resolution, and refusing sizes the network cannot take.

What a size change does depends on the family (resampled position embeddings, ``set_input_size``, nothing for
global pooling, or a refusal): the backbone adapter does it and reports it; this module adds the checks that hold
for every backbone.
"""

from __future__ import annotations

import torch

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
            adapter_for(model).run(torch.zeros(1, 3, image_size, image_size))
    except Exception as err:  # noqa: BLE001 - any failure here means this size cannot train
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise TransferError(f"--image_size {image_size}: the backbone cannot take {image_size} px inputs "
                            f"({type(err).__name__}: {first_line}); use its native size or another --image_size") from None
    finally:
        model.train(was_training)
