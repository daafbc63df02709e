#!/usr/bin/env python
"""What the OpenMP wait policy costs a training step, and what the recipes' choice of it sees
(bench/results/wait_policy.json).

    PYTHONPATH=. python bench/bench_wait_policy.py

1. Step time: the embedded Lite0, full fine-tune (AdamW, every parameter trainable), batch 32 at 64 px (the suite's
   120-second cases), in a fresh process per run, OMP_WAIT_POLICY unset (libgomp's default: spin briefly, then
   sleep) against PASSIVE, alternating. Median of the timed steps after a warm-up. Then the same beside a
   neighbour that keeps one of the cores busy.
2. What `choose_wait_policy` reads beside and after a 2-thread job: the 1-minute load average (the rule before)
   and the runnable tasks now (the rule after), while the job runs, when it ends and 5 s later.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "wait_policy.json"

STEP_TIMER = r"""
import json, statistics, time, torch
from hf_transfer.backbones import load_backbone_with_adapter
model, _ = load_backbone_with_adapter("embedded:efficientnet_lite0", labels=[str(i) for i in range(10)])
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x, y = torch.randn(32, 3, 64, 64), torch.randint(0, 10, (32,))
times = []
for step in range(WARMUP + STEPS):
    began = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y)
    loss.backward(); opt.step(); opt.zero_grad()
    times.append(time.perf_counter() - began)
model.eval()
with torch.no_grad():
    began = time.perf_counter()
    for _ in range(10):
        model(pixel_values=torch.randn(64, 3, 64, 64))
    eval_seconds = (time.perf_counter() - began) / 10
print(json.dumps({"step_ms": statistics.median(times[WARMUP:]) * 1000, "eval_batch_ms": eval_seconds * 1000,
                  "threads": torch.get_num_threads()}))
"""

BUSY = "import torch, time\nx = torch.randn(512, 512)\nend = time.time() + SECONDS\nwhile time.time() < end:\n    x @ x\n"


def time_steps(policy: str | None, warmup: int = 10, steps: int = 30) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    code = STEP_TIMER.replace("WARMUP", str(warmup)).replace("STEPS", str(steps))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def what_the_rules_read(busy_seconds: float = 70.0) -> dict:
    """A 2-thread busy process: the old and new readings while it runs (near its end), at its end, 5 s later."""
    sys.path.insert(0, str(ROOT))
    from hf_transfer_openmp import others_runnable

    def reading():
        return {"load_1min": round(os.getloadavg()[0], 2), "others_runnable": round(others_runnable(), 2)}

    env = dict(os.environ, OMP_NUM_THREADS="2")
    busy = subprocess.Popen([sys.executable, "-c", BUSY.replace("SECONDS", str(busy_seconds))], env=env)
    time.sleep(busy_seconds - 5)
    readings = {"while_it_runs": reading()}
    busy.wait()
    readings["at_its_end"] = reading()
    time.sleep(5)
    readings["5_s_later"] = reading()
    return readings


def main():
    cores = os.cpu_count()
    runs = {"unset": [], "PASSIVE": []}
    load_before = os.getloadavg()[0]
    for _ in range(3):
        for policy in ("unset", "PASSIVE"):
            runs[policy].append(time_steps(None if policy == "unset" else policy))
    # beside a neighbour that keeps one core busy (one spinning Python process)
    beside = {"unset": [], "PASSIVE": []}
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for _ in range(2):
            for policy in ("unset", "PASSIVE"):
                beside[policy].append(time_steps(None if policy == "unset" else policy))
    finally:
        spinner.kill()
    beside_step = {p: statistics.median(r["step_ms"] for r in v) for p, v in beside.items()}
    step = {p: statistics.median(r["step_ms"] for r in v) for p, v in runs.items()}
    evals = {p: statistics.median(r["eval_batch_ms"] for r in v) for p, v in runs.items()}
    results = {
        "command": "PYTHONPATH=. python bench/bench_wait_policy.py", "cores": cores,
        "load_1min_before": round(load_before, 2), "runs": runs,
        "step_ms_median": {p: round(v, 1) for p, v in step.items()},
        "eval_batch_ms_median": {p: round(v, 1) for p, v in evals.items()},
        "passive_over_unset_step": round(step["PASSIVE"] / step["unset"], 2),
        "passive_over_unset_eval": round(evals["PASSIVE"] / evals["unset"], 2),
        "beside_one_busy_core": {"runs": beside, "step_ms_median": {p: round(v, 1) for p, v in beside_step.items()},
                                 "unset_over_passive_step": round(beside_step["unset"] / beside_step["PASSIVE"], 2)},
        "after_a_two_thread_job": what_the_rules_read(),
        "old_rule": "PASSIVE when the 1-minute load average >= cores",
        "new_rule": "PASSIVE when another task is runnable now (on average over a tenth of a second, >= 0.5)",
    }
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
