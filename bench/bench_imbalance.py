#!/usr/bin/env python
"""Imbalanced fine-tuning with and without a correction, written to bench/results/imbalance.json.

The embedded default (EfficientNet-Lite0 on MNIST-5k, 96 px) made imbalanced: the stratified 10 % validation split
the recipe would hold out stays balanced (50 images a class); of the other 4,500 images, digits 0-4 keep all theirs
and digits 5-9 keep one in ``--keep`` (10 % by default: ~45 against ~450, ratio ~10). The same fine-tune then runs
three times, interleaved per seed: no correction, ``--class_weighting balanced``, ``--sampler balanced``. Reported
per run: validation accuracy, macro-F1, the mean recall of the rare and of the common classes, the lowest recall.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python bench/bench_imbalance.py [--seeds 42] [--epochs 1] [--keep 0.1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RARE = [str(d) for d in range(5, 10)]
VARIANTS = {"none": [], "class_weighting": ["--class_weighting", "balanced"], "sampler": ["--sampler", "balanced"]}


def imbalanced_dataset(folder: Path, keep: float, seed: int) -> dict:
    """Save {train, validation} with the rare digits thinned; -> the train counts per class."""
    import numpy as np
    from datasets import DatasetDict

    from hf_transfer.data import load_image_classification_data

    data = load_image_classification_data("embedded:mnist", seed=seed)
    train = data.splits["train"]
    labels = np.asarray(train["label"])
    rng = np.random.default_rng(seed)
    rows = [i for i, y in enumerate(labels) if str(y) not in RARE or rng.random() < keep]
    DatasetDict({"train": train.select(rows), "validation": data.splits["validation"]}).save_to_disk(str(folder))
    return {str(k): int(n) for k, n in zip(*np.unique(labels[rows], return_counts=True))}


def summarize(results: dict) -> dict:
    recall = {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith("eval_recall/")}
    common = [v for k, v in recall.items() if k not in RARE]
    rare = [v for k, v in recall.items() if k in RARE]
    return {"eval_accuracy": results["eval_accuracy"], "eval_macro_f1": results["eval_macro_f1"],
            "rare_class_recall_mean": sum(rare) / len(rare), "common_class_recall_mean": sum(common) / len(common),
            "lowest_recall": min(recall.values()), "train_runtime": results.get("train_runtime"),
            "recall": recall}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--epochs", default="1")
    parser.add_argument("--keep", type=float, default=0.1)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "imbalance.json"))
    args = parser.parse_args()

    from hf_transfer.arguments import finetune_argument_types, parse_args
    from hf_transfer.jobs.finetune import run_finetune

    runs = []
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        counts = imbalanced_dataset(Path(tmp) / "data", args.keep, seed=42)
        print(f"train images per class: {counts}", flush=True)
        for seed in args.seeds:
            for name, flags in VARIANTS.items():
                start = time.perf_counter()
                argv = ["--dataset_name", str(Path(tmp) / "data"), "--image_size", "96", "--num_train_epochs", args.epochs, "--seed", str(seed),
                        "--output_dir", str(Path(tmp) / f"{name}-{seed}"), "--disable_tqdm", "true", *flags]
                results = run_finetune(*parse_args(finetune_argument_types(), argv))
                row = {"variant": name, "seed": seed, **summarize(results), "wall_seconds": round(time.perf_counter() - start, 1)}
                runs.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "recall"}), flush=True)
    means = {}
    for name in VARIANTS:
        rows = [r for r in runs if r["variant"] == name]
        means[name] = {key: round(sum(r[key] for r in rows) / len(rows), 4)
                       for key in ("eval_accuracy", "eval_macro_f1", "rare_class_recall_mean", "common_class_recall_mean", "lowest_recall")}
    payload = {"command": "python bench/bench_imbalance.py " + " ".join(sys.argv[1:]), "train_class_counts": counts,
               "epochs": args.epochs, "seeds": args.seeds, "means": means, "runs": runs,
               "load_average_at_start": [round(x, 2) for x in load], "machine": platform.platform(),
               "cpus": os.cpu_count()}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(means, indent=2))


if __name__ == "__main__":
    main()
