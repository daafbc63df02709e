#!/usr/bin/env python
"""Single depths vs concatenated depths vs avg+max pooling vs the MLP probe vs a kernel SVM, on embedded data.

For each case (EfficientNet-Lite0, pretrained, frozen; 96 px): features of every layer that a variant needs are
computed once (through the library's feature cache), then every (layer, probe) pair is fitted with the library's
cross-validation (3 folds on train) and scored on the validation split. Also measured: concatenation with and without
the per-block variance equalization (`BlockStandardScaler`), and class weighting on an imbalanced subset of MNIST.
Writes bench/results/probe_variants.json.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python bench/bench_probe_variants.py [--cases mnist500,digits500,lfw]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hf_transfer import load_backbone  # noqa: E402
from hf_transfer.backbones import build_layer_map, data_config, set_preprocessing  # noqa: E402
from hf_transfer.data import load_image_classification_data  # noqa: E402
from hf_transfer.features import FeatureCache, compute_features, concat_features, parse_layers  # noqa: E402
from hf_transfer.probes import ProbeConfig, evaluate_probe, fit_probe  # noqa: E402
from hf_transfer.runtime import configure_cpu_threads, say  # noqa: E402
from hf_transfer.transforms import with_transforms  # noqa: E402

CASES = {
    "mnist500": ("embedded:mnist", 500, 500),
    "digits500": ("embedded:digits", 500, None),
    "lfw": ("embedded:lfw", None, None),
}
# (layers spec, pooling, probes); the auto depths of Lite0 are 3, 7, 12
VARIANTS = [
    ("3,7,12,pooled,concat", "avg", ("logreg", "rbf_svm")),
    ("12,concat", "avgmax", ("logreg", "rbf_svm")),
    ("12,pooled,concat", "avg", ("mlp",)),
]


def row(result, split: str = "validation") -> dict:
    return {
        "layer": result.layer.spec + ("" if result.layer.is_pooled or "avg+max" not in result.layer.name else " avgmax"),
        "probe": result.probe,
        "cv_accuracy": round(result.cv_metrics["accuracy"], 4),
        "cv_macro_f1": round(result.cv_metrics["macro_f1"], 4),
        "cv_accuracy_std": round(result.cv_metrics["accuracy_std"], 4),
        "val_accuracy": round(result.eval_metrics.get(f"{split}_accuracy", float("nan")), 4),
        "val_macro_f1": round(result.eval_metrics.get(f"{split}_macro_f1", float("nan")), 4),
        result.param_name: result.param_value,
        "fit_seconds": round(result.fit_seconds, 2),
    }


def run_case(name: str, args, cache: FeatureCache) -> dict:
    dataset, n_train, n_eval = CASES[name]
    data = load_image_classification_data(dataset, max_train_samples=n_train, max_eval_samples=n_eval, seed=args.seed)
    model = load_backbone(args.model, labels=data.labels)
    set_preprocessing(model, args.image_size)
    layer_map = build_layer_map(model)
    splits = with_transforms(data.splits, data, data_config(model), image_size=args.image_size, augmentation="none")
    config = ProbeConfig(cv_folds=3, seed=args.seed)
    rows, ablation = [], []
    feature_seconds = 0.0
    for spec, pooling, probes in VARIANTS:
        layers = parse_layers(spec, layer_map, pooling)
        fs = compute_features(model, splits, layers, layer_map=layer_map, cache=cache, image_size=args.image_size)
        feature_seconds += fs.seconds
        train, val = fs.features["train"], fs.features["validation"]
        y_train, y_val = fs.labels["train"], fs.labels["validation"]
        for layer in layers:
            blocks = [train[p.key].shape[1] for p in layer.parts] if layer.is_concat else None
            for probe in probes:
                result = fit_probe(probe, layer, train[layer.key], y_train, config, blocks=blocks)
                evaluate_probe(result, val[layer.key], y_val, prefix="validation")
                rows.append(row(result))
                say(f"{name:10s} {rows[-1]}")
                if blocks and probe != "mlp":  # the same concatenation without the per-block equalization
                    plain = fit_probe(probe, layer, train[layer.key], y_train, config)
                    evaluate_probe(plain, val[layer.key], y_val, prefix="validation")
                    ablation.append({**row(plain), "blocks_equalized": False})
                    ablation.append({**rows[-1], "blocks_equalized": True})
    case = {"dataset": dataset, "train": len(splits["train"]), "validation": len(splits["validation"]),
            "classes": len(data.labels), "feature_seconds": round(feature_seconds, 1), "results": rows,
            "concat_block_equalization": ablation}
    exportable = [r for r in rows if r["probe"] in ("logreg", "mlp")]
    best, best_export = max(rows, key=lambda r: r["cv_accuracy"]), max(exportable, key=lambda r: r["cv_accuracy"])
    singles = [r for r in rows if r["probe"] == "logreg" and "+" not in r["layer"]]
    case["summary"] = {
        "best_by_cv": best,
        "export_auto_would_pick": best_export,
        # as the library's report: only a strictly higher CV score counts (ties go to the exportable probe)
        "better_non_exportable": best if best["cv_accuracy"] > best_export["cv_accuracy"] else None,
        "best_single_layer_logreg": max(singles, key=lambda r: r["cv_accuracy"]),
        "concat_logreg": next(r for r in rows if r["probe"] == "logreg" and r["layer"] == "3+7+12+pooled"),
    }
    if name == "mnist500":
        case["class_weighting"] = imbalanced(fs_for(model, splits, layer_map, cache, args), config)
    return case


def fs_for(model, splits, layer_map, cache, args):
    return compute_features(model, splits, parse_layers("12,concat", layer_map), layer_map=layer_map, cache=cache,
                            image_size=args.image_size)


def imbalanced(fs, config: ProbeConfig) -> list[dict]:
    """Classes 5-9 cut to a fifth of their training images; the validation split stays as it is."""
    y = fs.labels["train"]
    rng = np.random.default_rng(0)
    keep = np.concatenate([np.flatnonzero(y == c) if c < 5 else rng.permutation(np.flatnonzero(y == c))[:max(3, (y == c).sum() // 5)]
                           for c in np.unique(y)])
    keep.sort()
    out = []
    for layer in fs.layers:
        X = concat_features(fs.features["train"], layer)[keep]
        blocks = [fs.features["train"][p.key].shape[1] for p in layer.parts] if layer.is_concat else None
        for weighting in (None, "balanced"):
            cfg = ProbeConfig(cv_folds=config.cv_folds, seed=config.seed, class_weight=weighting, select_by="macro_f1")
            result = fit_probe("logreg", layer, X, y[keep], cfg, blocks=blocks)
            evaluate_probe(result, concat_features(fs.features["validation"], layer), fs.labels["validation"], "validation")
            recall = result.per_class_recall["validation"]
            out.append({**row(result), "class_weighting": weighting or "none", "train_images": int(len(keep)),
                        "minority_recall_mean": round(float(np.mean([recall[str(c)] for c in range(5, 10)])), 4),
                        "majority_recall_mean": round(float(np.mean([recall[str(c)] for c in range(5)])), 4)})
            say(f"imbalanced {out[-1]}")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded:efficientnet_lite0")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--cache_dir", default=None, help="feature cache (default: the library's)")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "probe_variants.json"))
    args = parser.parse_args()
    threads = configure_cpu_threads()
    cache = FeatureCache(args.cache_dir)
    start = time.perf_counter()
    cases = {name: run_case(name, args, cache) for name in args.cases.split(",")}
    result = {
        "command": "PYTHONPATH=. HF_HUB_OFFLINE=1 python bench/bench_probe_variants.py " + " ".join(sys.argv[1:]),
        "model": args.model, "image_size": args.image_size, "cv_folds": 3, "seed": args.seed,
        "machine": {"cpus": os.cpu_count(), "torch_threads": threads, "python": platform.python_version(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "total_seconds": round(time.perf_counter() - start, 1),
        "cases": cases,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    say(f"wrote {args.output} in {result['total_seconds']}s")


if __name__ == "__main__":
    main()
