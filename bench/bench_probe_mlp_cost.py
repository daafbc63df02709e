#!/usr/bin/env python
"""What the MLP probe costs against a logistic regression, per layer: bench/results/probe_mlp_cost.json.

Both fitted by `fit_probe` with the default `ProbeConfig` (CV over the default grid, then the final fit) on the same
cached features of the embedded backbone (`--layers auto`), timed one after the other in this process, twice in
the order logreg, mlp, mlp, logreg (a neighbour's burst on the shared CPU lands on both); held-out accuracy beside
each. `--probe auto` takes the MLP only when all layers together cost at most 2x the logistic regressions.

    PYTHONPATH=. HF_HUB_OFFLINE=1 nice -n 10 python bench/bench_probe_mlp_cost.py [--dataset embedded:digits]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from hf_transfer.backbones import adapter_for, build_layer_map, load_backbone
from hf_transfer.data import load_image_classification_data
from hf_transfer.features import FeatureCache, ProcessorImages, compute_features, parse_layers, transform_fingerprint
from hf_transfer.probes import ProbeConfig, evaluate_probe, export_processor, fit_probe, resolve_probes
from hf_transfer.transforms import with_transforms


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="embedded:digits")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "probe_mlp_cost.json"))
    args = parser.parse_args()
    data = load_image_classification_data(args.dataset, seed=42)
    model = load_backbone("embedded:efficientnet_lite0", labels=data.labels)
    adapter = adapter_for(model)
    size = data.suggested_image_size or 224
    adapter.set_preprocessing(size)
    splits = with_transforms(data.splits, data, adapter.data_config(), image_size=size, augmentation="none")
    layer_map = build_layer_map(model)
    layers = parse_layers("auto", layer_map)
    processor = export_processor(adapter, size)
    features = compute_features(model, splits, layers, layer_map=layer_map, cache=FeatureCache(), image_size=size,
                                source=ProcessorImages(processor, data.image_column, data.label_column),
                                transform_key=transform_fingerprint(processor.to_json_string(), None, size))
    rows = {}
    for layer in layers:
        X, y = features.features["train"][layer.key], features.labels["train"]
        blocks = [features.features["train"][p.key].shape[1] for p in layer.parts] if layer.is_concat else None
        row, seconds = {}, {"logreg": 0.0, "mlp": 0.0}
        for kind in ("logreg", "mlp", "mlp", "logreg"):
            start = time.perf_counter()
            result = fit_probe(kind, layer, X, y, ProbeConfig(), blocks=blocks)
            seconds[kind] += (time.perf_counter() - start) / 2
            evaluate_probe(result, features.features["validation"][layer.key], features.labels["validation"])
            row[kind] = {"fit_seconds": round(seconds[kind], 2), "cv_accuracy": round(result.cv_score, 4),
                         "validation_accuracy": round(result.eval_metrics["eval_accuracy"], 4)}
        row["mlp_over_logreg"] = round(seconds["mlp"] / seconds["logreg"], 1)
        row["load_1min"] = round(os.getloadavg()[0], 2)
        rows[layer.name] = row
        print(layer.name, row, flush=True)
    total = {kind: round(sum(row[kind]["fit_seconds"] for row in rows.values()), 2) for kind in ("logreg", "mlp")}
    n_train = len(features.labels["train"])
    out = {"benchmark": "probe_mlp_cost", "dataset": args.dataset, "train_images": n_train,
           "command": "PYTHONPATH=. HF_HUB_OFFLINE=1 nice -n 10 python bench/bench_probe_mlp_cost.py",
           "note": "shared, noisy 2-core CPU; both probes timed in this process on the same cached features; "
                   "fit_seconds: the mean of two fits, each a full CV over the default grid plus the final fit",
           "mlp_settings": {k: v for k, v in vars(ProbeConfig()).items() if k.startswith("mlp_")},
           "layers": rows, "all_layers_fit_seconds": total,
           "all_layers_mlp_over_logreg": round(total["mlp"] / total["logreg"], 2), "target_ratio": 2.0,
           "mlp_in_auto": "mlp" in resolve_probes("auto", n_train)}
    Path(args.output).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
