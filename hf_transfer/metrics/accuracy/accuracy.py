"""Accuracy as an `evaluate` metric module that ships with hf_transfer and loads offline by path."""

import evaluate
import numpy as np

from hf_transfer.metrics._common import classification_metric_info

_DESCRIPTION = "Fraction of predictions equal to the references (optionally weighted per sample)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): true class ids.
    sample_weight (list of float, optional): per-sample weights.
Returns:
    accuracy (float): in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return classification_metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references, sample_weight=None):
        correct = np.asarray(predictions) == np.asarray(references)
        return {"accuracy": float(np.average(correct, weights=sample_weight)) if len(correct) else 0.0}
