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
    """`compute_metrics` for Trainer: accuracy and macro-F1 from logits."""

    def __init__(self):
        self.accuracy = load_metric("accuracy")
        self.f1 = load_metric("f1")

    def __call__(self, eval_pred) -> dict[str, float]:
        logits, references = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        predictions = np.asarray(logits).argmax(-1)
        return {
            **self.accuracy.compute(predictions=predictions, references=references),
            "macro_f1": self.f1.compute(predictions=predictions, references=references, average="macro")["f1"],
        }
