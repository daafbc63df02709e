#!/usr/bin/env python
"""--strategy lora against --strategy partial (--freeze fraction:0.5) on the embedded default, same epochs and seed.

Each configuration is one run of `recipes/finetune.py` (embedded EfficientNet-Lite0 on embedded MNIST-5k, the
recipe's defaults otherwise), one after the other in fresh processes. Reported per run: validation accuracy and
macro-F1, trainable values and their share of the model (from the printed plan), train_runtime and wall time, and
for LoRA the adapter's size on disk. Times are indicative on a shared machine; accuracies are what this compares.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python bench/bench_lora.py                      # lora vs partial, 1 epoch
    PYTHONPATH=. HF_HUB_OFFLINE=1 python bench/bench_lora.py --epochs 2 --runs lora partial lora_lr3e-2

Writes bench/results/lora.json (runs already in the file and not re-run are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "lora": ["--strategy", "lora"],
    "partial": ["--strategy", "partial", "--freeze", "fraction:0.5"],
    "lora_lr3e-2": ["--strategy", "lora", "--learning_rate", "3e-2"],
    "lora_lr3e-3": ["--strategy", "lora", "--learning_rate", "3e-3"],
    "lora_r16": ["--strategy", "lora", "--lora_r", "16", "--lora_alpha", "32"],
    "lora_half": ["--strategy", "lora", "--freeze", "fraction:0.5"],
    "full": [],
}
TRAINABLE_LORA = re.compile(r"trainable: ([\d,]+) values, ([\d.]+)% of the model's ([\d.]+)M")
FROZEN_SHARE = re.compile(r"frozen for the whole run: .*?, ([\d.]+)% of the parameters \(([\d.]+)M of ([\d.]+)M values\)")


def run(name: str, flags: list[str], epochs: float, seed: int, scratch: Path) -> dict:
    out = scratch / name
    command = [sys.executable, str(ROOT / "recipes" / "finetune.py"), *flags, "--num_train_epochs", str(epochs),
               "--seed", str(seed), "--output_dir", str(out), "--overwrite_output_dir"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    results = json.loads((out / "all_results.json").read_text())
    plan = json.loads((out / "transfer_plan.json").read_text())["config"]
    record = {"flags": " ".join(flags) or "(defaults)", "eval_accuracy": round(results["eval_accuracy"], 4),
              "eval_macro_f1": round(results["eval_macro_f1"], 4), "train_runtime_s": round(float(results["train_runtime"]), 1),
              "wall_s": round(wall, 1), "epochs": epochs, "seed": seed,
              "learning_rate": plan["learning_rate"]}
    if plan["strategy"] == "lora":
        record["lora_learning_rate"] = plan["lora_learning_rate"]
    lora = TRAINABLE_LORA.search(result.stdout)
    if lora:
        record.update(trainable_values=int(lora.group(1).replace(",", "")), trainable_share_pct=float(lora.group(2)))
        adapter = out / "adapter" / "adapter_model.safetensors"
        record["adapter_file_mb"] = round(adapter.stat().st_size / 2**20, 3)
    else:
        frozen = FROZEN_SHARE.search(result.stdout)
        total = float(frozen.group(3)) * 1e6
        record.update(trainable_values=int(round(total - float(frozen.group(2)) * 1e6, -3)),
                      trainable_share_pct=round(100 - float(frozen.group(1)), 2))
    print(f"{name}: {record}", flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["lora", "partial"], choices=sorted(RUNS))
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "lora.json"))
    args = parser.parse_args()
    path = Path(args.out)
    report = json.loads(path.read_text()) if path.is_file() else {}
    report.update({"model": "embedded:efficientnet_lite0", "dataset": "embedded:mnist (4,500 train / 500 validation)",
                   "command": "python recipes/finetune.py <flags> --num_train_epochs E --seed S",
                   "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at start",
                   "note": "times are indicative (shared CPU); accuracies compare the strategies"})
    runs = report.setdefault("runs", {})
    with tempfile.TemporaryDirectory(prefix="bench_lora_") as scratch:
        for name in args.runs:
            key = f"{name}@{args.epochs:g}ep_seed{args.seed}"
            runs[key] = run(name, RUNS[name], args.epochs, args.seed, Path(scratch))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=1) + "\n")  # after each run: a long bench keeps what it has
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
