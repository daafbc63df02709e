"""Writing output folders that other HF scripts can load, all or nothing.

A run writes its final files into a hidden staging folder and moves them into ``output_dir`` only once all of
them exist, ``all_results.json`` last: a run that dies half-way never leaves a folder that looks complete.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import ON_RECIPE_EXIT, TransferError


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
# The files that hold a model's weights (one file, a sharded index, the legacy pickle); a LoRA checkpoint's adapter.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
ADAPTER_WEIGHT_FILE = "adapter_model.safetensors"
# What a finished or interrupted run leaves in its output folder (hf_transfer's own files and Trainer's).
RUN_FILES = (COMPLETION_MARKER, "config.json", *WEIGHT_FILES, "preprocessor_config.json", "transfer_plan.json", "train_results.json", "eval_results.json",
             "test_results.json", "trainer_state.json", "training_args.bin", "training_args.json", "training_curves.png",
             "confusion_matrix.png", "bad_images.json", "probe_table.txt", "probe_accuracy_per_depth.png",
             "cv_results.json", "cv_results.md", "cv_results.png", "adapter")
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
    lock_output_dir(folder)  # one writer per folder, and a folder that cannot be written fails here, not at the save
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


_HELD_LOCKS: dict[Path, tuple[int, bool]] = {}  # folder -> (its open descriptor, whether this run created it)


def lock_output_dir(output_dir: str | os.PathLike) -> None:
    """Hold ``output_dir`` for the rest of the run: a second run into the same folder is refused in one line naming
    the first (two writers would replace each other's model, both saying "model written").

    The lock is an ``flock`` on the folder itself, so the operating system releases it when the run ends in any way
    (a killed run leaves no stale lock) and nothing is added to the folder; who holds it is recorded in the temporary
    directory (`_holder_file`). A probe file written and removed here checks that the folder can be written, before
    anything is loaded or trained. Released by `release_output_locks` (at exit, and when a recipe ends) or when this
    process locks the same folder again.
    """
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise TransferError(f"--output_dir {str(folder)!r} is a file, not a folder; choose another --output_dir")
    key = folder.resolve()
    if key in _HELD_LOCKS:  # this process again (a library user running twice): the earlier run is over
        _release(key)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise TransferError(f"output folder {str(folder)!r} is being written by another run ({_read_holder(key)}); "
                                "wait for it to finish or choose another --output_dir") from None
        except OSError as err:  # a file system without flock (some network / FUSE mounts): run unlocked, and say so
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                raise
            from .runtime import say

            say(f"output folder {folder}: the file system does not support locks; nothing stops a second run from "
                "writing into it at the same time")
        _HELD_LOCKS[key] = (fd, created)
        probe = folder / f".write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except TransferError:
        raise
    except OSError as err:
        if key in _HELD_LOCKS:
            _release(key)
        raise TransferError(f"output folder {str(folder)!r} cannot be written ({err.strerror or err}); fix its "
                            "permissions or choose another --output_dir") from None
    try:
        holder = _holder_file(key)
        holder.parent.mkdir(exist_ok=True)
        write_json(holder, {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "command": " ".join(sys.argv)[:300]})
    except OSError:
        pass  # the lock holds without the note; a refused run then says "holder unknown"


def _holder_file(key: Path) -> Path:
    return Path(tempfile.gettempdir()) / "hf_transfer-locks" / (hashlib.sha1(str(key).encode()).hexdigest() + ".json")


def _read_holder(key: Path) -> str:
    try:
        info = json.loads(_holder_file(key).read_text())
    except (OSError, ValueError):
        return "holder unknown"
    return f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}: {info.get('command', '')}"


def _release(key: Path) -> None:
    fd, created = _HELD_LOCKS.pop(key)
    try:
        _holder_file(key).unlink(missing_ok=True)
        if created and key.is_dir() and not any(key.iterdir()):
            key.rmdir()  # a run that failed before writing anything leaves no empty folder behind
    except OSError:
        pass
    finally:
        os.close(fd)


def release_output_locks() -> None:
    """Let go of every output folder this process holds (the run is over)."""
    for key in list(_HELD_LOCKS):
        _release(key)


atexit.register(release_output_locks)
ON_RECIPE_EXIT.append(release_output_locks)


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


def save_model_folder(model, folder: str | os.PathLike, image_size: int | None = None, timm_layout: bool = False,
                      state_dict: dict | None = None) -> None:
    """`save_pretrained` (safetensors) plus the image processor, so `pipeline(model=folder)` works offline.

    ``timm_layout``: a TimmWrapper model's weights are written under timm's own names (without the wrapper's prefix),
    as timm Hub checkpoints are, so ``timm.create_model("local-dir:<folder>", pretrained=True)`` loads the folder too;
    transformers adds the prefix back on load. (A wrapper built in memory, not by from_pretrained, would otherwise
    keep the prefix.) ``state_dict``: the weights to write instead of the model's own (gathered from an engine that
    shards them, see `trained_weights`).
    """
    from .backbones import adapter_for

    if timm_layout:
        state_dict = adapter_for(model).native_state_dict(state_dict)
    saved_dtype = next((t.dtype for t in (state_dict or {}).values() if t.is_floating_point()), None)
    model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)  # (it may empty state_dict)
    if saved_dtype is not None and saved_dtype != model.dtype:
        _record_weights_dtype(folder, saved_dtype)
    processor = image_processor_for(model, image_size)
    if processor is not None:
        processor.save_pretrained(folder)


def trained_weights(trainer):
    """The trained model (unwrapped) and its full weights, on every process, for `save_model_folder`.

    Under DeepSpeed ZeRO-3 and FSDP each process holds a shard: ``trainer.model`` would save partitioned (empty)
    weights, so the weights are gathered with accelerate, as `Trainer.save_model` does (a collective call: every
    process must make it; the main process gets them all). DeepSpeed keeps 16-bit copies under bf16/fp16: they go
    back to the dtype the model had before training, and what the plan never trains gets its exact values back (a
    16-bit copy would round frozen pretrained weights), so the folder is the same whatever the engine. One process
    and DDP: ``(model, None)``, the model's own weights as they are.
    """
    from .engines import gathers_weights

    model = trainer.accelerator.unwrap_model(trainer.model)
    if not gathers_weights(trainer):
        return model, None
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    masters = deepspeed_fp32_masters(trainer, model)  # collective too: every process gathers, the main one keeps
    if state_dict:  # the main process: frozen weights exactly as they were, not DeepSpeed's 16-bit copies
        state_dict.update({k: v for k, v in masters.items() if k in state_dict})
        state_dict.update({k: v for k, v in getattr(trainer, "untrained_weights", {}).items() if k in state_dict})
    return model, with_dtype(state_dict, getattr(trainer, "weights_dtype", None))


def deepspeed_fp32_masters(trainer, model) -> dict:
    """The float32 master weights DeepSpeed's optimizer holds, by parameter name (empty when it keeps none).

    Under bf16 / fp16 the module holds 16-bit copies, and `get_state_dict` returns those: saving them would round
    every trained weight to 8 bits of mantissa. ZeRO partitions the masters across processes; DeepSpeed's
    `safe_get_full_fp32_param` gathers one (a collective call: every process makes it, for every parameter, in the
    same order). Parameters outside the optimizer (frozen) have no master and keep their 16-bit copy here; the
    plan's untrained weights restore those exactly."""
    import torch

    if not getattr(trainer, "is_deepspeed_enabled", False) or not hasattr(getattr(trainer, "model_wrapped", None),
                                                                         "zero_optimization_stage"):
        return {}  # no DeepSpeed engine wraps the model, so no optimizer holds masters
    if not any(p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters()):
        return {}  # fp32 training: the module's weights are the masters
    from deepspeed.utils import safe_get_full_fp32_param

    masters = {}
    for name, param in model.named_parameters():
        full = safe_get_full_fp32_param(param) if param.requires_grad else None
        if full is not None:
            masters[name] = full.detach().cpu().reshape(getattr(param, "ds_shape", param.shape))
    return masters


def with_dtype(state_dict: dict | None, dtype) -> dict | None:
    """Floating-point tensors in ``dtype`` (None: unchanged), on the CPU, contiguous (safetensors needs that)."""
    if state_dict is None:
        return None
    return {name: (t.to(dtype) if dtype is not None and t.is_floating_point() else t).detach().cpu().contiguous()
            for name, t in state_dict.items()}


def _record_weights_dtype(folder, dtype) -> None:
    """save_pretrained writes the in-memory model's dtype into config.json (DeepSpeed: 16-bit), and transformers
    loads in that dtype: write the dtype of the weights actually saved."""
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text())
    config["dtype"] = str(dtype).removeprefix("torch.")
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
