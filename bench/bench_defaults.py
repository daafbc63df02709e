#!/usr/bin/env python
"""The embedded default fine-tune end to end, and the two defaults it rests on, written to bench/results/defaults.json.

Runs `python recipes/finetune.py` exactly as a user would (a fresh process each, the default one epoch) in three
variants, interleaved per seed:

* `default`: no flags (augmentation `auto` = none under 3 epochs, no gradient clipping);
* `gentle`: `--augmentation gentle` (what `auto` picks from 3 epochs on), to show why one epoch goes without;
* `clip_1.0`: `--max_grad_norm 1.0` (Trainer's own default), to show why clipping is off.

Per run: validation accuracy and macro-F1, `train_runtime`, the whole process's wall time (start-up, data, training,
evaluation, saving), and the 1-minute load average before and after (the CPU is shared: times are indicative, the
accuracies compare the variants).

    PYTHONPATH=. HF_HUB_OFFLINE=1 nice -n 5 python bench/bench_defaults.py [--seeds 42] [--variants default gentle]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"default": [], "gentle": ["--augmentation", "gentle"], "clip_1.0": ["--max_grad_norm", "1.0"]}
OUT = ROOT / "bench" / "results" / "defaults.json"


def run_once(flags: list[str], seed: int, folder: Path) -> dict:
    command = [sys.executable, str(ROOT / "recipes" / "finetune.py"), "--output_dir", str(folder), "--seed", str(seed),
               "--disable_tqdm", "true", *flags]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    results = json.loads((folder / "all_results.json").read_text())
    return {"eval_accuracy": results["eval_accuracy"], "eval_macro_f1": round(results["eval_macro_f1"], 4),
            "train_runtime_s": round(results["train_runtime"], 1), "wall_s": round(wall, 1),
            "load_1min_before": round(load_before, 2), "load_1min_after": round(os.getloadavg()[0], 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    existing = json.loads(OUT.read_text()) if OUT.is_file() else {}
    runs = existing.get("runs", {})
    commands = existing.get("commands", [existing["command"]] if "command" in existing else [])
    commands.append("PYTHONPATH=. HF_HUB_OFFLINE=1 nice -n 5 python bench/bench_defaults.py " + " ".join(sys.argv[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name in args.variants:
                key = f"{name}@seed{seed}"
                runs[key] = {"flags": " ".join(VARIANTS[name]) or "(none)", "seed": seed,
                             **run_once(VARIANTS[name], seed, Path(tmp) / key)}
                print(key, runs[key], flush=True)
                write(runs, commands)
    write(runs, commands)


def write(runs: dict, commands: list[str]) -> None:
    means = {}
    for name in VARIANTS:
        mine = [r for k, r in runs.items() if k.split("@")[0] == name]
        if mine:
            means[name] = {metric: round(statistics.mean(r[metric] for r in mine), 4)
                           for metric in ("eval_accuracy", "eval_macro_f1", "train_runtime_s", "wall_s")}
            means[name]["runs"] = len(mine)
    OUT.write_text(json.dumps({
        "commands": commands,  # the runs merge: one line per invocation
        "model": "embedded:efficientnet_lite0", "dataset": "embedded:mnist (4,500 train / 500 validation), 96 px",
        "epochs": 1, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                 "python": platform.python_version()},
        "note": "shared 2-core CPU: times are indicative (load beside each run); accuracies compare the variants",
        "runs": runs, "means": means}, indent=1) + "\n")


if __name__ == "__main__":
    main()
