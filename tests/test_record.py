"""RunRecord: all_results.json is its serialization; per-class recall is one shape in the record, written in the
layout each job has always used."""

import json

from hf_transfer.cv import fold_metrics
from hf_transfer.record import RunRecord

FINETUNE = {"eval_accuracy": 0.75, "eval_macro_f1": 0.7, "eval_recall/cat": 1.0, "eval_recall/dog": 0.5,
            "eval_samples": 8, "train_loss": 0.3, "train_samples": 16, "train_runtime": 2.5, "epoch": 1.0,
            "model_name_or_path": "test_resnet", "dataset": "embedded:digits", "image_size": 32,
            "skipped_bad_images": 0, "class_weighting": "balanced", "sampler": "random",
            "train_class_counts": {"cat": 12, "dog": 4}, "class_weights": {"cat": 0.5, "dog": 1.5},
            "total_seconds": 4.0, "stopped_by_time_budget": False}
PROBE = {"eval_accuracy": 0.75, "eval_macro_f1": 0.7, "eval_per_class_recall": {"cat": 1.0, "dog": 0.5},
         "test_per_class_recall": None, "exported": {"probe": "logreg", "layer": "pooled"}, "eval_split": "validation",
         "eval_samples": 8, "train_samples": 16, "model_name_or_path": "test_resnet", "dataset": "embedded:digits",
         "image_size": 32, "class_weighting": "none", "features_from_cache": True, "total_seconds": 1.0}


def test_both_layouts_read_into_one_shape_and_write_back_unchanged(tmp_path):
    for results, kind in ((FINETUNE, "finetune"), (PROBE, "probe")):
        record = RunRecord.from_results(json.loads(json.dumps(results)))
        assert record.kind == kind
        assert record.recall("eval") == {"cat": 1.0, "dog": 0.5} and record.lowest_recall() == ("dog", 0.5)
        assert record.metric("eval", "accuracy") == 0.75 and record.samples("train") == 16
        assert record.data.dataset == "embedded:digits" and record.data.image_size == 32
        assert record.to_results() == results
        (tmp_path / "all_results.json").write_text(json.dumps(results))
        assert RunRecord.read(tmp_path) == record
    assert RunRecord.from_results(FINETUNE).imbalance["class_weights"] == {"cat": 0.5, "dog": 1.5}
    assert RunRecord.from_results(PROBE).export["exported"]["probe"] == "logreg"
    assert fold_metrics(FINETUNE) == fold_metrics(PROBE) | {"train_runtime": 2.5}


def test_the_engine_is_recorded_only_when_it_is_not_one_process():
    record = RunRecord.from_results(FINETUNE)
    assert "engine" not in record.to_results()
    record.engine = "DDP, 2 processes, fp32"
    assert RunRecord.from_results(record.to_results()).engine == "DDP, 2 processes, fp32"
