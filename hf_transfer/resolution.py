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
    check_memory(model, image_size)
    if forward:
        adapter_for(model).check_forward(image_size)


def activation_bytes(model, image_size: int) -> int | None:
    """About how many bytes of activations one image at ``image_size`` makes: the outputs of every leaf module in one
    forward at the native size, scaled by the pixel count (a lower bound for attention, whose cost grows faster).
    None when the model cannot run its native size."""
    import torch

    adapter = adapter_for(model)
    native = int(adapter.data_config()["input_size"][-1])
    total = [0]

    def count(module, args, output):
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                total[0] += t.numel() * t.element_size()

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            adapter.run(torch.zeros(1, 3, native, native))
    except Exception:  # noqa: BLE001 - no estimate; the forward check will speak
        return None
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return int(total[0] * (image_size / native) ** 2)


def check_memory(model, image_size: int) -> None:
    """Refuse a size at which a single image's activations would not fit this machine's free memory (--image_size
    10000 ran for minutes before): before any forward runs at that size."""
    import psutil

    needed = activation_bytes(model, image_size)
    available = psutil.virtual_memory().available
    if needed is not None and needed > available:
        raise TransferError(f"--image_size {image_size} needs about {needed / 2**30:.0f} GiB of activations for a single "
                            f"image, more than the {available / 2**30:.0f} GiB free here; use a smaller --image_size "
                            f"(the model's native size is {adapter_for(model).data_config()['input_size'][-1]} px)")
