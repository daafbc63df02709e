"""Resume: which checkpoint folders are complete, the latest one, and whether one resumes into this run.

Trainer writes the weights, optimizer and RNG state, then trainer_state.json; `TransferPlanCallback.on_save` adds
transfer_plan.json last. A checkpoint counts as complete only with all of them, and resumes only into the same plan,
labels and input size: anything else would train a different model than the flags say.
"""

from __future__ import annotations

import json
import os
import re

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .backbones.saved_folder import saved_input_size
from .errors import TransferError
from .plan import PLAN_FILE, TransferPlan
from .runtime import say
from .saving import ADAPTER_WEIGHT_FILE, WEIGHT_FILES

RESUME_LATEST = ("true", "auto", "latest")


def resolve_resume(flag: str | bool | None, output_dir: str) -> str | None:
    """--resume_from_checkpoint: True/auto -> the latest complete checkpoint of ``output_dir`` (None: start fresh,
    with a note); a path must be a complete checkpoint, checked before anything is loaded."""
    if flag is None or flag is False or str(flag).strip().lower() in ("", "false", "no", "none"):
        return None
    if flag is True or str(flag).strip().lower() in RESUME_LATEST:
        found = latest_checkpoint(output_dir)
        if found is None:
            say(f"--resume_from_checkpoint {flag}: no complete checkpoint in {output_dir}; training from the start")
        return found
    problem = checkpoint_problem(str(flag))
    if problem:
        raise TransferError(f"--resume_from_checkpoint {flag!r} is not a checkpoint ({problem}); pass a checkpoint-N "
                            "folder, or True for the latest complete one in --output_dir")
    return str(flag)


def checkpoint_problem(folder: str) -> str | None:
    """Why ``folder`` is not a complete TransferTrainer checkpoint (None when it is).

    Trainer writes the weights, optimizer and RNG state, then trainer_state.json; TransferTrainer adds
    transfer_plan.json last (on_save). A run killed while saving leaves a checkpoint without them.
    """
    if not os.path.isdir(folder):
        return "no such folder"
    present = set(os.listdir(folder))
    if not present & {*WEIGHT_FILES, ADAPTER_WEIGHT_FILE}:
        return "no model weights"
    for required in ("trainer_state.json", PLAN_FILE):
        if required not in present:
            return f"no {required} (a save that did not finish)"
    return None


def latest_checkpoint(output_dir: str) -> str | None:
    """The newest complete ``checkpoint-N`` in ``output_dir`` (half-written ones, e.g. from a killed run, skipped)."""
    if not os.path.isdir(output_dir):
        return None
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    numbered = sorted(((int(m.group(1)), name) for name in os.listdir(output_dir) if (m := pattern.match(name))), reverse=True)
    for _, name in numbered:
        folder = os.path.join(output_dir, name)
        if checkpoint_problem(folder) is None:
            return folder
        say(f"skipping incomplete checkpoint {folder} ({checkpoint_problem(folder)})")
    return None


def check_resumable(folder: str, plan: TransferPlan, model) -> None:
    """A checkpoint resumes only into the same plan, labels and input size: anything else trains a different model."""
    problem = checkpoint_problem(folder)
    if problem:
        raise TransferError(f"cannot resume from {folder!r}: {problem}; pass another checkpoint, "
                            "--resume_from_checkpoint True for the latest complete one, or start afresh")
    diffs = plan.differences(TransferPlan.load(folder))
    config_file = os.path.join(folder, "config.json")
    if os.path.isfile(config_file):
        with open(config_file) as handle:
            saved = json.load(handle)
        mine = model.config.to_dict()
        for key, what in (("id2label", "labels"), ("label_names", "labels"), ("image_size", "image size")):
            if key in saved and key in mine and _normalized(saved[key]) != _normalized(mine[key]):
                diffs.append(f"{what}: {_short(saved[key])} -> {_short(mine[key])}")
        saved_size, my_size = saved_input_size(saved), saved_input_size(mine)
        if saved_size and my_size and list(saved_size) != list(my_size):
            diffs.append(f"input size: {saved_size[-1]} px -> {my_size[-1]} px")
    if diffs:
        raise TransferError(f"the checkpoint {folder!r} was trained differently ({'; '.join(diffs)}); resume with the "
                            "same data, flags and --image_size, or start a new --output_dir")


def _normalized(value):
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return value


def _short(value, limit: int = 60) -> str:
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
    text = ", ".join(map(str, items))
    return text if len(text) <= limit else text[:limit] + "…"


def checkpoint_to_resume(flag, output_dir: str, plan: TransferPlan, model) -> str | None:
    """`Trainer.train(resume_from_checkpoint=...)` for a transfer run: True / auto / latest -> the newest complete
    checkpoint (None, with a note, when there is none); the folder is checked against this plan and model."""
    if not flag:
        return None
    if isinstance(flag, bool) or str(flag).lower() in RESUME_LATEST:
        flag = latest_checkpoint(output_dir)
        if flag is None:
            say(f"no complete checkpoint in {output_dir}: training from the start")
    if flag:
        check_resumable(flag, plan, model)
        say(f"resuming from {flag}")
    return flag or None
