#!/usr/bin/env python
"""Benchmark of the probe path, written to bench/results/probe.json (one run, numbers from the same process).

1. Feature-extraction throughput (`extract_features`: hooks, progress bar, batching) against a bare
   `torch.inference_mode` forward loop over the same transformed images (same batch size and memory format).
2. A linear probe on cached bottleneck features against 10 epochs of head-only training with `transformers.Trainer`
   (body frozen: requires_grad False and BatchNorm frozen to eval statistics), both reported with held-out accuracy.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python bench/bench_probe.py [--train 1000 --eval 300 --epochs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hf_transfer.backbones import build_layer_map, data_config, load_backbone, set_preprocessing
from hf_transfer.data import load_image_classification_data
from hf_transfer.features import FeatureCache, compute_features, extract_features, parse_layers
from hf_transfer.probes import ProbeConfig, evaluate_probe, fit_probe
from hf_transfer.runtime import configure_cpu_threads, say
from hf_transfer.transforms import with_transforms


def bare_forward_loop(model, dataset, batch_size: int) -> float:
    """Seconds for the plainest loop over the same images: slice, stack, forward_features + forward_head."""
    inner = model.timm_model
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(dataset), batch_size):
            x = torch.stack(dataset[i:i + batch_size]["pixel_values"]).contiguous(memory_format=torch.channels_last)
            inner.forward_head(inner.forward_features(x), pre_logits=True)
    return time.perf_counter() - start


def head_only_trainer(model_name, data, image_size, epochs, seed):
    """10 epochs of training only the classifier with Trainer; BatchNorm frozen (eval statistics)."""
    from timm.layers import freeze_batch_norm_2d
    from transformers import Trainer, TrainingArguments, set_seed

    from hf_transfer.metrics import ClassificationMetrics

    set_seed(seed)
    model = load_backbone(model_name, labels=data.labels)
    set_preprocessing(model, image_size)
    head = set(build_layer_map(model).head.param_names)
    for name, param in model.named_parameters():
        param.requires_grad = name in head
    model.timm_model = freeze_batch_norm_2d(model.timm_model)  # Trainer's model.train() must not move BN statistics
    model = model.to(memory_format=torch.channels_last)
    splits = with_transforms(data.splits, data, data_config(model), image_size=image_size, augmentation="none")
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=64,
                                 per_device_eval_batch_size=128, learning_rate=3e-3, lr_scheduler_type="cosine",
                                 warmup_steps=0.05, eval_strategy="no", save_strategy="no", report_to="none",
                                 remove_unused_columns=False, use_cpu=True, logging_steps=50, seed=seed,
                                 disable_tqdm=True, dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=splits["train"], compute_metrics=ClassificationMetrics())
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start
        metrics = trainer.evaluate(eval_dataset=splits["validation"])
    return train_seconds, metrics


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded:efficientnet_lite0")
    parser.add_argument("--dataset", default="embedded:mnist")
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--eval", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "probe.json"))
    args = parser.parse_args()
    threads = configure_cpu_threads()

    data = load_image_classification_data(args.dataset, max_train_samples=args.train, max_eval_samples=args.eval, seed=args.seed)
    model = load_backbone(args.model, labels=data.labels)
    set_preprocessing(model, args.image_size)
    layer_map = build_layer_map(model)
    splits = with_transforms(data.splits, data, data_config(model), image_size=args.image_size, augmentation="none")
    pooled = parse_layers("pooled", layer_map)
    model.eval().to(memory_format=torch.channels_last)

    # 1. throughput: interleave the two loops chunk by chunk (128 images, order swapped every chunk, two passes) and
    # sum each side's time: on this shared CPU a neighbour's burst then slows both sides alike.
    images = splits["train"]
    extract_features(model, images.select(range(args.batch_size)), pooled, layer_map=layer_map)  # warm-up
    ours, bare = [], []
    chunk = 2 * args.batch_size
    chunks = [images.select(range(i, min(i + chunk, len(images)))) for i in range(0, len(images), chunk)]
    for pass_ in range(2):
        for i, part in enumerate(chunks):
            order = ("ours", "bare") if (i + pass_) % 2 == 0 else ("bare", "ours")
            for side in order:
                if side == "ours":
                    start = time.perf_counter()
                    extract_features(model, part, pooled, layer_map=layer_map, batch_size=args.batch_size)
                    ours.append(time.perf_counter() - start)
                else:
                    bare.append(bare_forward_loop(model, part, args.batch_size))
    throughput = {
        "images": 2 * len(images),
        "extract_features_img_per_s": round(2 * len(images) / sum(ours), 1),
        "bare_inference_loop_img_per_s": round(2 * len(images) / sum(bare), 1),
        "ratio": round(sum(bare) / sum(ours), 3),
        "seconds_ours": round(sum(ours), 2),
        "seconds_bare": round(sum(bare), 2),
        "chunk_ratios_min_median_max": [round(float(x), 3) for x in np.percentile(np.array(bare) / np.array(ours), [0, 50, 100])],
        "target_ratio": 0.9,
    }
    say(f"throughput: {throughput}")

    # 2. probe on cached features vs head-only Trainer.
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = FeatureCache(cache_dir)
        start = time.perf_counter()
        first = compute_features(model, splits, pooled, layer_map=layer_map, cache=cache, image_size=args.image_size)
        extraction_seconds = time.perf_counter() - start
        start = time.perf_counter()
        cached = compute_features(model, splits, pooled, layer_map=layer_map, cache=cache, image_size=args.image_size)
        cache_load_seconds = time.perf_counter() - start
        assert cached.all_cached and first.forward_images > 0
        start = time.perf_counter()
        result = fit_probe("logreg", pooled[0], cached.features["train"]["pooled"], cached.labels["train"], ProbeConfig())
        evaluate_probe(result, cached.features["validation"]["pooled"], cached.labels["validation"])
        probe_seconds = time.perf_counter() - start
        # The recipe's short grid, and a wider one (6 values of C) to match the Trainer's accuracy at a higher cost.
        start = time.perf_counter()
        wide = fit_probe("logreg", pooled[0], cached.features["train"]["pooled"], cached.labels["train"],
                         ProbeConfig(logreg_c=(0.003, 0.01, 0.03, 0.1, 0.3, 1.0), max_iter=300))
        evaluate_probe(wide, cached.features["validation"]["pooled"], cached.labels["validation"])
        wide_seconds = time.perf_counter() - start
    say(f"probe: {result.summary()} in {probe_seconds:.2f}s (+{cache_load_seconds:.2f}s cache load)")
    say(f"probe, wide C grid: {wide.summary()} in {wide_seconds:.2f}s")
    trainer_seconds, trainer_metrics = head_only_trainer(args.model, data, args.image_size, args.epochs, args.seed)
    say(f"trainer: {trainer_seconds:.1f}s {trainer_metrics}")
    comparison = {
        "train_images": len(splits["train"]),
        "eval_images": len(splits["validation"]),
        "probe": "logreg (C by 3-fold CV over 2 values) on cached pooled features",
        "probe_seconds_on_cached_features": round(probe_seconds + cache_load_seconds, 2),
        "probe_eval_accuracy": round(result.eval_metrics["eval_accuracy"], 4),
        "probe_eval_macro_f1": round(result.eval_metrics["eval_macro_f1"], 4),
        "probe_wide_grid_seconds_on_cached_features": round(wide_seconds + cache_load_seconds, 2),
        "probe_wide_grid_C": wide.param_value,
        "probe_wide_grid_eval_accuracy": round(wide.eval_metrics["eval_accuracy"], 4),
        "probe_wide_grid_eval_macro_f1": round(wide.eval_metrics["eval_macro_f1"], 4),
        "feature_extraction_seconds_once": round(extraction_seconds, 2),
        "trainer_head_only_epochs": args.epochs,
        "trainer_head_only_seconds": round(trainer_seconds, 2),
        "trainer_eval_accuracy": round(trainer_metrics["eval_accuracy"], 4),
        "trainer_eval_macro_f1": round(trainer_metrics["eval_macro_f1"], 4),
        "speedup_probe_vs_trainer": round(trainer_seconds / (probe_seconds + cache_load_seconds), 1),
        "speedup_wide_grid_probe_vs_trainer": round(trainer_seconds / (wide_seconds + cache_load_seconds), 1),
        "speedup_including_one_extraction": round(trainer_seconds / (probe_seconds + extraction_seconds), 1),
        "target_speedup": 5.0,
    }
    payload = {
        "benchmark": "probe",
        "model": args.model,
        "dataset": args.dataset,
        "image_size": args.image_size,
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "load_average_at_end": os.getloadavg(),
        "note": "shared, noisy 2-core CPU; both sides of each comparison ran in this one process",
        "feature_extraction_throughput": throughput,
        "probe_vs_head_only_trainer": comparison,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(payload, indent=2) + "\n")
    say(f"wrote {args.output}")
    return payload


if __name__ == "__main__":
    main()
