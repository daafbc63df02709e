#!/usr/bin/env python
"""Why the default probe's validation accuracy moved: each C of the logreg grid, fixed, on the embedded default.

The recipe's defaults (EfficientNet-Lite0 on MNIST-5k at 96 px) with ``--layers concat`` (the layer both today's
and the new code export) and the C grid cut to one value at a time: the CV accuracy that chooses C and the
validation accuracy of the export, per C, on the same cached features. Writes bench/results/probe_c_choice.json.

    PYTHONPATH=. HF_HUB_OFFLINE=1 nice -n 10 python bench/bench_probe_c_choice.py
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

from hf_transfer.arguments import DataArguments, ModelArguments
from hf_transfer.jobs import probe as job
from hf_transfer.probes import ProbeConfig


def main():
    grid = ProbeConfig().logreg_c
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HF_TRANSFER_CACHE"] = str(Path(tmp) / "cache")
        real = job.ProbeConfig
        for c in grid:
            job.ProbeConfig = functools.partial(real, logreg_c=(c,))
            try:
                results = job.run_linear_probe(ModelArguments(), DataArguments(), job.ProbeArguments(
                    layers="concat", probe="logreg", output_dir=str(Path(tmp) / f"run_{c}")))
            finally:
                job.ProbeConfig = real
            rows[str(c)] = {"C": c, "cv_accuracy": results["exported"]["cv_accuracy"],
                            "validation_accuracy": results["eval_accuracy"], "validation_images": results["eval_samples"],
                            "train_images": results["train_samples"]}
    chosen = max(grid, key=lambda c: (rows[str(c)]["cv_accuracy"], -grid.index(c)))
    ranked = sorted(rows.values(), key=lambda r: -r["cv_accuracy"])
    out = {"benchmark": "probe_c_choice", "command": "PYTHONPATH=. HF_HUB_OFFLINE=1 nice -n 10 python "
                                                    "bench/bench_probe_c_choice.py",
           "layer": "concat 3+7+12+pooled", "grid": list(grid), "per_c": [rows[str(c)] for c in grid],  # in grid order "cv_chooses": chosen,
           "cv_margin": round(ranked[0]["cv_accuracy"] - ranked[1]["cv_accuracy"], 5) if len(ranked) > 1 else None,
           "cv_margin_images": round((ranked[0]["cv_accuracy"] - ranked[1]["cv_accuracy"]) * ranked[0]["train_images"])
           if len(ranked) > 1 else None,
           "validation_images_apart": round(abs(ranked[0]["validation_accuracy"] - ranked[-1]["validation_accuracy"])
                                            * ranked[0]["validation_images"]),
           "load_1min": round(os.getloadavg()[0], 2)}
    path = Path(__file__).parent / "results" / "probe_c_choice.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
