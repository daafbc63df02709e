#!/usr/bin/env python
"""Behaviour unchanged by a refactor: the same short runs, before (a commit, checked out with `git worktree`) and
after (this working tree), must give bit-identical model.safetensors and identical results.

    python bench/refactor_identity.py --before 9035cf2             # runs both sides (about 15 min on 2 busy cores)
    python bench/refactor_identity.py --before 9035cf2 --after design   # a commit instead of the working tree
    python bench/refactor_identity.py --before_json bench/results/refactor_identity.json   # the after side only

Compared per run: the sha256 of model.safetensors and of transfer_plan.json, and all_results.json without the keys,
at any depth, that measure time or the feature cache (they differ between any two runs). Writes bench/results/refactor_identity.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--max_train_samples", "400", "--max_eval_samples", "100", "--seed", "42"]
RUNS = {
    "finetune_default": ["recipes/finetune.py", *COMMON, "--num_train_epochs", "1"],
    "finetune_lp_ft": ["recipes/finetune.py", *COMMON, "--strategy", "lp_ft", "--lp_epochs", "1", "--num_train_epochs", "2"],
    "finetune_partial_layer_decay": ["recipes/finetune.py", *COMMON, "--num_train_epochs", "1", "--freeze", "fraction:0.5",
                                     "--layer_decay", "0.8"],
    "linear_probe_default": ["recipes/linear_probe.py", "--max_train_samples", "400", "--max_eval_samples", "100"],
}
VOLATILE = ("runtime", "per_second", "seconds", "cache", "backbone_forward_images")


def sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def stable(value):
    """``value`` without the keys, at any depth, that measure time or the feature cache."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in sorted(value.items()) if not any(part in k for part in VOLATILE)}
    return [stable(v) for v in value] if isinstance(value, list) else value


def stable_results(path: Path) -> dict:
    return stable(json.loads(path.read_text()))


def run_side(source: Path, workdir: Path) -> dict:
    """Every run of RUNS with the code in ``source``, into fresh folders under ``workdir``."""
    env = {**os.environ, "PYTHONPATH": str(source), "HF_HUB_OFFLINE": "1"}
    found = {}
    for name, argv in RUNS.items():
        out = workdir / name
        started = time.perf_counter()
        subprocess.run([sys.executable, *argv, "--output_dir", str(out)], cwd=source, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        found[name] = {"model_sha256": sha256(out / "model.safetensors"),
                       "plan_sha256": sha256(out / "transfer_plan.json"),
                       "results": stable_results(out / "all_results.json"),
                       "seconds": round(time.perf_counter() - started, 1)}
        print(f"{source.name}: {name} done in {found[name]['seconds']} s", flush=True)
    return found


def run_at(commit: str, folder: Path) -> dict:
    """`run_side` on ``commit``, checked out in a temporary git worktree."""
    git("worktree", "add", "--detach", str(folder / "src"), commit)
    try:
        return run_side(folder / "src", folder / "runs")
    finally:
        git("worktree", "remove", "--force", str(folder / "src"))


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="the commit before the refactor (run in a temporary git worktree)")
    parser.add_argument("--after", help="a commit to compare instead of this working tree (also run in a worktree)")
    parser.add_argument("--before_json", help="a results file from an earlier run: reuse its 'before' side")
    parser.add_argument("--output", default=str(ROOT / "bench/results/refactor_identity.json"))
    args = parser.parse_args()
    if not args.before and not args.before_json:
        parser.error("pass --before COMMIT or --before_json FILE")
    with tempfile.TemporaryDirectory(prefix="refactor_identity-") as tmp:
        tmp = Path(tmp)
        if args.before_json:
            recorded = json.loads(Path(args.before_json).read_text())
            before, before_commit = recorded["before"], recorded["before_commit"]
        else:
            before_commit = git("rev-parse", args.before)
            before = run_at(before_commit, tmp / "before")
        after = run_at(git("rev-parse", args.after), tmp / "after") if args.after else run_side(ROOT, tmp / "after_runs")
    identical = {name: {"model": before[name]["model_sha256"] == after[name]["model_sha256"],
                        "plan": before[name]["plan_sha256"] == after[name]["plan_sha256"],
                        "results": stable(before[name]["results"]) == stable(after[name]["results"])} for name in RUNS}
    payload = {
        "command": " ".join(["python bench/refactor_identity.py", *sys.argv[1:]]),
        "before_commit": before_commit,
        "after_commit": git("rev-parse", args.after) if args.after else
                        git("rev-parse", "HEAD") + (" + uncommitted changes" if git("status", "--porcelain") else ""),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "all_identical": all(all(v.values()) for v in identical.values()),
        "identical": identical,
        "before": before,
        "after": after,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps({"all_identical": payload["all_identical"], "identical": identical}, indent=2))


if __name__ == "__main__":
    main()
