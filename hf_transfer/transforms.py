"""Preprocessing from the backbone's own data config, and training augmentation presets.

Presets, gentlest first (pick by what a label depends on):

* ``auto`` (default): ``none`` for runs under 3 epochs, ``gentle`` from 3 on. Augmentation pays off once the model
  sees each image several times; in a single epoch it only slows convergence (Lite0 on MNIST-5k, one epoch:
  0.964 with ``gentle`` against 0.984 with ``none``).
* ``none``: the eval transform.
* ``flip``: horizontal flips only.
* ``gentle``: small translations (10 %), rotations (10°) and scaling; no flips, no cropping away of the
  object. Safe for digits, text, inspection and medical images, where orientation or framing carries meaning.
* ``standard``: ``gentle`` plus horizontal flips: natural photos.
* ``strong``: ImageNet-style random-resized-crop (scale 0.08-1) plus flips; large, natural-image datasets only:
  on small or centred-object data it cuts out the object and train crops stop matching test images.
"""

from __future__ import annotations

import io
import math
from typing import Callable

import torch
from torchvision.transforms import v2

from .errors import TransferError

AUGMENTATION_PRESETS = ("none", "flip", "gentle", "standard", "strong")
_INTERPOLATION = {
    "bicubic": v2.InterpolationMode.BICUBIC,
    "bilinear": v2.InterpolationMode.BILINEAR,
    "nearest": v2.InterpolationMode.NEAREST,
}


HIGH_DEPTH_MODES = ("I", "F")  # plus every "I;16*" variant


def is_high_depth(mode: str) -> bool:
    """16-bit, 32-bit integer or float greyscale: ``convert("RGB")`` clips these to 0..255."""
    return mode in HIGH_DEPTH_MODES or mode.startswith("I;16")


def clipped_by_rgb(image) -> str | None:
    """Why ``convert("RGB")`` would wash a high-depth image out (None when it keeps every value), e.g. a 12-bit
    sensor in a 16-bit PNG: values up to 4095 clip to white. The data check refuses such images (issue #18's
    parity: training must see what `pipeline()` will)."""
    if not is_high_depth(image.mode):
        return None
    low, high = image.getextrema()
    if image.mode == "F" and high <= 1.0 and high > low:
        return f"float image with values in 0..{high:g}, which convert('RGB') turns black"
    if low < 0 or high > 255:
        return f"{image.mode} image with values {low:g}..{high:g}, which convert('RGB') clips to 0..255"
    return None


EXIF_ORIENTATION = 0x0112


def upright(image):
    """The image as it is meant to be seen: EXIF orientation applied (phone photos store it as a tag), as
    transformers' ``load_image``, ``pipeline()`` and ``datasets`` do; without it training and serving would see
    different pixels. An image without the tag (or with an unreadable EXIF block) is returned as it is."""
    from PIL import ImageOps

    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block: the pixels are all there is
        return image
    return image if orientation in (1, None) else ImageOps.exif_transpose(image)


def _to_rgb(image):
    """Any image -> RGB, upright (`upright`), exactly as transformers' ``load_image`` (hence ``pipeline()``), timm's
    and torchvision's loaders make it: ``convert("RGB")``. A model must train on the pixels it will be served:
    alpha is dropped (the colour under transparent pixels stays), palettes are expanded, greyscale is repeated.
    High-depth images whose values ``convert("RGB")`` would clip are refused by the data check
    (`clipped_by_rgb`), not rescaled here, since serving would clip them anyway.
    """
    image = upright(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def resolve_augmentation(preset: str, num_train_epochs: float) -> str:
    """``auto`` -> a concrete preset for a run of ``num_train_epochs``; other presets pass through (validated)."""
    if preset == "auto":
        return "none" if num_train_epochs < 3 else "gentle"
    if preset not in AUGMENTATION_PRESETS:
        raise TransferError(f"unknown augmentation preset {preset!r}; choose auto or one of {', '.join(AUGMENTATION_PRESETS)}")
    return preset


def build_transform(data_cfg: dict, *, image_size: int | None = None, augmentation: str = "none") -> Callable:
    """PIL image -> normalized float tensor (3, S, S), S = ``image_size`` or the backbone's input size."""
    if augmentation not in AUGMENTATION_PRESETS:
        raise TransferError(f"unknown augmentation preset {augmentation!r}; choose one of {', '.join(AUGMENTATION_PRESETS)}")
    size = int(image_size or data_cfg["input_size"][-1])
    interpolation = _INTERPOLATION.get(data_cfg.get("interpolation", "bilinear"), v2.InterpolationMode.BILINEAR)
    crop_pct = float(data_cfg.get("crop_pct") or 1.0)
    resize = math.floor(size / crop_pct)  # as timm and TimmWrapperImageProcessor do
    head = [v2.Lambda(_to_rgb), v2.PILToTensor()]
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(data_cfg["mean"]), std=list(data_cfg["std"]))]
    if augmentation == "strong":
        body = [v2.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=interpolation, antialias=True), v2.RandomHorizontalFlip()]
        return v2.Compose(head + body + tail)
    # crop_mode "squash" (transformers processors that resize to height x width) stretches to a square, as the saved
    # processor will at serving time; "center" keeps the aspect ratio and crops, as timm does.
    squash = data_cfg.get("crop_mode") == "squash"
    body = [v2.Resize((resize, resize) if squash else resize, interpolation=interpolation, antialias=True),
            v2.CenterCrop(size)]
    if augmentation in ("gentle", "standard"):
        body.append(v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), interpolation=v2.InterpolationMode.BILINEAR))
    if augmentation in ("flip", "standard"):
        body.append(v2.RandomHorizontalFlip())
    return v2.Compose(head + body + tail)


def decode_image(value):
    """A `datasets.Image(decode=False)` cell (or a PIL image) -> PIL image; a corrupt file is a one-line error."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, Image.Image):
        return upright(value)
    where = value.get("path") or "<in-memory image>"
    try:
        if value.get("bytes") is not None:
            image = Image.open(io.BytesIO(value["bytes"]))
        else:
            image = Image.open(value["path"])
        image.load()
        return upright(image)
    except Image.DecompressionBombError as err:
        raise TransferError(f"image {where!r} is over PIL's size limit ({err}); raise --max_image_pixels or "
                            "downscale the file") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise TransferError(f"corrupt or unreadable image {where!r} ({err}); remove or replace the file") from None


def batch_transform(transform: Callable, image_column: str, label_column: str | None) -> Callable:
    """A `datasets.Dataset.with_transform` function giving ``pixel_values`` (and ``labels``).

    Works on undecoded image cells (`Image(decode=False)`), so that a corrupt file names itself.
    """

    def apply(batch):
        out = {"pixel_values": [transform(decode_image(value)) for value in batch[image_column]]}
        if label_column is not None and label_column in batch:
            out["labels"] = batch[label_column]
        return out

    apply.hf_transfer_transform = transform  # lets the feature cache fingerprint what this split's pixels went through
    return apply


def with_transforms(splits, data, data_cfg: dict, *, image_size: int | None, augmentation: str):
    """Attach training augmentation to ``train`` and the eval transform to the other splits (lazily)."""
    from datasets import Image

    out = {}
    for name, split in splits.items():
        preset = augmentation if name == "train" else "none"
        transform = build_transform(data_cfg, image_size=image_size, augmentation=preset)
        split = split.cast_column(data.image_column, Image(decode=False))
        apply = batch_transform(transform, data.image_column, data.label_column)
        if hasattr(split, "with_transform"):
            out[name] = split.with_transform(apply)
        else:  # a streamed split (`datasets.IterableDataset`, --streaming): transformed as it is read, a few rows
            # at a time (map's default of 1,000 would hold ~600 MB of float pixels per loader worker at 224 px)
            out[name] = split.map(apply, batched=True, batch_size=16, remove_columns=list(split.column_names or ()))
    return out
