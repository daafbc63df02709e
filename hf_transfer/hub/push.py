"""Pushing an output folder: check that it is complete and reloads, then upload it with ``HfApi`` (or list what
would be uploaded with ``dry_run``); and hf_transfer's own ``--push_to_hub`` at the end of a run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..backbones import saved_folder
from ..errors import TransferError
from ..runtime import say
from ..saving import CHECKPOINT_PATTERN, COMPLETION_MARKER, WEIGHT_FILES
from .card import CARD_FILE, write_model_card
from .folder import _read_json, is_checkpoint, label_names

# Never uploaded: staging folders of a run in progress, temp files, anything hidden.
UPLOAD_IGNORE = [".staging*", ".*", "*/.*", "__pycache__", "*/__pycache__/*"]


def upload_ignore_patterns(include_checkpoints: bool = False) -> list[str]:
    return ([] if include_checkpoints else [CHECKPOINT_PATTERN, f"{CHECKPOINT_PATTERN}/*"]) + list(UPLOAD_IGNORE)


def files_to_upload(folder, include_checkpoints: bool = False) -> list[tuple[str, int]]:
    """(path in repo, size in bytes) of every file ``upload_folder`` sends with our ignore patterns (same filter)."""
    from huggingface_hub.utils import filter_repo_objects
    from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

    folder = Path(folder).expanduser().resolve()
    paths = {p.relative_to(folder).as_posix(): p for p in sorted(folder.glob("**/*")) if p.is_file()}
    kept = filter_repo_objects(paths, ignore_patterns=upload_ignore_patterns(include_checkpoints) + DEFAULT_IGNORE_PATTERNS)
    return [(name, paths[name].stat().st_size) for name in kept]


def check_folder(folder) -> list[str]:
    """Refuse (one line) a folder that is not a finished run or a checkpoint; returns notes on what was fixed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TransferError(f"{str(folder)!r} is not a folder; pass an hf_transfer output folder or one checkpoint-N in it")
    notes = []
    if not (folder / COMPLETION_MARKER).is_file() and not is_checkpoint(folder):
        raise TransferError(f"{str(folder)!r} has no {COMPLETION_MARKER}: the run did not finish; let it finish (or resume "
                            "it with --resume_from_checkpoint True), or push one checkpoint-N folder")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise TransferError(f"{str(folder)!r} has no weights ({', '.join(WEIGHT_FILES)}); pass a folder the run saved "
                            "the model into")
    config = _read_json(folder / "config.json")
    if config is None:
        raise TransferError(f"{str(folder)!r} has no config.json; pass a folder written by save_pretrained")
    labels = label_names(config)
    if not labels or all(re.fullmatch(r"LABEL_\d+", name) for name in labels):
        raise TransferError(f"config.json in {str(folder)!r} has no class names (only {labels[:2] or 'nothing'}); train "
                            "with hf_transfer or set id2label before saving")
    if not (folder / CARD_FILE).is_file():
        write_model_card(folder)
        notes.append(f"wrote the missing model card {CARD_FILE}")
    check_reload(folder, len(labels))
    return notes


def check_reload(folder, num_labels: int) -> None:
    """Load the folder the way users will (Auto classes, its own preprocessing) and classify one blank image."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    try:
        processor = AutoImageProcessor.from_pretrained(folder)
    except Exception as err:  # noqa: BLE001 - any failure means users cannot preprocess: report it in one line
        raise TransferError(f"{str(folder)!r} has no loadable preprocessing ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:160] if str(err) else ''}); {saved_folder.NO_PREPROCESSING_FIX}") from None
    try:
        model = AutoModelForImageClassification.from_pretrained(folder).eval()
        with torch.no_grad():
            logits = model(**processor(Image.new("RGB", (64, 64)), return_tensors="pt")).logits
    except Exception as err:  # noqa: BLE001
        raise TransferError(f"{str(folder)!r} does not reload with AutoModelForImageClassification ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:160] if str(err) else ''}); re-save it with save_pretrained") from None
    if logits.shape[-1] != num_labels:
        raise TransferError(f"{str(folder)!r} gives {logits.shape[-1]} logits for {num_labels} class names; the head and "
                            "config.json disagree: re-save the model")


def hub_unreachable_reason(token: str | None = None) -> str | None:
    """Why a push cannot work from here (offline mode, no token), or None. Never reveals the token."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if not (token or get_token()):
        return "no Hugging Face token (log in with `hf auth login` or set HF_TOKEN)"
    return None


@dataclass
class PushResult:
    repo_id: str
    revision: str
    files: list[tuple[str, int]]
    notes: list[str]
    url: str | None = None  # None for a dry run


def push_folder(folder, repo_id: str, *, private: bool = False, revision: str | None = None,
                commit_message: str | None = None, include_checkpoints: bool = False, dry_run: bool = False,
                token: str | None = None, api=None) -> PushResult:
    """Check ``folder`` (complete, reloads, card present), then upload it to the Hub model repo ``repo_id``.

    ``dry_run`` runs every check and lists the files without touching the network. ``api``: an `HfApi` (default
    ``HfApi(token=token)``; tests pass a recorder). Errors are `TransferError` with one line.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise TransferError(f"--repo_id {repo_id!r} is not a Hub repository id; use user/name or org/name") from None
    if "/" not in repo_id:
        raise TransferError(f"--repo_id {repo_id!r} has no namespace; use user/name or org/name")
    folder = Path(folder).expanduser()
    notes = check_folder(folder)
    files = files_to_upload(folder, include_checkpoints)
    revision = revision or "main"
    if dry_run:
        return PushResult(repo_id, revision, files, notes)
    if api is None:
        reason = hub_unreachable_reason(token)
        if reason:
            raise TransferError(f"cannot push to the Hub: {reason}; push later from a connected machine, or check the "
                                "folder first with --dry_run")
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        if revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                                   commit_message=commit_message or f"Upload {folder.name} (hf_transfer)",
                                   ignore_patterns=upload_ignore_patterns(include_checkpoints))
    except TransferError:
        raise
    except Exception as err:  # noqa: BLE001 - network and Hub errors: one line, the folder stays as it is
        first = str(err).splitlines()[0][:200] if str(err) else ""
        raise TransferError(f"pushing {str(folder)!r} to {repo_id} failed ({type(err).__name__}: {first}); check the "
                            "repo id, your token's write access and the connection, then run the push again") from None
    url = getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}"
    return PushResult(repo_id, revision, files, notes, str(url))


def describe_files(files: list[tuple[str, int]]) -> str:
    """A listing like ``ls -s``: size then path, and the total."""
    def human(n: float) -> str:
        for unit in ("B", "KB", "MB", "GB"):
            if n < 1024 or unit == "GB":
                return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
            n /= 1024
        return str(n)

    rows = [f"{human(size):>10}  {name}" for name, size in files]
    rows.append(f"{human(sum(size for _, size in files)):>10}  total, {len(files)} files")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------------ --push_to_hub
def take_push_request(training_args) -> str | None:
    """--push_to_hub is hf_transfer's, not Trainer's: Trainer would create the repo at init (offline: a traceback).

    Returns the repo id to push to at the end (None: no push) and turns the flag off on the arguments; warns now
    when the Hub looks unreachable, so a long run does not end in a surprise.
    """
    if not getattr(training_args, "push_to_hub", False):
        return None
    repo_id = getattr(training_args, "hub_model_id", None)
    if not repo_id:
        raise TransferError("--push_to_hub needs --hub_model_id user/name (the Hub repository to create or update); "
                            "add it, or drop --push_to_hub")
    training_args.push_to_hub = False
    reason = hub_unreachable_reason(getattr(training_args, "hub_token", None))
    if reason:
        say(f"warning: --push_to_hub {repo_id}: {reason}; training anyway, the push at the end will fail and the "
            "finished folder stays on disk for push_scripts/push_to_hub.py")
    return repo_id


def push_after_training(output_dir, repo_id: str, training_args) -> PushResult:
    """The end-of-run push of --push_to_hub (the folder is complete); a failure keeps the folder and says how to retry."""
    try:
        result = push_folder(output_dir, repo_id, private=bool(getattr(training_args, "hub_private_repo", False)),
                             revision=getattr(training_args, "hub_revision", None),
                             token=getattr(training_args, "hub_token", None))
    except TransferError as err:
        raise TransferError(f"{err} [the trained model is complete in {output_dir}; push it later with "
                            f"python push_scripts/push_to_hub.py {output_dir} --repo_id {repo_id}]") from None
    say(f"pushed {output_dir} to {result.url}")
    return result
