"""Runs recipes/finetune.py unchanged (plain or under `accelerate launch`), recording the labels of every training
batch each process trained on into ``rank<N>.json`` in HF_TRANSFER_TEST_RECORD. In the test's dataset every row is
its own class, so the labels name the rows. The recording wraps `TransferTrainer.training_step` from the outside."""

import json
import os
import runpy
import sys
from pathlib import Path

import hf_transfer.trainer as trainer_module

ROOT = Path(__file__).resolve().parents[1]
RECORD = Path(os.environ["HF_TRANSFER_TEST_RECORD"])
RANK = int(os.environ.get("RANK", "0"))
seen: list[list[int]] = []
step = trainer_module.TransferTrainer.training_step


def recording_step(self, model, inputs, *args, **kwargs):
    seen.append(inputs["labels"].tolist())
    (RECORD / f"rank{RANK}.json").write_text(json.dumps({"batches": seen, "processes": self.args.world_size}))
    return step(self, model, inputs, *args, **kwargs)


predict = trainer_module.TransferTrainer.predict


def recording_predict(self, dataset, *args, **kwargs):
    """The run's own validation logits (the streamed data path's decode and transform), for the parity test."""
    output = predict(self, dataset, *args, **kwargs)
    if self.is_world_process_zero():
        (RECORD / "validation.json").write_text(json.dumps({"logits": output.predictions.tolist(),
                                                           "labels": output.label_ids.tolist()}))
    return output


trainer_module.TransferTrainer.training_step = recording_step
trainer_module.TransferTrainer.predict = recording_predict
sys.argv = [str(ROOT / "recipes" / "finetune.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
