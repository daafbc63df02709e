"""What the shipped metric modules share: the features of a classification metric (class ids in, one score out)."""

import datasets
import evaluate


def classification_metric_info(description: str, inputs_description: str) -> evaluate.MetricInfo:
    return evaluate.MetricInfo(
        description=description,
        citation="",
        inputs_description=inputs_description,
        features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
    )
