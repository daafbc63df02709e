"""Writing output folders that other HF scripts can load, all or nothing.

A run writes its final files into a hidden staging folder and moves them into ``output_dir`` only once all of
them exist, ``all_results.json`` last: a run that dies half-way never leaves a folder that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path


def image_processor_for(model, image_size: int | None = None):
    """The image processor to save next to a model (pipeline / AutoImageProcessor need it to preprocess).

    timm models keep theirs in config.json (pretrained_cfg). A transformers model gets its own processor resized
    to the training resolution, or, when its checkpoint shipped none, a plain resize-and-normalize one built from
    the data config the model was trained with.
    """
    from .backbones import data_config, is_timm_wrapper

    if is_timm_wrapper(model):
        return None
    processor = getattr(model, "_hf_transfer_image_processor", None)
    cfg = data_config(model)
    size = int(image_size or cfg["input_size"][-1])
    if processor is None:
        from transformers import ViTImageProcessor

        return ViTImageProcessor(do_resize=True, size={"height": size, "width": size}, image_mean=list(cfg["mean"]),
                                 image_std=list(cfg["std"]))
    if "height" in (getattr(processor, "size", None) or {}):
        processor.size = {"height": size, "width": size}
    elif "shortest_edge" in (getattr(processor, "size", None) or {}):
        processor.size = {"shortest_edge": int(size / (cfg.get("crop_pct") or 1.0))}
    if getattr(processor, "crop_size", None):
        processor.crop_size = {"height": size, "width": size}
    return processor


def write_json(path: str | os.PathLike, payload: dict) -> None:
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def staged_output(output_dir: str | os.PathLike, last: tuple[str, ...] = ("all_results.json",)):
    """Yield a staging folder; on success move its files into ``output_dir`` (``last`` ones last)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = output_dir / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        entries = sorted(staging.iterdir(), key=lambda p: p.name in last)
        for entry in entries:
            target = output_dir / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_model_folder(model, folder: str | os.PathLike, image_size: int | None = None) -> None:
    """`save_pretrained` (safetensors) plus the image processor, so `pipeline(model=folder)` works offline."""
    model.save_pretrained(folder, safe_serialization=True)
    processor = image_processor_for(model, image_size)
    if processor is not None:
        processor.save_pretrained(folder)
