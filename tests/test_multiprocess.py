"""`accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml recipes/finetune.py`: two processes (DDP over
gloo) run the real recipe with a frozen stem, gradual unfreezing, frozen BatchNorm, layer-wise rates and evaluation.

Both processes must end with identical weights and BatchNorm statistics, equal to the folder written; the frozen
stem must be untouched; both must hold the plan's optimizer groups; every evaluation must count each validation
image exactly once (DDP pads the last batch with repeated samples, which must not reach the metrics).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"
EPOCHS = 3
VALIDATION = 37  # not a multiple of 2 processes x 8 per batch: the last batch is padded


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip("accelerate launcher not installed")
    from hf_transfer import load_backbone
    from hf_transfer.saving import save_model_folder

    root = tmp_path_factory.mktemp("two_processes")
    torch.manual_seed(0)  # a tiny BatchNorm CNN with random weights, saved as a local "pretrained" backbone
    save_model_folder(load_backbone("test_resnet", labels=["a", "b"], pretrained=False), root / "backbone", image_size=32)
    record, out = root / "record", root / "out"
    record.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "HF_TRANSFER_TEST_RECORD": str(record),
           "HF_TRANSFER_NUM_THREADS": "1"}
    cmd = [str(accelerate), "launch", "--config_file", str(CONFIG), str(ROOT / "tests" / "multiprocess_recipe.py"),
           "--use_cpu", "--model_name_or_path", str(root / "backbone"), "--dataset_name", "embedded:digits",
           "--max_train_samples", "64", "--max_eval_samples", str(VALIDATION), "--image_size", "32",
           "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--num_train_epochs", str(EPOCHS),
           "--freeze", "depth:1", "--gradual_unfreeze_epochs", "1", "--layer_decay", "0.8", "--bn_policy", "frozen",
           "--output_dir", str(out)]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=root)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    print(f"two-process recipe run: {time.perf_counter() - start:.1f} s")
    return result, record, out


@pytest.mark.slow
def test_two_process_finetune_recipe(two_process_run):
    from safetensors import safe_open
    from safetensors.torch import load_file

    result, record, out = two_process_run
    assert "engine: DDP, 2 processes, fp32" in result.stdout
    ranks = [load_file(record / f"rank{r}.safetensors") for r in (0, 1)]
    # identical weights and BatchNorm statistics on both processes after unfreezing
    assert ranks[0].keys() == ranks[1].keys()
    final = {k[len("final/"):]: v for k, v in ranks[0].items() if k.startswith("final/")}
    assert [k for k in ranks[0] if k.startswith("final/") and not torch.equal(ranks[0][k], ranks[1][k])] == []
    # the folder holds exactly these weights (timm's own names)
    saved = load_file(out / "model.safetensors")
    assert {f"timm_model.{k}" for k in saved} == set(final)
    assert all(torch.equal(saved[k], final[f"timm_model.{k}"]) for k in saved)
    # the plan ran: the stem (and its BatchNorm statistics) never moved, every depth group unfroze and trained
    plan = json.loads((out / "transfer_plan.json").read_text())
    initial = {k[len("initial/"):]: v for k, v in ranks[0].items() if k.startswith("initial/")}
    frozen = {n for g in plan["groups"] if g["frozen"] for n in g["params"]}
    assert frozen and all(torch.equal(final[n], initial[n]) for n in frozen)
    assert "timm_model.bn1" in plan["frozen_batchnorm_modules"]
    assert all(torch.equal(final[f"timm_model.bn1.{b}"], initial[f"timm_model.bn1.{b}"]) for b in ("running_mean", "running_var"))
    with safe_open(record / "rank0.safetensors", "pt") as handle:
        trainable = set(handle.metadata()["trainable"].split(","))
    late = {n for g in plan["groups"] if not g["frozen"] and g["trains_from_epoch"] == EPOCHS - 1 for n in g["params"]}
    assert late and late <= trainable  # unfrozen in the last epoch ...
    assert any(not torch.equal(final[n], initial[n]) for n in late if final[n].ndim > 1)  # ... and trained
    # both processes hold the plan's groups with the plan's rates and decay
    records = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    expected = [{"name": g["name"], "lr": g["lr"], "weight_decay": g["weight_decay"], "params": len(g["params"])}
                for g in plan["groups"] if not g["frozen"]]
    assert records[0]["processes"] == 2 and records[0]["groups"] == expected and records[1]["groups"] == expected
    # each evaluation (one per epoch, then the final one) saw every validation image exactly once
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_samples"] == VALIDATION
    assert records[0]["metric_samples"] == [VALIDATION] * (EPOCHS + 1) == records[1]["metric_samples"]
