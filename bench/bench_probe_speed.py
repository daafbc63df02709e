#!/usr/bin/env python
"""Today's probe path against the new one, side by side in one run: bench/results/probe_speed.json.

1. ``recipes/linear_probe.py`` with its defaults (embedded: EfficientNet-Lite0 on MNIST-5k at 96 px) and on the 8x8
   digits, run by a git worktree of main at the start commit ("today") and by this tree ("new"), each with an empty
   feature cache, then once more on its warm cache. Wall time of the whole process and validation accuracy.
   The two sides alternate per dataset so that a neighbour's burst on the shared CPU does not land on one side only.
2. Feature extraction (`compute_features` with the export's processor, hooks, cache writes) against a bare batched
   loop over the same images that decodes each once, preprocesses with the same processor and runs the forward.

    PYTHONPATH=. HF_HUB_OFFLINE=1 nice -n 10 python bench/bench_probe_speed.py [--start 9035cf2] [--only digits]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the validation split each case scores on (the recipe holds out a stratified 10% of train): accuracies -> images
VALIDATION_IMAGES = {"default": 500, "digits": 180}
# the images each case pushes through the backbone on a first run (train + validation; all_results.json's
# backbone_forward_images): the extraction rate the half-time target needs is computed from it
FORWARD_IMAGES = {"default": 5000, "digits": 1797}
DATASETS = {"embedded default (MNIST-5k, Lite0, 96 px)": [], "digits (8x8, Lite0)": ["--dataset_name", "embedded:digits"]}


def start_worktree(commit: str) -> Path:
    """A detached git worktree of the start commit (today's code), made once."""
    path = Path(tempfile.gettempdir()) / f"hf_transfer_probe_bench_{commit}"
    if not (path / "recipes" / "linear_probe.py").exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit], check=True,
                       capture_output=True)
    return path


def run_recipe(root: Path, flags: list[str], cache: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "HF_TRANSFER_CACHE": str(cache)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(root / "recipes" / "linear_probe.py"), *flags, "--output_dir", str(out),
                           "--overwrite_output_dir"], capture_output=True, text=True, env=env, cwd=root)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{root}: {done.stderr[-2000:]}")
    results = json.loads((out / "all_results.json").read_text())
    return {"wall_seconds": round(seconds, 1), "validation_accuracy": results.get("eval_accuracy"),
            # the process's time outside run_linear_probe: imports before it, interpreter exit after it
            "outside_job_seconds": round(seconds - results.get("total_seconds", seconds), 1),
            "exported": f"{results['exported']['probe']} on {results['exported']['layer']}",
            "feature_seconds": results.get("feature_seconds"), "probe_seconds": results.get("probe_seconds"),
            "load_1min": round(os.getloadavg()[0], 2)}


def recipe_comparison(today: Path, datasets: dict) -> dict:
    out = {}
    for i, (name, flags) in enumerate(datasets.items()):
        sides = [("today", today), ("new", ROOT)]
        if i % 2:
            sides.reverse()
        row = {}
        for side, root in sides:
            with tempfile.TemporaryDirectory() as tmp:
                cache, folder = Path(tmp) / "cache", Path(tmp) / "run"
                first = run_recipe(root, flags, cache, folder)
                rerun = run_recipe(root, flags, cache, folder)
            row[side] = {"first": first, "cached_rerun": rerun,
                         "rerun_fraction": round(rerun["wall_seconds"] / first["wall_seconds"], 3),
                         "import_seconds": import_seconds(root)}
            print(name, side, row[side], flush=True)
        row["new_over_today_wall"] = round(row["new"]["first"]["wall_seconds"] / row["today"]["first"]["wall_seconds"], 3)
        row["accuracy_today_new"] = [row["today"]["first"]["validation_accuracy"], row["new"]["first"]["validation_accuracy"]]
        out[name] = row
    return out


def _default_extraction(images: int | None):
    """The embedded default's first ``images`` digits, Lite0 at 96 px, the `--layers auto` depths, the export's
    processor and the image source over it: (data, model, layers, layer_map, processor, source)."""
    from hf_transfer.backbones import adapter_for, build_layer_map, load_backbone
    from hf_transfer.data import load_image_classification_data
    from hf_transfer.features import ProcessorImages, parse_layers
    from hf_transfer.probes import export_processor

    data = load_image_classification_data("embedded:mnist", max_train_samples=images, max_eval_samples=10)
    model = load_backbone("embedded:efficientnet_lite0", labels=data.labels).eval()
    adapter = adapter_for(model)
    adapter.set_preprocessing(96)
    layer_map = build_layer_map(model)
    layers = parse_layers("auto", layer_map)
    processor = export_processor(adapter, 96)
    return data, model, layers, layer_map, processor, ProcessorImages(processor, data.image_column, data.label_column)


def extraction_comparison(images: int | None = None, batch_size: int = 32) -> dict:
    """compute_features (no cache) vs a bare decode-once loop, both at the recipe's batch size, order alternating.
    ``images=None``: the whole training split, what the default probe extracts (on its first 1,000 the one trace a
    call pays weighed four times what it weighs in the recipe)."""
    import torch

    from hf_transfer.features import FeatureCache, compute_features
    from hf_transfer.transforms import _to_rgb, decode_image

    data, model, layers, layer_map, processor, source = _default_extraction(images)
    from datasets import Image

    train = data.splits["train"].cast_column(data.image_column, Image(decode=False))
    model.to(memory_format=torch.channels_last)
    inner = model.timm_model

    def bare(part, threads):
        torch.set_num_threads(threads)
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(part), batch_size):
                cells = part[i:i + batch_size][data.image_column]
                pixels = processor(images=[_to_rgb(decode_image(c)) for c in cells], return_tensors="pt")["pixel_values"]
                inner.forward_head(inner.forward_features(pixels.contiguous(memory_format=torch.channels_last)),
                                   pre_logits=True)
        seconds = time.perf_counter() - start
        torch.set_num_threads(default_threads)
        return seconds

    def ours(part):
        start = time.perf_counter()
        compute_features(model, {"train": part}, layers, layer_map=layer_map, cache=FeatureCache(enabled=False),
                         transform_key="bench", image_size=96, batch_size=batch_size, source=source)
        return time.perf_counter() - start

    default_threads = torch.get_num_threads()
    bare(train.select(range(batch_size)), default_threads)  # warm-up
    ours(train.select(range(batch_size)))
    # Whole passes over all images (the frozen forward needs >= FREEZE_FROM_IMAGES per call, and its trace is part of
    # its cost), in the order ours, bare, bare, ours: a neighbour's burst lands on both sides alike. The bare loop
    # runs at torch's thread count and at one thread, and the faster of the two is the baseline (compute_features
    # chooses between the same two counts batch by batch, features/threads.py).
    t_ours, t_bare = 0.0, {default_threads: 0.0, 1: 0.0}
    for side in ("ours", "bare", "bare", "ours"):
        if side == "ours":
            t_ours += ours(train)
        else:
            for threads in t_bare:
                t_bare[threads] += bare(train, threads)
    best_bare = min(t_bare.values())
    return {"images": len(train), "passes_per_side": 2, "layers": [l.name for l in layers],
            "compute_features_img_per_s": round(2 * len(train) / t_ours, 1),
            "bare_loop_img_per_s": round(2 * len(train) / best_bare, 1),  # decodes once, pooled feature only
            "bare_loop_img_per_s_by_threads": {str(k): round(2 * len(train) / v, 1) for k, v in t_bare.items()},
            "openmp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "libgomp default"),
            "ratio": round(best_bare / t_ours, 3), "target_ratio": 0.9, "load_1min": round(os.getloadavg()[0], 2)}


def thread_choice(images: int = 640) -> dict:
    """Extraction with the thread count chosen per batch against torch's fixed count, under libgomp's default
    (spinning) wait policy, in a fresh process: what a run started on a quiet machine meets when a neighbour takes a
    core. Both passes in one process, fixed first (the chooser then starts on a warm process, a slight advantage
    for it that the load outweighs; the load is recorded)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    done = subprocess.run([sys.executable, __file__, "--thread_choice_child", str(images)], capture_output=True,
                          text=True, env=env, cwd=ROOT, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _thread_choice_child(images: int) -> None:
    import torch

    import hf_transfer.features.extract as extract
    from hf_transfer.features import FeatureCache, compute_features
    from hf_transfer.features.threads import ThreadChooser

    data, model, layers, layer_map, _, source = _default_extraction(images)
    counts = []

    class Fixed(ThreadChooser):  # torch's count for every batch
        def next_count(self):
            return self.counts[0]

    class Counted(ThreadChooser):
        def record(self, count, seconds, n):
            counts.append(count)
            super().record(count, seconds, n)

    out = {"images": images, "torch_threads": torch.get_num_threads(),
           "openmp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "libgomp default")}
    for name, chooser in (("fixed", Fixed), ("chosen_per_batch", Counted)):
        extract.ThreadChooser = chooser
        load = os.getloadavg()[0]
        start = time.perf_counter()
        compute_features(model, {"train": data.splits["train"]}, layers, layer_map=layer_map,
                         cache=FeatureCache(enabled=False), transform_key="bench", image_size=96, source=source)
        seconds = time.perf_counter() - start
        out[name] = {"seconds": round(seconds, 2), "ms_per_image": round(1000 * seconds / images, 2),
                     "load_1min_at_start": round(load, 2)}
    out["chosen_per_batch"]["batches_at_each_count"] = {str(c): counts.count(c) for c in sorted(set(counts))}
    out["fixed_over_chosen"] = round(out["fixed"]["seconds"] / out["chosen_per_batch"]["seconds"], 2)
    print(json.dumps(out))


def import_seconds(root: Path, repeats: int = 2) -> float:
    """Wall time of a fresh process that only imports what recipes/linear_probe.py imports (the least time any run,
    cached or not, can take), the faster of ``repeats``."""
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    code = "import hf_transfer.arguments, hf_transfer.jobs.probe, hf_transfer.errors, hf_transfer.runtime"
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)
        times.append(time.perf_counter() - start)
    return round(min(times), 2)


def summarize(results: dict) -> dict:
    """Plain keys for the figures the docs quote in prose (render_docs' dotted keys cannot hold the case names)."""
    summary, loads = {}, []
    for case, row in results["recipes"].items():
        short = "digits" if "digits" in case else "default"
        today, new = row["today"]["first"], row["new"]["first"]
        images = results.get("validation_images", {}).get(short)
        new_imports = row["new"].get("import_seconds")
        summary[short] = {"new_over_today_wall": row["new_over_today_wall"],
                          "today_wall_seconds": today["wall_seconds"], "new_wall_seconds": new["wall_seconds"],
                          "today_accuracy": today["validation_accuracy"], "new_accuracy": new["validation_accuracy"],
                          "new_rerun_fraction": row["new"]["rerun_fraction"],
                          "new_import_seconds": new_imports, "today_import_seconds": row["today"].get("import_seconds"),
                          "new_import_share_of_first": round(new_imports / new["wall_seconds"], 3) if new_imports else None,
                          "new_feature_seconds": new["feature_seconds"], "new_probe_seconds": new["probe_seconds"],
                          "today_feature_seconds": today["feature_seconds"], "today_probe_seconds": today["probe_seconds"],
                          "new_rest_seconds": round(new["wall_seconds"] - new["feature_seconds"] - new["probe_seconds"]
                                                    - (new_imports or 0), 1),
                          "today_rerun_fraction": row["today"]["rerun_fraction"]}
        # What extraction would have to take for the half-time target if everything else stayed as it ran
        half = today["wall_seconds"] / 2
        rest = new["wall_seconds"] - new["feature_seconds"]
        forwarded = FORWARD_IMAGES[short]
        summary[short].update({"half_target_seconds": round(half, 1), "new_seconds_besides_features": round(rest, 1),
                               "feature_seconds_left_for_half": round(half - rest, 1),
                               "new_feature_img_per_s": round(forwarded / new["feature_seconds"], 1),
                               "feature_img_per_s_needed_for_half": round(forwarded / (half - rest), 1)
                               if half > rest else None})
        if images:
            correct = [round(a * images) for a in (today["validation_accuracy"], new["validation_accuracy"])]
            summary[short].update({"validation_images": images, "today_correct": correct[0], "new_correct": correct[1],
                                   "images_apart": abs(correct[0] - correct[1]),
                                   # the binomial standard error of one accuracy at this size and level
                                   "accuracy_standard_error": round((today["validation_accuracy"] * (
                                       1 - today["validation_accuracy"]) / images) ** 0.5, 4)})
        loads += [side[run]["load_1min"] for side in (row["today"], row["new"]) for run in ("first", "cached_rerun")]
    if "extraction" in results:
        summary["extraction_ratio"] = results["extraction"]["ratio"]
        loads.append(results["extraction"]["load_1min"])
    if "thread_choice" in results:
        summary["thread_choice_fixed_over_chosen"] = results["thread_choice"]["fixed_over_chosen"]
    summary["load_min"], summary["load_max"] = min(loads), max(loads)
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--start", default="9035cf2", help="the start commit: today's code")
    parser.add_argument("--only", choices=["digits", "default"], default=None)
    parser.add_argument("--skip_extraction", action="store_true")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "probe_speed.json"))
    parser.add_argument("--summarize_only", action="store_true", help="recompute the summary of --output, run nothing")
    parser.add_argument("--thread_choice_child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.thread_choice_child:
        return _thread_choice_child(args.thread_choice_child)
    from hf_transfer_openmp import choose_wait_policy

    choose_wait_policy()  # the recipe's OpenMP policy for the in-process extraction too (before torch loads)
    if args.summarize_only:
        results = json.loads(Path(args.output).read_text())
        results["validation_images"] = VALIDATION_IMAGES
        results["summary"] = summarize(results)
        Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
        return
    datasets = dict(DATASETS)
    if args.only:
        datasets = {k: v for k, v in datasets.items() if (args.only == "digits") == ("digits" in k)}
    today = start_worktree(args.start)
    results = {"benchmark": "probe_speed", "start_commit": args.start, "cpu_count": os.cpu_count(),
               "note": "shared, noisy 2-core CPU; both sides ran in this one process, alternating",
               "command": "PYTHONPATH=. HF_HUB_OFFLINE=1 nice -n 10 python bench/bench_probe_speed.py",
               "new_commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                            text=True).stdout.strip(),
               "recipe_default_flags": datasets, "load_at_start": os.getloadavg()}
    results["recipes"] = recipe_comparison(today, datasets)
    if not args.skip_extraction:
        results["extraction"] = extraction_comparison()
        print(results["extraction"], flush=True)
        results["thread_choice"] = thread_choice()
        print(results["thread_choice"], flush=True)
    results["load_at_end"] = os.getloadavg()
    results["validation_images"] = VALIDATION_IMAGES
    results["summary"] = summarize(results)
    Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
