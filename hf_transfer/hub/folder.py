"""Reading a finished output folder (or one checkpoint-N in it): its config, its run record, its plan.

Folder facts that depend on the model family (timm layout, Hub id, license) come from `backbones.saved_folder`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..backbones import saved_folder
from ..errors import TransferError
from ..record import RunRecord
from ..saving import COMPLETION_MARKER

STATE_FILE = "trainer_state.json"
PLAN_FILE = "transfer_plan.json"


def label_names(config: dict) -> list[str]:
    """Class names in index order: transformers configs keep id2label, timm ones label_names."""
    if config.get("id2label"):
        return [str(name) for _, name in sorted(config["id2label"].items(), key=lambda kv: int(kv[0]))]
    return [str(name) for name in config.get("label_names") or []]


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _weight_names(folder: Path) -> list[str]:
    from safetensors import safe_open

    path = folder / "model.safetensors"
    if not path.is_file():
        return []
    with safe_open(str(path), "pt") as handle:
        return list(handle.keys())


@dataclass
class FolderRecord:
    """Everything the card says, as read from one output folder (or one checkpoint-* inside it)."""

    folder: Path
    config: dict
    results: dict
    plan: dict | None = None
    checkpoint_step: int | None = None  # set for a checkpoint-* folder (metrics from its trainer_state.json)
    labels: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, folder) -> "FolderRecord":
        folder = Path(folder)
        config = _read_json(folder / "config.json")
        if config is None:
            raise TransferError(f"{str(folder)!r} has no config.json; pass an hf_transfer output folder or checkpoint")
        results, step = _read_json(folder / COMPLETION_MARKER), None
        if results is None:
            state = _read_json(folder / STATE_FILE) if is_checkpoint(folder) else None
            if state is None:
                raise TransferError(f"{str(folder)!r} has neither {COMPLETION_MARKER} nor {STATE_FILE}: the run did not "
                                    "finish; train again, or pass a finished output folder or a checkpoint-N folder")
            # A checkpoint: the run's description from the parent folder (if finished), metrics from the last eval.
            parent = _read_json(folder.parent / COMPLETION_MARKER) or {}
            results = {k: v for k, v in parent.items() if not k.startswith(("eval_", "test_", "train_")) or
                       k.endswith("_samples")}
            evals = [e for e in state.get("log_history", []) if "eval_accuracy" in e]
            results.update(evals[-1] if evals else {})
            step = state.get("global_step")
        return cls(folder, config, results, _read_json(folder / PLAN_FILE), step, label_names(config))

    @property
    def is_probe(self) -> bool:
        return self.run.is_probe or self.config.get("model_type") == "hf_transfer_probe"

    @cached_property
    def run(self) -> RunRecord:
        """The run's results as a typed record (a checkpoint's: its last evaluation)."""
        return RunRecord.from_results(self.results)

    @property
    def loads_in_timm(self) -> bool:
        """timm's local-dir:/hf-hub: loader reads the folder too."""
        return saved_folder.loads_in_timm(self.config, _weight_names(self.folder))

    @property
    def needs_hf_transfer(self) -> bool:
        return self.config.get("model_type") == "hf_transfer_probe" and "auto_map" not in self.config

    @property
    def strategy(self) -> str:
        if self.is_probe:
            return "linear-probe"
        return (self.plan or {}).get("config", {}).get("strategy", "full")

    @property
    def from_random_weights(self) -> bool:
        from ..strategies import REGISTRY

        return self.strategy in REGISTRY and not REGISTRY[self.strategy].loads_pretrained

    @property
    def base_model(self) -> str | None:
        """The backbone's Hub id, or None (embedded weights, a local folder, random init)."""
        name = str(self.run.data.model_name_or_path or "")
        if not name or self.from_random_weights or name.startswith("embedded:"):
            return None
        name = name.removeprefix("hf-hub:")
        if name.startswith(("/", ".", "~")) or Path(name).expanduser().exists():
            return None
        if "/" not in name:  # a timm architecture name: timm resolved it to a Hub id, if it has weights there
            return saved_folder.timm_hub_id(self.config)
        return name if _is_repo_id(name) else None

    @property
    def dataset_id(self) -> str | None:
        source = str(self.run.data.dataset or "")
        if not source or source.startswith(("embedded:", "imagefolder:", "/", ".", "~")) or Path(source).exists():
            return None
        return source if _is_repo_id(source) else None


def is_checkpoint(folder: Path) -> bool:
    """A Trainer checkpoint-N (its metrics live in its trainer_state.json; it has no all_results.json)."""
    return re.fullmatch(r"checkpoint-\d+", folder.name) is not None and (folder / STATE_FILE).is_file()


def _is_repo_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True
