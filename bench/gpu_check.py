#!/usr/bin/env python
"""GPU check for one CUDA GPU, under 5 minutes on an H200: writes bench/results/gpu_check.json (and $OUT/ when set).

1. Speed: bf16 and fp16 fine-tuning of real-size backbones with random weights (ResNet-50, channels_last on and
   off; ViT-B/16 with layer decay) through `TransferTrainer`: images/s over timed steps after a warm-up, peak GPU
   memory, the mean training loss (finite: fp16 did not overflow). One fixed batch is fed every step, so the numbers
   are the training step (model, optimizer, plan), not data loading.
2. The accelerate configs of recipes/accelerate/ on the real recipe (`accelerate launch --config_file ...
   recipes/finetune.py`, one process): single GPU bf16 and fp16, FSDP v2, DeepSpeed ZeRO-2 and ZeRO-3 where
   deepspeed imports. Each run freezes the stem and unfreezes gradually; the check reads the output folder: the
   stem bit-identical to the starting weights, the last body group trained, float32 weights equal to what the
   process held at the end, and the folder loads with AutoModelForImageClassification. ZeRO-3 must refuse gradual
   unfreezing in one line, then train with a fixed freeze.

    bash bench/gpu_check.sh                       # everything
    python bench/gpu_check.py --device cpu --archs test_resnet --batch 4 --steps 2 --configs single_gpu_bf16
                                                  # a quick CPU rehearsal of the code paths (no real numbers)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "gpu_check.json"
BUDGET_S = 280  # stop starting new parts after this: the whole check stays under 5 minutes
START = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - START


# ------------------------------------------------------------------------------------------------- 1. speed
def speed(arch: str, precision: str, channels_last: bool, batch: int, steps: int, warmup: int, device: str) -> dict:
    from transformers import TrainerCallback, TrainingArguments

    from hf_transfer import adapter_for, load_backbone
    from hf_transfer.plan import TransferConfig, TransferPlan
    from hf_transfer.trainer import TransferTrainer

    torch.manual_seed(0)
    model = load_backbone(arch, labels=[str(i) for i in range(10)], pretrained=False)
    size = adapter_for(model).data_config()["input_size"][-1]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    cnn = adapter_for(model).prefers_channels_last()
    plan = TransferPlan.build(model, TransferConfig(learning_rate=1e-3, layer_decay=1.0 if cnn else 0.75))
    pixels = torch.randn(batch, 3, size, size, device=device).to(memory_format=memory_format)
    labels = torch.randint(0, 10, (batch,), device=device)

    class Timer(TrainerCallback):
        t0 = t1 = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                torch.cuda.synchronize() if device == "cuda" else None
                Timer.t0 = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            torch.cuda.synchronize() if device == "cuda" else None
            Timer.t1 = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, bf16=precision == "bf16", fp16=precision == "fp16",
                                 use_cpu=device == "cpu", per_device_train_batch_size=batch, max_steps=warmup + steps,
                                 lr_scheduler_type="constant", max_grad_norm=0.0, report_to=[], save_strategy="no",
                                 logging_strategy="no", disable_tqdm=True, remove_unused_columns=False,
                                 dataloader_num_workers=0, dataloader_pin_memory=False)
        trainer = TransferTrainer(model=model, args=args, plan=plan, train_dataset=list(range(batch * (warmup + steps))),
                                  data_collator=lambda rows: {"pixel_values": pixels, "labels": labels},
                                  callbacks=[Timer()])
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        result = trainer.train()
    seconds = Timer.t1 - Timer.t0
    row = {"arch": arch, "precision": precision, "channels_last": channels_last, "batch": batch, "image_size": size,
           "timed_steps": steps, "images_per_s": round(steps * batch / seconds, 1), "step_ms": round(1000 * seconds / steps, 1),
           "train_loss": round(float(result.training_loss), 4),
           "loss_finite": bool(torch.isfinite(torch.tensor(result.training_loss))),
           "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
    if device == "cuda":
        row["peak_memory_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    del trainer, model
    return row


# ------------------------------------------------------------------------------------ 2. configs on the recipe
RECIPE_FLAGS = ["--dataset_name", "embedded:digits", "--max_train_samples", "512", "--max_eval_samples", "64",
                "--image_size", "64", "--per_device_train_batch_size", "64", "--num_train_epochs", "2",
                "--freeze", "depth:1", "--layer_decay", "0.8"]
GRADUAL = ["--gradual_unfreeze_epochs", "1"]
CONFIGS = {  # name: (config file, extra launch flags, recipe flags, what must happen)
    "single_gpu_bf16": ("single_gpu_bf16.yaml", [], GRADUAL, "trains"),
    "single_gpu_fp16": ("single_gpu_fp16.yaml", [], GRADUAL, "trains"),
    "fsdp2": ("fsdp2.yaml", ["--num_processes", "1"], GRADUAL, "trains"),
    "deepspeed_zero2": ("deepspeed_zero2.yaml", ["--num_processes", "1"], GRADUAL, "trains"),
    "deepspeed_zero3_gradual": ("deepspeed_zero3.yaml", ["--num_processes", "1"], GRADUAL, "refused"),
    "deepspeed_zero3": ("deepspeed_zero3.yaml", ["--num_processes", "1"], [], "trains"),
}


def backbone_folder(root: Path, arch: str) -> Path:
    """A random-weight backbone saved as a local folder: the recipe treats it as pretrained (the stem can freeze)."""
    from hf_transfer import load_backbone
    from hf_transfer.saving import save_model_folder

    folder = root / "backbone"
    if not folder.exists():
        torch.manual_seed(0)
        save_model_folder(load_backbone(arch, labels=["a", "b"], pretrained=False), folder, image_size=64)
    return folder


def recipe_run(name: str, root: Path, arch: str, device: str) -> dict:
    config, launch_flags, flags, expected = CONFIGS[name]
    if name.startswith("deepspeed"):
        try:
            import deepspeed  # noqa: F401
        except Exception as err:  # an absent or broken build
            return {"config": name, "status": "skipped", "why": f"deepspeed does not import ({type(err).__name__})"}
    from safetensors import safe_open
    from safetensors.torch import load_file

    run = root / name
    record = run / "record"
    record.mkdir(parents=True)
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--config_file", str(ROOT / "recipes" / "accelerate" / config), *launch_flags,
           str(ROOT / "tests" / "multiprocess_recipe.py"), "--model_name_or_path", str(backbone_folder(root, arch)),
           *RECIPE_FLAGS, *flags, "--output_dir", str(run / "out"), *(["--use_cpu"] if device == "cpu" else [])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "HF_TRANSFER_TEST_RECORD": str(record)}
    t0 = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    row = {"config": name, "command": " ".join(["accelerate launch --config_file", f"recipes/accelerate/{config}",
                                                *launch_flags, "recipes/finetune.py", *RECIPE_FLAGS, *flags]),
           "wall_s": round(time.perf_counter() - t0, 1), "returncode": result.returncode}
    engine = [line for line in result.stdout.splitlines() if "engine:" in line]
    row["engine"] = engine[0].split("engine: ")[-1] if engine else None
    if expected == "refused":  # the recipe exits 2 with one line; the launcher then fails too
        lines = [line for line in result.stderr.splitlines() if "error: --gradual_unfreeze_epochs under DeepSpeed ZeRO-3" in line]
        row["refusal"] = lines[0] if lines else None
        row["status"] = "ok" if result.returncode != 0 and lines and not (run / "out").exists() else "FAILED"
        return row
    if result.returncode != 0:
        row.update(status="FAILED", stderr_tail=result.stderr[-1500:])
        return row
    checks = {}
    out = run / "out"
    saved = load_file(out / "model.safetensors")
    recorded = load_file(record / "rank0.safetensors")
    initial = {k[len("initial/timm_model."):]: v for k, v in recorded.items() if k.startswith("initial/")}
    final = {k[len("final/timm_model."):]: v for k, v in recorded.items() if k.startswith("final/")}
    plan = json.loads((out / "transfer_plan.json").read_text())
    frozen = [n.removeprefix("timm_model.") for g in plan["groups"] if g["frozen"] for n in g["params"]]
    checks["float32_weights"] = all(t.dtype == torch.float32 for t in saved.values() if t.is_floating_point())
    checks["stem_bit_identical"] = bool(frozen) and all(torch.equal(saved[n], initial[n]) for n in frozen)
    last_body = max(g["depth"] for g in plan["groups"] if not g["frozen"] and not g["new"])
    body = [n.removeprefix("timm_model.") for g in plan["groups"] if g["depth"] == last_body for n in g["params"]]
    checks["last_body_group_trained"] = any(not torch.equal(saved[n], initial[n]) for n in body if saved[n].ndim > 1)
    checks["folder_equals_trained_weights"] = all(
        torch.equal(saved[n], final[n].float()) for n in saved if n in final and n not in frozen)
    with safe_open(record / "rank0.safetensors", "pt") as handle:
        checks["trainable_at_end"] = len(handle.metadata()["trainable"].split(","))
    from transformers import AutoModelForImageClassification

    loaded = AutoModelForImageClassification.from_pretrained(out)
    checks["loads"] = loaded.config.num_labels == 10
    results = json.loads((out / "all_results.json").read_text())
    row["eval_accuracy"] = results.get("eval_accuracy")
    row["checks"] = checks
    row["status"] = "ok" if all(v for v in checks.values()) else "FAILED"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--archs", default="resnet50,vit_base_patch16_224")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--recipe_arch", default="resnet18", help="backbone of the recipe runs (random weights)")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); run it on a GPU machine")
    report = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "speed": [], "recipe_runs": [], "skipped": []}
    for name in ("transformers", "accelerate", "timm", "deepspeed"):
        try:
            report[name] = __import__(name).__version__
        except Exception:
            report[name] = None

    plan = []
    for arch in args.archs.split(","):
        cnn = "resnet" in arch or "efficientnet" in arch or "convnext" in arch
        for precision in ("bf16", "fp16"):
            plan.append((arch, precision, cnn))
        if cnn:
            plan.append((arch, "bf16", False))  # channels_last off, to show what it buys
    for arch, precision, channels_last in plan:
        if elapsed() > BUDGET_S * 0.4:
            report["skipped"].append(f"speed {arch} {precision} channels_last={channels_last}: time budget")
            continue
        try:
            row = speed(arch, precision, channels_last, args.batch, args.steps, args.warmup, args.device)
        except Exception as err:
            row = {"arch": arch, "precision": precision, "channels_last": channels_last, "status": "FAILED",
                   "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
        print(json.dumps(row), flush=True)
        report["speed"].append(row)
        if args.device == "cuda":
            torch.cuda.empty_cache()

    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            if elapsed() > BUDGET_S:
                report["skipped"].append(f"recipe {name}: time budget")
                continue
            try:
                row = recipe_run(name, Path(tmp), args.recipe_arch, args.device)
            except Exception as err:
                row = {"config": name, "status": "FAILED", "error": f"{type(err).__name__}: {str(err)[:300]}"}
            print(json.dumps(row), flush=True)
            report["recipe_runs"].append(row)
    report["total_seconds"] = round(elapsed(), 1)
    report["all_ok"] = all(r.get("status", "ok") == "ok" or r.get("status") == "skipped"
                           for r in report["speed"] + report["recipe_runs"])
    text = json.dumps(report, indent=2) + "\n"
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(text)
    print(f"gpu_check: {'all ok' if report['all_ok'] else 'FAILURES'} in {report['total_seconds']} s -> {args.output}")


if __name__ == "__main__":
    main()
