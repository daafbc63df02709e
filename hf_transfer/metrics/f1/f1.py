"""F1 (macro by default) as an `evaluate` metric module that ships with hf_transfer and loads offline by path."""

import evaluate
from sklearn.metrics import f1_score

from hf_transfer.metrics._common import classification_metric_info

_DESCRIPTION = "F1 score: harmonic mean of precision and recall. Macro-F1 weighs every class equally (imbalanced data)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): true class ids.
    average (str): 'macro' (default), 'micro', 'weighted' or 'binary'.
    labels (list of int, optional): the classes to average over (all classes seen in either list by default).
Returns:
    f1 (float): in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self):
        return classification_metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references, average="macro", labels=None):
        return {"f1": float(f1_score(references, predictions, average=average, labels=labels, zero_division=0))}
