"""Metric modules that ship inside the package, so `evaluate` works offline (its Hub scripts do not).

`load_metric("accuracy")` is `evaluate.load(<path inside this package>)`; `ClassificationMetrics` is a
`compute_metrics` for `Trainer` reporting accuracy and macro-F1 (imbalanced data under-calls minority classes
under a plain accuracy view).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import TransferError

METRICS_DIR = Path(__file__).parent
AVAILABLE_METRICS = tuple(sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file()))


def load_metric(name: str, **kwargs):
    """An `evaluate.EvaluationModule` for one of the shipped metrics (``accuracy``, ``f1``)."""
    import evaluate

    if name not in AVAILABLE_METRICS:
        raise TransferError(f"unknown metric {name!r}; shipped metrics: {', '.join(AVAILABLE_METRICS)}")
    # In memory: our inputs are one eval set at a time, so evaluate's Arrow cache files only cost time and disk.
    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(METRICS_DIR / name), **kwargs)


class ClassificationMetrics:
    """`compute_metrics` for Trainer: accuracy, macro-F1 and the recall of every class (``recall/<label>``).

    ``labels`` (the class names, in id order) name the recall keys; without them the keys are class ids. A class
    with no images in the evaluated split gets no recall key (it was not measured).
    """

    def __init__(self, labels: list[str] | None = None):
        self.accuracy = load_metric("accuracy")
        self.f1 = load_metric("f1")
        self.labels = None if labels is None else [str(label) for label in labels]

    def __call__(self, eval_pred) -> dict[str, float]:
        logits, references = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        predictions = np.asarray(logits).argmax(-1)
        return {
            **self.accuracy.compute(predictions=predictions, references=references),
            "macro_f1": self.f1.compute(predictions=predictions, references=references, average="macro")["f1"],
            **{f"recall/{name}": value for name, value in per_class_recall(predictions, references, self.labels).items()},
        }


def per_class_recall(predictions, references, labels: list[str] | None = None) -> dict[str, float]:
    """{class name (or id): share of that class's images predicted as it}, for the classes present in references."""
    predictions = np.asarray(predictions, dtype=np.int64).reshape(-1)
    references = np.asarray(references, dtype=np.int64).reshape(-1)
    known = references >= 0  # -1: an image without a label (hidden test labels)
    predictions, references = predictions[known], references[known]
    num_classes = max(len(labels or []), int(references.max(initial=-1)) + 1)
    totals = np.bincount(references, minlength=num_classes)
    hits = np.bincount(references[predictions == references], minlength=num_classes)
    name = lambda k: labels[k] if labels and k < len(labels) else str(k)  # noqa: E731
    return {name(k): float(hits[k] / totals[k]) for k in range(num_classes) if totals[k]}
