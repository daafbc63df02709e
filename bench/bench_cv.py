#!/usr/bin/env python
"""The default cross-validation as a user runs it, timed, written to bench/results/cv_default.json.

Runs ``python recipes/cross_validate.py --folds 3`` (embedded default: EfficientNet-Lite0 on MNIST-5k, one epoch a
fold, 3,000 train / 1,500 validation images per fold) in a fresh process; the wall time includes the interpreter
and every import. The machine's load average before and after is recorded beside it, since a shared CPU can make
the same run several times slower.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python bench/bench_cv.py [--folds 3] [-- extra recipe flags]
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

ROOT = Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "cv_default.json"))
    parser.add_argument("extra", nargs="*", help="more flags for the recipe (after --)")
    args = parser.parse_args()

    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cv"
        command = [sys.executable, "recipes/cross_validate.py", "--folds", str(args.folds), "--output_dir", str(out),
                   "--disable_tqdm", "true", *args.extra]
        load_before = os.getloadavg()
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        load_after = os.getloadavg()
        if done.returncode != 0:
            sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        results = json.loads((out / "cv_results.json").read_text())
    chosen = results["chosen"]
    payload = {
        "command": "python recipes/cross_validate.py --folds " + " ".join([str(args.folds), *args.extra]),
        "wall_seconds": round(wall, 1), "target_seconds": 300,
        "cv_accuracy": f"{chosen['mean']['accuracy']:.4f} ± {chosen['std']['accuracy']:.4f}",
        "cv_macro_f1": f"{chosen['mean']['macro_f1']:.4f} ± {chosen['std']['macro_f1']:.4f}",
        "per_fold_accuracy": chosen["per_fold"]["accuracy"], "per_fold_macro_f1": chosen["per_fold"]["macro_f1"],
        "fold_seconds": [f["seconds"] for f in chosen["folds"]],
        "fold_train_runtime": [f["metrics"].get("train_runtime") for f in chosen["folds"]],
        "load_average_before": [round(x, 2) for x in load_before], "load_average_after": [round(x, 2) for x in load_after],
        "machine": platform.platform(), "cpus": os.cpu_count(),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
