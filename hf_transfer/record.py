"""RunRecord: what a finished run measured and on what, typed; ``all_results.json`` is its serialization.

The jobs produce a record, and cross-validation and the model card read one (`RunRecord.read(folder)` or
`RunRecord.from_results(dict)`) instead of picking keys out of the JSON. The file keeps the keys HF example scripts
and earlier versions wrote, so other readers still work:

* split metrics flat, ``eval_accuracy``, ``test_macro_f1``, ``train_loss``, ...;
* per-class recall, which the record holds in one shape (split -> label -> recall), written as the fine-tune always
  wrote it (flat ``eval_recall/<label>``) or as the probe job did (an ``eval_per_class_recall`` mapping);
* the data summary, the imbalance correction, the probe's export and the engine (only when it is not one process)
  at the top level.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

RESULTS_FILE = "all_results.json"
SPLIT_PREFIXES = ("train", "eval", "test")
DATA_KEYS = ("model_name_or_path", "dataset", "image_size", "skipped_bad_images")
IMBALANCE_KEYS = ("class_weighting", "sampler", "train_class_counts", "class_weights")
EXPORT_KEYS = ("exported", "best", "best_exportable", "better_non_exportable", "layers", "pooling", "selected_by",
               "eval_split")
FLAT_RECALL = "_recall/"
NESTED_RECALL = "_per_class_recall"


@dataclass
class DataSummary:
    """What the run trained and was scored on."""

    model_name_or_path: str | None = None
    dataset: str | None = None
    image_size: int | None = None
    samples: dict[str, int] = field(default_factory=dict)  # split prefix (train, eval, test) -> images
    skipped_bad_images: int | None = None


@dataclass
class RunRecord:
    kind: str = "finetune"  # finetune | probe: also which per-class recall layout the file uses
    metrics: dict[str, float] = field(default_factory=dict)  # flat split metrics: eval_accuracy, train_loss, ...
    per_class_recall: dict[str, dict[str, float]] = field(default_factory=dict)  # split prefix -> label -> recall
    data: DataSummary = field(default_factory=DataSummary)
    imbalance: dict = field(default_factory=dict)  # class_weighting, sampler, train_class_counts, class_weights
    export: dict = field(default_factory=dict)  # the probe job: what was exported and why
    engine: str | None = None  # None: one process
    extra: dict = field(default_factory=dict)  # anything else the job recorded (times, cache use, time budget)

    # ------------------------------------------------------------------------------------------------ reading
    def metric(self, split: str, name: str):
        """``metric("eval", "accuracy")`` -> eval_accuracy (None when not measured)."""
        return self.metrics.get(f"{split}_{name}")

    def samples(self, split: str) -> int | None:
        return self.data.samples.get(split)

    def recall(self, split: str = "eval") -> dict[str, float]:
        return self.per_class_recall.get(split) or {}

    def lowest_recall(self, split: str = "eval") -> tuple[str, float] | None:
        recalls = self.recall(split)
        if not recalls:
            return None
        label = min(recalls, key=recalls.get)
        return label, recalls[label]

    @property
    def epoch(self):
        return self.extra.get("epoch", self.metrics.get("train_epoch"))

    @property
    def is_probe(self) -> bool:
        return self.kind == "probe"

    # ------------------------------------------------------------------------------------------ serialization
    @classmethod
    def from_results(cls, results: dict) -> "RunRecord":
        """The record of an ``all_results.json`` payload (either recall layout)."""
        record = cls(kind="probe" if "exported" in results or any(k.endswith(NESTED_RECALL) for k in results) else "finetune")
        for key, value in results.items():
            split, _, rest = key.partition("_")
            if key in DATA_KEYS:
                setattr(record.data, key, value)
            elif split in SPLIT_PREFIXES and rest == "samples":
                record.data.samples[split] = value
            elif key in IMBALANCE_KEYS:
                record.imbalance[key] = value
            elif key in EXPORT_KEYS:
                record.export[key] = value
            elif key == "engine":
                record.engine = value
            elif split in SPLIT_PREFIXES and key.startswith(f"{split}{FLAT_RECALL}"):
                record.per_class_recall.setdefault(split, {})[key.split("/", 1)[1]] = value
            elif split in SPLIT_PREFIXES and key == f"{split}{NESTED_RECALL}":
                record.per_class_recall[split] = None if value is None else dict(value)
            elif split in SPLIT_PREFIXES and not isinstance(value, (dict, list)):
                record.metrics[key] = value
            else:
                record.extra[key] = value
        return record

    def to_results(self) -> dict:
        """The ``all_results.json`` payload (the inverse of `from_results`)."""
        results = dict(self.extra)
        results.update(self.metrics)
        for split, recalls in self.per_class_recall.items():
            if self.kind == "probe":
                results[f"{split}{NESTED_RECALL}"] = recalls
            else:
                results.update({f"{split}{FLAT_RECALL}{label}": value for label, value in (recalls or {}).items()})
        data = self.data
        results.update({key: getattr(data, key) for key in DATA_KEYS if getattr(data, key) is not None})
        results.update({f"{split}_samples": n for split, n in data.samples.items()})
        results.update(self.imbalance)
        results.update(self.export)
        if self.engine is not None:
            results["engine"] = self.engine
        return results

    @classmethod
    def read(cls, folder) -> "RunRecord | None":
        """The record of a finished output folder (None when it has no ``all_results.json``)."""
        path = Path(folder) / RESULTS_FILE
        return cls.from_results(json.loads(path.read_text())) if path.is_file() else None
