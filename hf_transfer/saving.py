"""Writing output folders that other HF scripts can load, all or nothing.

A run writes its final files into a hidden staging folder and moves them into ``output_dir`` only once all of
them exist, ``all_results.json`` last: a run that dies half-way never leaves a folder that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import TransferError


def mark_default_output_dir(args) -> None:
    """No --output_dir given: flag it, so the recipe names one after the model and dataset (`default_output_dir`)."""
    args.output_dir_was_defaulted = args.output_dir is None
    if args.output_dir is None:
        args.output_dir = "outputs/default"


def default_output_dir(recipe: str, model_name: str, data_source: str) -> str:
    def slug(text: str) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in text.rstrip("/").split("/")[-1].split(":")[-1])

    return f"outputs/{recipe}-{slug(model_name)}-{slug(data_source)}"


def resolve_output_dir(args, recipe: str, model_args, data_args) -> str:
    """Name the output folder after the model and data when none was given (before anything is loaded)."""
    if getattr(args, "output_dir_was_defaulted", False):
        args.output_dir = default_output_dir(recipe, model_args.model_name_or_path, data_args.source_name)
        args.output_dir_was_defaulted = False
    return args.output_dir


def image_processor_for(model, image_size: int | None = None):
    """The image processor to save next to a model (pipeline / AutoImageProcessor need it to preprocess); None when
    the model's config.json carries its preprocessing (timm). The backbone adapter knows which."""
    from .backbones import adapter_for

    return adapter_for(model).image_processor(image_size)


COMPLETION_MARKER = "all_results.json"
# What a finished or interrupted run leaves in its output folder (hf_transfer's own files and Trainer's).
RUN_FILES = (COMPLETION_MARKER, "config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
             "preprocessor_config.json", "transfer_plan.json", "train_results.json", "eval_results.json",
             "test_results.json", "trainer_state.json", "training_args.bin", "training_args.json", "training_curves.png",
             "confusion_matrix.png", "bad_images.json", "probe_table.txt", "probe_accuracy_per_depth.png",
             "cv_results.json", "cv_results.md", "cv_results.png")
CHECKPOINT_PATTERN = "checkpoint-*"


def write_json(path: str | os.PathLike, payload: dict) -> None:
    """Write JSON atomically (temp file + rename): a reader sees the old file or the whole new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def previous_run_files(output_dir: str | os.PathLike) -> list[Path]:
    """Files and checkpoints of an earlier run in ``output_dir`` (empty when there is none)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [folder / name for name in RUN_FILES if (folder / name).exists()]
    return found + sorted(p for p in folder.glob(CHECKPOINT_PATTERN) if p.is_dir())


def prepare_output_dir(output_dir: str | os.PathLike, *, overwrite: bool = False, resuming: bool = False,
                       resumable: bool = True) -> None:
    """Refuse to mix runs in one folder; clear the earlier run with ``overwrite``; drop the completion marker.

    A second run into a finished folder would overwrite its model and leave the first run's ``checkpoint-*``
    beside the new one, where "resume the latest checkpoint" picks the wrong run. Resuming keeps the checkpoints.
    The completion marker goes first, so a run that dies from here on never leaves a folder that looks complete.
    """
    folder = Path(output_dir)
    earlier = previous_run_files(folder)
    if earlier and not overwrite and not resuming:
        names = ", ".join(p.name for p in earlier[:4]) + (f" and {len(earlier) - 4} more" if len(earlier) > 4 else "")
        resume = ", --resume_from_checkpoint True to continue it" if resumable else ""
        raise TransferError(f"output folder {str(folder)!r} holds a previous run ({names}); pass --overwrite_output_dir "
                            f"to replace it{resume}, or choose another --output_dir")
    (folder / COMPLETION_MARKER).unlink(missing_ok=True)
    if overwrite and not resuming:
        for path in earlier:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


@contextmanager
def staged_output(output_dir: str | os.PathLike, last: tuple[str, ...] = (COMPLETION_MARKER,)):
    """Yield a staging folder; on success move its files into ``output_dir`` (``last`` ones last).

    The staging folder is private to this call (concurrent runs never share one), and the ``last`` files already in
    ``output_dir`` are removed before anything moves in, so a crash half-way leaves no stale completion marker.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=output_dir))
    try:
        yield staging
        for name in last:
            (output_dir / name).unlink(missing_ok=True)
        entries = sorted(staging.iterdir(), key=lambda p: p.name in last)
        for entry in entries:
            target = output_dir / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


TIMM_WRAPPER_PREFIX = "timm_model."


def save_model_folder(model, folder: str | os.PathLike, image_size: int | None = None, timm_layout: bool = False) -> None:
    """`save_pretrained` (safetensors) plus the image processor, so `pipeline(model=folder)` works offline.

    ``timm_layout``: a TimmWrapper model's weights are written under timm's own names (no ``timm_model.`` prefix),
    as timm Hub checkpoints are, so ``timm.create_model("local-dir:<folder>", pretrained=True)`` loads the folder too;
    transformers adds the prefix back on load. (A wrapper built in memory, not by from_pretrained, would otherwise
    keep the prefix.)
    """
    from .backbones import adapter_for

    state_dict = adapter_for(model).native_state_dict() if timm_layout else None
    model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
    processor = image_processor_for(model, image_size)
    if processor is not None:
        processor.save_pretrained(folder)
