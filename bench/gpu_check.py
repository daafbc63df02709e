#!/usr/bin/env python
"""GPU check for one CUDA GPU (two when present), one command under 10 minutes: writes bench/results/gpu_check.json
(and $OUT/gpu_check.json when $OUT is set) after EVERY part, so a timeout keeps what was measured.

It says "all ok" only when every part ran and passed: a part skipped for time or for a missing package (DeepSpeed),
or one that timed out, makes the overall result not ok, and is listed with its reason.

1. Speed: bf16 and fp16 fine-tuning of ResNet-50 (channels_last on and off) and ViT-B/16 through `TransferTrainer`
   (images/s after a warm-up, peak GPU memory, finite loss). One fixed batch: the training step, not data loading.
2. Loader: the training loader on JPEG files (500x375, decoded and random-resized-cropped to 224 px per step, the
   default workers of `fastdata.resolve_loader_workers`) in images/s, against the ResNet-50 bf16 step.
3. FSDP2 and BatchNorm: `fully_shard` with `MixedPrecisionPolicy(param_dtype=bf16)` on a BatchNorm CNN fed
   channels_last batches, with BatchNorm as torch has it and computed in float32 (`engines.keep_batchnorm_float32`,
   what hf_transfer applies under 16-bit engines); plus whether a direct `fully_shard` of a channels_last model is
   refused (torch needs contiguous parameters; accelerate's path makes them so).
4. The accelerate configs on the real recipe (`accelerate launch --config_file ... recipes/finetune.py`): single GPU
   bf16 / fp16, FSDP v2, DeepSpeed ZeRO-2 and ZeRO-3, DDP on 2 GPUs when there are two, LoRA, and an interrupted run
   resumed. Each run's folder is read back: frozen stem bit-identical, last body group trained, float32 weights equal
   to what the process held, the folder loads. ZeRO-3 must refuse gradual unfreezing in one line. A subprocess that
   runs past its limit is killed with its whole process group (the launcher and its workers).

    bash bench/gpu_check.sh                       # everything
    python bench/gpu_check.py --device cpu --archs test_resnet --batch 4 --steps 2 --recipe_arch test_resnet \
        --loader_images 64                        # a CPU rehearsal of every code path (no real numbers)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "gpu_check.json"
BUDGET_S = 540  # no part starts after this; gpu_check.sh kills everything at 600 s
START = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - START


RUNNING: list[subprocess.Popen] = []  # the child group in flight, killed on our own SIGTERM too


def run_group(cmd: list[str], env: dict, timeout: float) -> tuple[int | None, str, str]:
    """Run ``cmd`` in its own process group; past ``timeout`` kill the whole group (accelerate's launcher and every
    worker it started), not just the launcher. -> (return code, or None on timeout; stdout; stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    RUNNING.append(proc)
    try:
        out, err = proc.communicate(timeout=max(1.0, timeout))
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err
    finally:
        RUNNING.remove(proc)


def _terminated(signum, frame):
    """gpu_check.sh's `timeout` stops this process: take the child group down with it (it has its own session)."""
    for proc in list(RUNNING):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    raise SystemExit(f"gpu_check: stopped by signal {signum} after {elapsed():.0f} s; the JSON holds every finished part")


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



# -------------------------------------------------------------------------------------------------- 2. loader
def loader(device: str, images: int, batches: int) -> dict:
    """The training loader on JPEG files decoded per step, with the workers hf_transfer gives one process."""
    import io
    from multiprocessing import Pool

    import datasets
    import numpy as np
    from PIL import Image

    from hf_transfer.fastdata import PixelBatchCollator, cores_per_process
    from hf_transfer.transforms import batch_transform, build_transform

    rng = np.random.default_rng(0)
    files = []
    for _ in range(32):
        base = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        noise = rng.integers(0, 40, (375, 500, 3), dtype=np.uint8)
        pixels = (np.asarray(Image.fromarray(base).resize((500, 375), Image.BICUBIC)) // 2 + noise).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        files.append(buffer.getvalue())
    with tempfile.TemporaryDirectory() as tmp:
        for c in range(2):
            (Path(tmp) / f"c{c}").mkdir()
        for i in range(images):
            (Path(tmp) / f"c{i % 2}" / f"{i}.jpg").write_bytes(files[i % len(files)])
        split = datasets.load_dataset("imagefolder", data_dir=tmp, cache_dir=str(Path(tmp) / ".cache"))["train"]
        cfg = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
               "std": (0.229, 0.224, 0.225), "crop_pct": 0.875}
        lazy = split.cast_column("image", datasets.Image(decode=False)).with_transform(
            batch_transform(build_transform(cfg, augmentation="strong"), "image", "label"))
        workers = max(1, min(8, cores_per_process() - 1))  # as fastdata.resolve_loader_workers
        data = torch.utils.data.DataLoader(lazy, batch_size=32, shuffle=True, num_workers=workers, prefetch_factor=4,
                                           persistent_workers=True, pin_memory=device == "cuda",
                                           collate_fn=PixelBatchCollator(None, torch.channels_last))
        iterator = iter(data)
        next(iterator)
        start = time.perf_counter()
        count = 0
        for _ in range(batches):
            try:
                count += len(next(iterator)["pixel_values"])
            except StopIteration:
                iterator = iter(data)
        seconds = time.perf_counter() - start
    return {"part": "loader", "images_per_s": round(count / seconds, 1), "workers": workers, "batch": 32,
            "image": "500x375 JPEG -> random-resized-crop 224", "cores": os.cpu_count(), "status": "ok"}


# --------------------------------------------------------------------------------- 3. FSDP2 x BatchNorm x bf16
FSDP_BN_SCRIPT = r"""
import json, sys, traceback, torch, torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from hf_transfer import load_backbone
from hf_transfer.engines import keep_batchnorm_float32
device, arch, out = sys.argv[1], sys.argv[2], sys.argv[3]
dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method="file://" + out + ".pg", rank=0, world_size=1)
result = {}
def build(channels_last_params):
    torch.manual_seed(0)
    model = load_backbone(arch, labels=[str(i) for i in range(10)], pretrained=False).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last_params else model
def attempt(name, channels_last_params, float32_bn):
    try:
        model = build(channels_last_params)
        if float32_bn:
            keep_batchnorm_float32(model)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in [m for n, m in model.named_modules() if n.count(".") == 2 and "layer" in n]:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        x = torch.randn(8, 3, 64, 64, device=device).to(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (8,), device=device)
        model.train()
        for _ in range(2):
            loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits.float(), y)
            loss.backward()
        result[name] = {"ok": bool(torch.isfinite(loss).item())}
    except Exception as err:
        result[name] = {"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
attempt("channels_last_params_direct", True, False)
attempt("bf16_params_batchnorm_as_torch", False, False)
attempt("bf16_params_batchnorm_float32", False, True)
json.dump(result, open(out, "w"))
dist.destroy_process_group()
"""


def fsdp_batchnorm(device: str, arch: str, root: Path) -> dict:
    out = root / "fsdp_bn.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    code, stdout, stderr = run_group([sys.executable, "-c", FSDP_BN_SCRIPT, device, arch, str(out)], env,
                                     min(120, BUDGET_S - elapsed()))
    row = {"part": "fsdp2_batchnorm_bf16", "arch": arch}
    if code is None or not out.exists():
        return {**row, "status": "FAILED" if code is not None else "timeout", "stderr_tail": stderr[-1500:]}
    cases = json.loads(out.read_text())
    row["cases"] = cases
    # what hf_transfer runs under FSDP bf16 (float32 BatchNorm) must train; the others say whether it is needed
    row["status"] = "ok" if cases["bf16_params_batchnorm_float32"]["ok"] else "FAILED"
    row["float32_batchnorm_needed"] = not cases["bf16_params_batchnorm_as_torch"]["ok"]
    return row


# ------------------------------------------------------------------------------------ 4. configs on the recipe
RECIPE_FLAGS = ["--dataset_name", "embedded:digits", "--max_train_samples", "512", "--max_eval_samples", "64",
                "--image_size", "64", "--per_device_train_batch_size", "64", "--num_train_epochs", "2",
                "--freeze", "depth:1", "--layer_decay", "0.8"]
GRADUAL = ["--gradual_unfreeze_epochs", "1"]
LORA = ["--strategy", "lora"]
CONFIGS = {  # name: (config file, extra launch flags, recipe flags, what must happen, GPUs needed)
    "single_gpu_bf16": ("single_gpu_bf16.yaml", [], GRADUAL, "trains", 1),
    "single_gpu_fp16": ("single_gpu_fp16.yaml", [], GRADUAL, "trains", 1),
    "fsdp2": ("fsdp2.yaml", ["--num_processes", "1"], GRADUAL, "trains", 1),
    "deepspeed_zero2": ("deepspeed_zero2.yaml", ["--num_processes", "1"], GRADUAL, "trains", 1),
    "deepspeed_zero3_gradual": ("deepspeed_zero3.yaml", ["--num_processes", "1"], GRADUAL, "refused", 1),
    "deepspeed_zero3": ("deepspeed_zero3.yaml", ["--num_processes", "1"], [], "trains", 1),
    "lora_bf16": ("single_gpu_bf16.yaml", [], LORA, "lora", 1),
    "resume_bf16": ("single_gpu_bf16.yaml", [], [], "resumes", 1),
    "ddp_2_gpus": ("multi_gpu.yaml", ["--num_processes", "2"], GRADUAL, "trains", 2),
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


def _launch(config: str, launch_flags: list, flags: list, root: Path, arch: str, device: str, out: Path,
            record: Path, timeout: float):
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--config_file", str(ROOT / "recipes" / "accelerate" / config), *launch_flags,
           str(ROOT / "tests" / "multiprocess_recipe.py"), "--model_name_or_path", str(backbone_folder(root, arch)),
           *RECIPE_FLAGS, *flags, "--output_dir", str(out), *(["--use_cpu"] if device == "cpu" else [])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "HF_TRANSFER_TEST_RECORD": str(record)}
    return run_group(cmd, env, timeout)


def not_applicable(name: str, device: str) -> str | None:
    """A config this machine cannot have (DDP on 2 GPUs with one): listed, and not held against the result."""
    gpus_needed = CONFIGS[name][4]
    available = torch.cuda.device_count() if device == "cuda" else 2
    return f"needs {gpus_needed} GPUs, {available} visible" if gpus_needed > available else None


def skip_reason(name: str, device: str) -> str | None:
    if name.startswith("deepspeed"):
        try:
            import deepspeed  # noqa: F401
        except Exception as err:  # an absent or broken build
            return f"deepspeed does not import ({type(err).__name__}); pip install -e '.[deepspeed]'"
    if device == "cpu" and name.startswith("deepspeed"):
        return "DeepSpeed through accelerate launch needs a GPU (tests/test_scale.py runs it in-process on CPU)"
    return None


def recipe_run(name: str, root: Path, arch: str, device: str, timeout: float) -> dict:
    config, launch_flags, flags, expected, _ = CONFIGS[name]
    from safetensors import safe_open
    from safetensors.torch import load_file

    run = root / name
    record = run / "record"
    record.mkdir(parents=True)
    out = run / "out"
    row = {"config": name, "command": " ".join(["accelerate launch --config_file", f"recipes/accelerate/{config}",
                                                *launch_flags, "recipes/finetune.py", *RECIPE_FLAGS, *flags])}
    t0 = time.perf_counter()
    if expected == "resumes":  # stop after 4 steps with a checkpoint, then resume to 8 from the latest one
        first = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "4"]
        code, stdout, stderr = _launch(config, launch_flags, first, root, arch, device, out, record, timeout / 2)
        if code == 0:
            again = ["--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4", "--resume_from_checkpoint", "True"]
            code, stdout, stderr = _launch(config, launch_flags, again, root, arch, device, out, record,
                                           timeout - (time.perf_counter() - t0))
    else:
        code, stdout, stderr = _launch(config, launch_flags, flags, root, arch, device, out, record, timeout)
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    row["returncode"] = code
    engine = [line for line in stdout.splitlines() if "engine:" in line]
    row["engine"] = engine[0].split("engine: ")[-1] if engine else None
    if code is None:
        return {**row, "status": "timeout", "stderr_tail": stderr[-1500:]}
    if expected == "refused":  # the recipe exits 2 with one line; the launcher then fails too
        lines = [line for line in stderr.splitlines() if "error: --gradual_unfreeze_epochs under DeepSpeed ZeRO-3" in line]
        row["refusal"] = lines[0] if lines else None
        row["status"] = "ok" if code != 0 and lines and not out.exists() else "FAILED"
        return row
    if code != 0:
        return {**row, "status": "FAILED", "stderr_tail": stderr[-1500:]}
    checks = {}
    results = json.loads((out / "all_results.json").read_text())
    row["eval_accuracy"] = results.get("eval_accuracy")
    from transformers import AutoModelForImageClassification

    if expected == "lora":
        checks["adapter_saved"] = (out / "adapter" / "adapter_model.safetensors").exists()
        checks["merged_loads"] = AutoModelForImageClassification.from_pretrained(out).config.num_labels == 10
        row["checks"] = checks
        row["status"] = "ok" if all(checks.values()) else "FAILED"
        return row
    if expected == "resumes":
        state = json.loads((out / "trainer_state.json").read_text())
        checks["resumed_to_step_8"] = state["global_step"] == 8
        checks["said_resuming"] = "checkpoint-4" in stdout + stderr
    saved = load_file(out / "model.safetensors")
    recorded = load_file(record / "rank0.safetensors")
    initial = {k[len("initial/timm_model."):]: v for k, v in recorded.items() if k.startswith("initial/")}
    final = {k[len("final/timm_model."):]: v for k, v in recorded.items() if k.startswith("final/")}
    plan = json.loads((out / "transfer_plan.json").read_text())
    frozen = [n.removeprefix("timm_model.") for g in plan["groups"] if g["frozen"] for n in g["params"]]
    checks["float32_weights"] = all(t.dtype == torch.float32 for t in saved.values() if t.is_floating_point())
    if expected != "resumes":  # a resumed process starts from the checkpoint, not the initial weights
        checks["stem_bit_identical"] = bool(frozen) and all(torch.equal(saved[n], initial[n]) for n in frozen)
        last_body = max(g["depth"] for g in plan["groups"] if not g["frozen"] and not g["new"])
        body = [n.removeprefix("timm_model.") for g in plan["groups"] if g["depth"] == last_body for n in g["params"]]
        checks["last_body_group_trained"] = any(not torch.equal(saved[n], initial[n]) for n in body if saved[n].ndim > 1)
    # DeepSpeed: the folder holds the float32 masters, so compare with what the process held within bf16 rounding
    exact = not name.startswith("deepspeed")
    checks["folder_equals_trained_weights"] = all(
        torch.equal(saved[n], final[n].float()) if exact else torch.allclose(saved[n], final[n].float(), atol=1e-2, rtol=1e-2)
        for n in saved if n in final and n not in frozen)
    with safe_open(record / "rank0.safetensors", "pt") as handle:
        checks["trainable_at_end"] = len(handle.metadata()["trainable"].split(",")) > 0
    if name == "ddp_2_gpus":
        other = load_file(record / "rank1.safetensors")
        checks["ranks_identical"] = all(torch.equal(recorded[k], other[k]) for k in recorded if k.startswith("final/"))
    checks["loads"] = AutoModelForImageClassification.from_pretrained(out).config.num_labels == 10
    row["checks"] = checks
    row["status"] = "ok" if all(checks.values()) else "FAILED"
    return row


# ------------------------------------------------------------------------------------------------- the report
class Report:
    """The JSON, rewritten after every part: a timeout or a crash keeps every number measured so far."""

    def __init__(self, path: str, header: dict):
        self.path, self.data = Path(path), {**header, "parts": [], "skipped": [], "all_ok": False, "finished": False}

    def add(self, row: dict) -> None:
        self.data["parts"].append(row)
        print(json.dumps(row), flush=True)
        self.write()

    def skip(self, what: str, why: str) -> None:
        self.data["skipped"].append({"part": what, "why": why})
        print(json.dumps({"skipped": what, "why": why}), flush=True)
        self.write()

    def write(self) -> None:
        statuses = [row.get("status") for row in self.data["parts"]]
        # ok only when something ran, everything that ran passed, and nothing was skipped or timed out
        self.data["all_ok"] = bool(statuses) and all(s == "ok" for s in statuses) and not self.data["skipped"]
        self.data["total_seconds"] = round(elapsed(), 1)
        text = json.dumps(self.data, indent=2) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "gpu_check.json").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--archs", default="resnet50,vit_base_patch16_224")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--recipe_arch", default="resnet18", help="backbone of the recipe runs (random weights)")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--loader_images", type=int, default=2048)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); run it on a GPU machine")
    header = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu",
              "gpus": torch.cuda.device_count() if args.device == "cuda" else 0, "torch": torch.__version__,
              "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": "bash bench/gpu_check.sh" if args.device == "cuda" else " ".join(sys.argv)}
    for name in ("transformers", "accelerate", "timm", "deepspeed"):
        try:
            header[name] = __import__(name).__version__
        except Exception:
            header[name] = None
    report = Report(args.output, header)
    signal.signal(signal.SIGTERM, _terminated)

    plan = []
    for arch in [a for a in args.archs.split(",") if a]:  # --archs "": no speed part (rehearsing the rest)
        cnn = "resnet" in arch or "efficientnet" in arch or "convnext" in arch
        plan += [(arch, "bf16", cnn), (arch, "fp16", cnn)] + ([(arch, "bf16", False)] if cnn else [])
    step_rate = None
    for arch, precision, channels_last in plan:
        what = f"speed {arch} {precision} channels_last={channels_last}"
        if elapsed() > BUDGET_S * 0.3:
            report.skip(what, "time budget")
            continue
        try:
            row = speed(arch, precision, channels_last, args.batch, args.steps, args.warmup, args.device)
            row["status"] = "ok" if row["loss_finite"] else "FAILED"
            if step_rate is None and precision == "bf16":
                step_rate = row["images_per_s"]
        except Exception as err:
            row = {"arch": arch, "precision": precision, "channels_last": channels_last, "status": "FAILED",
                   "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
        report.add({"part": "speed", **row})
        if args.device == "cuda":
            torch.cuda.empty_cache()

    if elapsed() > BUDGET_S * 0.4:
        report.skip("loader", "time budget")
    else:
        try:
            row = loader(args.device, args.loader_images, batches=max(4, args.loader_images // 32 - 2))
            if step_rate:
                row["training_step_images_per_s"] = step_rate
                row["loader_over_step"] = round(row["images_per_s"] / step_rate, 2)
        except Exception as err:
            row = {"part": "loader", "status": "FAILED", "error": f"{type(err).__name__}: {str(err)[:300]}"}
        report.add(row)

    with tempfile.TemporaryDirectory() as tmp:
        if elapsed() > BUDGET_S * 0.5:
            report.skip("fsdp2_batchnorm_bf16", "time budget")
        else:
            report.add(fsdp_batchnorm(args.device, args.recipe_arch, Path(tmp)))
        for name in args.configs.split(","):
            if not_applicable(name, args.device):
                report.data.setdefault("not_applicable", []).append({"part": f"recipe {name}",
                                                                     "why": not_applicable(name, args.device)})
                continue
            reason = skip_reason(name, args.device)
            if reason is None and elapsed() > BUDGET_S:
                reason = "time budget"
            if reason:
                report.skip(f"recipe {name}", reason)
                continue
            try:
                row = recipe_run(name, Path(tmp), args.recipe_arch, args.device, timeout=min(240, BUDGET_S + 50 - elapsed()))
            except Exception as err:
                row = {"config": name, "status": "FAILED", "error": f"{type(err).__name__}: {str(err)[:300]}"}
            report.add({"part": "recipe", **row})
    report.data["finished"] = True
    report.write()
    print(f"gpu_check: {'all ok' if report.data['all_ok'] else 'NOT ALL OK'} in {report.data['total_seconds']} s "
          f"({len(report.data['skipped'])} skipped) -> {args.output}")
    sys.exit(0 if report.data["all_ok"] else 1)


if __name__ == "__main__":
    main()
