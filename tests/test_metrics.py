import numpy as np
from transformers import EvalPrediction

from hf_transfer.metrics import AVAILABLE_METRICS, ClassificationMetrics, load_metric


def test_shipped_metrics_load_offline_and_compute():
    assert {"accuracy", "f1"} <= set(AVAILABLE_METRICS)
    accuracy = load_metric("accuracy")
    accuracy.add_batch(predictions=[0, 1], references=[0, 1])
    accuracy.add_batch(predictions=[2, 2], references=[2, 0])
    assert accuracy.compute() == {"accuracy": 0.75}
    f1 = load_metric("f1").compute(predictions=[0, 0, 0, 1], references=[0, 0, 1, 1], average="macro")["f1"]
    assert abs(f1 - (0.8 + 2 / 3) / 2) < 1e-9


def test_classification_metrics_reports_macro_f1_beside_accuracy():
    logits = np.array([[2.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    result = ClassificationMetrics()(EvalPrediction(predictions=logits, label_ids=np.array([0, 0, 1, 1])))
    assert result["accuracy"] == 0.75
    assert abs(result["macro_f1"] - (0.8 + 2 / 3) / 2) < 1e-9
