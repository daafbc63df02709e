"""Runs recipes/finetune.py unchanged (under `accelerate launch`), recording per process what the test compares.

Into the folder named by HF_TRANSFER_TEST_RECORD each rank writes ``rank<N>.safetensors`` (its weights and
BatchNorm statistics before and after training, as ``initial/...`` and ``final/...``, with the parameters that train
at the end in the metadata), ``rank<N>.json`` (its optimizer's groups and the number of samples every metrics call
saw). The recording wraps two hf_transfer names from the outside; nothing in the product knows about it.
"""

import json
import os
import runpy
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import hf_transfer.jobs.finetune as finetune_job
import hf_transfer.trainer as trainer_module

ROOT = Path(__file__).resolve().parents[1]
RECORD = Path(os.environ["HF_TRANSFER_TEST_RECORD"])
RANK = int(os.environ.get("RANK", "0"))
seen: dict = {"metric_samples": []}


def weights(trainer, prefix: str, gather: bool = False) -> dict:
    # ZeRO-3 and FSDP hold shards: gather them as the save does (every process calls it; the first gets them all)
    engine_held = gather and (trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled)
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped) if engine_held else trainer.model.state_dict()
    return {f"{prefix}/{k}": v.detach().cpu().clone().contiguous() for k, v in (state or {}).items()}


train = trainer_module.TransferTrainer.train


def recording_train(self, *args, **kwargs):
    initial = weights(self, "initial")
    result = train(self, *args, **kwargs)
    trainable = sorted(n for n, p in self.model.named_parameters() if p.requires_grad)
    save_file({**initial, **weights(self, "final", gather=True)}, RECORD / f"rank{RANK}.safetensors",
              metadata={"trainable": ",".join(trainable)})
    seen["processes"] = self.accelerator.num_processes
    seen["groups"] = [{"name": g["name"], "lr": g["initial_lr"], "weight_decay": g.get("held_weight_decay", g["weight_decay"]),
                       "params": len(g["params"])} for g in self.optimizer.param_groups]
    return result


class CountingMetrics(finetune_job.ClassificationMetrics):
    def __call__(self, eval_pred):
        seen["metric_samples"].append(len(eval_pred.label_ids))
        (RECORD / f"rank{RANK}.json").write_text(json.dumps(seen))
        return super().__call__(eval_pred)


trainer_module.TransferTrainer.train = recording_train
finetune_job.ClassificationMetrics = CountingMetrics
torch.manual_seed(0)
sys.argv = [str(ROOT / "recipes" / "finetune.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
