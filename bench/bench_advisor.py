#!/usr/bin/env python
"""`--strategy auto` against every fixed strategy and the plain-Trainer default, under one time budget per case.

Cases (embedded data, different sizes and domains) x backbones (both embedded EfficientNet-Lites). In each cell:

* ``auto``: ``recipes/finetune.py --strategy auto --time_budget T`` (the advisor's measurement counts against T; a
  linear-probe plan runs the probe job);
* ``probe_pooled``: the probe job, logreg on the pooled bottleneck;
* ``probe_earlier``: the probe job on the depths at 1/4, 1/2 and 3/4 of the body (its best by CV is reported);
* ``probe_concat``: those three depths and pooled concatenated, a logreg with C by CV (computed here from the feature
  cache with the library's probe code: the `--layers 3+7+pooled` flag belongs to other work);
* ``partial`` (``--freeze fraction:0.5``), ``lp_ft`` (``--lp_epochs 1``), ``full`` (the library's default fine-tune);
* ``plain_trainer``: what a plain `Trainer` does: one learning rate (5e-5) for everything, linear schedule, no warm-up,
  no weight decay, gradient clipping at 1.0, no augmentation.

Every fine-tune gets the epochs that fit T (from the advisor's measured step time, as ``auto`` does; at most 10;
``lp_ft`` at least 2) and ``--time_budget T`` as the safety net that stops it cleanly. Results (accuracy, macro-F1,
seconds, epochs, whether the budget stopped the run) are merged into bench/results/advisor.json after every run, so
separate invocations fill one file. The machine's load average is recorded before and after each cell.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python bench/bench_advisor.py --quick                # mnist500 + lfw, lite0
    PYTHONPATH=. HF_HUB_OFFLINE=1 python bench/bench_advisor.py                        # 4 cases x 2 backbones
    PYTHONPATH=. HF_HUB_OFFLINE=1 python bench/bench_advisor.py --cases digits --backbones lite1 --strategies auto,full
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a shared, busy CPU: no spinning OpenMP threads

# name -> data flags and the time budget (seconds) every strategy gets on it
CASES = {
    "mnist5k": {"flags": ["--dataset_name", "embedded:mnist"], "budget": 300, "what": "5,000 MNIST digits (4,500 train), 96 px"},
    "mnist500": {"flags": ["--dataset_name", "embedded:mnist", "--max_train_samples", "500"], "budget": 90,
                 "what": "500 MNIST digits for training (validation: the same 500 as mnist5k), 96 px"},
    "digits": {"flags": ["--dataset_name", "embedded:digits"], "budget": 150, "what": "1,797 8x8 digits (1,617 train), 64 px"},
    "lfw": {"flags": ["--dataset_name", "embedded:lfw", "--validation_split", "0.25"], "budget": 60,
            "what": "200 25x25 face / not-face crops (150 train, 50 validation), 64 px"},
}
BACKBONES = {"lite0": "embedded:efficientnet_lite0", "lite1": "embedded:efficientnet_lite1"}
STRATEGIES = ("auto", "probe_pooled", "probe_earlier", "probe_concat", "partial", "lp_ft", "full", "plain_trainer")
FIXED = tuple(s for s in STRATEGIES if s != "auto")
QUICK = {"cases": ["mnist500", "lfw"], "backbones": ["lite0"]}
MAX_EPOCHS = 10
PLAIN_TRAINER = ["--learning_rate", "5e-5", "--backbone_lr_multiplier", "1", "--lr_scheduler_type", "linear",
                 "--warmup_steps", "0", "--weight_decay", "0", "--max_grad_norm", "1.0", "--augmentation", "none"]


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def silence():
    """The runs print their tables and progress bars; keep the bench's own lines readable."""
    import logging

    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("hf_transfer").setLevel(logging.WARNING)
    os.environ["TQDM_DISABLE"] = "1"


def finetune(argv: list[str]) -> dict:
    from hf_transfer.arguments import finetune_argument_types, parse_args
    from hf_transfer.jobs.finetune import run_finetune

    return run_finetune(*parse_args(finetune_argument_types(), argv, prog="finetune"))


def probe(argv: list[str]) -> dict:
    from hf_transfer.arguments import parse_args
    from hf_transfer.jobs.probe import probe_argument_types, run_linear_probe

    return run_linear_probe(*parse_args(probe_argument_types(), argv, prog="linear_probe"))


def measure(case: dict, backbone: str, cache: Path):
    """The advisor's measurement of this cell (for the fixed strategies' epochs, and the similarity record)."""
    from hf_transfer.arguments import DataArguments, ModelArguments, parse_args
    from hf_transfer.features import FeatureCache
    from hf_transfer.jobs.advise import AdviseArguments, measure_backbone

    model_args, data_args, settings = parse_args((ModelArguments, DataArguments, AdviseArguments),
                                                 ["--model_name_or_path", backbone, *case["flags"],
                                                  "--feature_cache_dir", str(cache)])
    data = data_args.load(settings.seed, model_args)
    return measure_backbone(backbone, model_args, data, settings, FeatureCache(cache))


def fitted_epochs(measurement, strategy: str, budget: float) -> int:
    from hf_transfer.advisor.rules import Thresholds, epoch_seconds
    from hf_transfer.budget import epochs_that_fit

    share = 0.5 if strategy == "partial" else 1.0
    per_epoch = epoch_seconds(measurement, share, 32)
    fits = epochs_that_fit(budget, epoch_seconds=per_epoch, overhead_seconds=Thresholds().fixed_overhead_seconds)
    epochs = max(1, min(MAX_EPOCHS, math.floor(fits)))
    return max(2, epochs) if strategy == "lp_ft" else epochs


def auto_depths(measurement) -> list[int]:
    """The probe job's `--layers auto` depths (1/4, 1/2, 3/4 of the body)."""
    count = measurement.similarity.body_depths
    return sorted({max(0, round(count * f) - 1) for f in (0.25, 0.5, 0.75)})


def probe_concat(case: dict, backbone: str, specs: list[str], cache: Path) -> dict:
    """The layers ``specs`` (depth indices, "pooled") concatenated, logreg with C by 3-fold CV on train, scored on
    validation."""
    import numpy as np

    from hf_transfer.arguments import DataArguments, ModelArguments, parse_args
    from hf_transfer.backbones import adapter_for
    from hf_transfer.features import FeatureCache, FeatureLayer, compute_features, parse_layers, transform_fingerprint
    from hf_transfer.jobs.common import prepare
    from hf_transfer.jobs.probe import ProbeArguments
    from hf_transfer.probes import ProbeConfig, evaluate_probe, fit_probe
    from hf_transfer.transforms import build_transform

    start = time.perf_counter()
    model_args, data_args, probe_args = parse_args((ModelArguments, DataArguments, ProbeArguments),
                                                   ["--model_name_or_path", backbone, *case["flags"], "--output_dir", str(cache / "unused")])
    data, model, splits, image_size = prepare(model_args, data_args, probe_args, "linear_probe")
    adapter = adapter_for(model)
    layer_map = adapter.layer_map()
    layers = parse_layers(",".join(specs), layer_map)
    cfg = adapter.data_config()
    key = transform_fingerprint(build_transform(cfg, image_size=image_size), cfg, image_size)
    fs = compute_features(model, {k: splits[k] for k in ("train", "validation")}, layers, layer_map=layer_map,
                          cache=FeatureCache(cache), transform_key=key, image_size=image_size)
    X = {split: np.concatenate([fs.features[split][l.key] for l in layers], axis=1) for split in ("train", "validation")}
    name = "+".join(specs)
    result = fit_probe("logreg", FeatureLayer(f"concat {name}"), X["train"], fs.labels["train"], ProbeConfig(cv_folds=3))
    metrics = evaluate_probe(result, X["validation"], fs.labels["validation"], prefix="eval")
    return {"eval_accuracy": metrics["eval_accuracy"], "eval_macro_f1": metrics["eval_macro_f1"], "layers": name,
            "cv_accuracy": round(result.cv_score, 5), "C": result.param_value, "seconds": round(time.perf_counter() - start, 2)}


def run_strategy(strategy: str, case: dict, backbone: str, budget: float, measurement, out: Path, cache: Path) -> dict:
    common = ["--model_name_or_path", backbone, *case["flags"], "--output_dir", str(out), "--overwrite_output_dir"]
    start = time.perf_counter()
    if strategy == "auto":
        auto_cache = cache.parent / f"auto-{cache.name}"  # a cold cache: the advisor pays for its features
        shutil.rmtree(auto_cache, ignore_errors=True)
        os.environ["HF_TRANSFER_CACHE"] = str(auto_cache)
        from hf_transfer.errors import TransferError

        note = None
        try:
            metrics = finetune([*common, "--strategy", "auto", "--time_budget", str(budget), "--report_to", "none",
                                "--disable_tqdm", "True"])
        except TransferError as err:
            layers = json.loads((out / "advice.json").read_text())["decision"]["layers"] if (out / "advice.json").is_file() else None
            if not (layers and "+" in layers and "--layers" in str(err)):
                raise
            # A concatenated-depths plan needs `--layers a+b` (the probes work, not on this branch): score the same
            # probe here, from the cache, as probe_concat does. The time of the advisor is kept.
            metrics = probe_concat(case, backbone, layers.split("+"), cache)
            note = f"plan {layers!r} scored by the bench's concatenation (this branch's probe job has no a+b layers)"
        finally:
            os.environ["HF_TRANSFER_CACHE"] = str(cache)
        advice = json.loads((out / "advice.json").read_text())
        decision = advice["decision"]
        record = {"plan": {k: decision[k] for k in ("scenario", "size_band", "strategy", "layers", "freeze", "num_train_epochs",
                                                     "lp_epochs", "learning_rate", "layer_decay", "augmentation")},
                  "advisor_seconds": advice["seconds"], "reasons": decision["reasons"]}
        if note:
            record["note"] = note
    elif strategy == "probe_pooled":
        metrics = probe([*common, "--layers", "pooled", "--probe", "logreg", "--feature_cache_dir", str(cache)])
        record = {"layer": metrics["exported"]["layer"]}
    elif strategy == "probe_earlier":
        depths = ",".join(map(str, auto_depths(measurement)))
        metrics = probe([*common, "--layers", depths, "--probe", "logreg", "--feature_cache_dir", str(cache)])
        record = {"layer": metrics["exported"]["layer"], "candidates": depths}
    elif strategy == "probe_concat":
        metrics = probe_concat(case, backbone, [*map(str, auto_depths(measurement)), "pooled"], cache)
        record = {"layer": metrics["layers"]}
    else:
        epochs = fitted_epochs(measurement, strategy, budget)
        flags = {"partial": ["--strategy", "partial", "--freeze", "fraction:0.5"],
                 "lp_ft": ["--strategy", "lp_ft", "--lp_epochs", "1"],
                 "full": [], "plain_trainer": PLAIN_TRAINER}[strategy]
        metrics = finetune([*common, *flags, "--num_train_epochs", str(epochs), "--time_budget", str(budget),
                            "--report_to", "none", "--disable_tqdm", "True"])
        record = {"num_train_epochs": epochs}
    record.update({
        "eval_accuracy": round(float(metrics["eval_accuracy"]), 4),
        "eval_macro_f1": round(float(metrics["eval_macro_f1"]), 4),
        "seconds": round(time.perf_counter() - start, 1),
        "stopped_by_time_budget": metrics.get("stopped_by_time_budget"),
    })
    if "train_epoch" in metrics:
        record["epochs_run"] = round(float(metrics["train_epoch"]), 2)
    return record


def summarize_cell(cell: dict) -> None:
    runs = cell["runs"]
    fixed = {k: v for k, v in runs.items() if k in FIXED and "eval_accuracy" in v}
    if "auto" not in runs or "eval_accuracy" not in runs["auto"] or not fixed:
        return
    best = max(fixed, key=lambda k: (fixed[k]["eval_accuracy"], fixed[k]["eval_macro_f1"]))
    auto = runs["auto"]
    cell["best_fixed"] = best
    cell["auto_minus_best_fixed_points"] = round(100 * (auto["eval_accuracy"] - fixed[best]["eval_accuracy"]), 2)
    cell["auto_within_1_point_of_best"] = cell["auto_minus_best_fixed_points"] >= -1.0
    if "plain_trainer" in fixed:
        cell["auto_minus_plain_trainer_points"] = round(100 * (auto["eval_accuracy"] - fixed["plain_trainer"]["eval_accuracy"]), 2)


def summarize(report: dict) -> None:
    cells = report["cells"]
    done = [c for c in cells.values() if "auto_minus_best_fixed_points" in c]
    summary = {"cells_complete": len(done)}
    if done:
        summary["auto_within_1_point_everywhere"] = all(c["auto_within_1_point_of_best"] for c in done)
        summary["auto_minus_best_fixed_points"] = {k: c["auto_minus_best_fixed_points"] for k, c in cells.items()
                                                   if "auto_minus_best_fixed_points" in c}
        plain = [c["auto_minus_plain_trainer_points"] for c in done if "auto_minus_plain_trainer_points" in c]
        if plain:
            summary["auto_minus_plain_trainer_mean_points"] = round(sum(plain) / len(plain), 2)
    # Similarity measures against what the validation split says: does an earlier depth beat the bottleneck?
    checks = []
    for key, cell in cells.items():
        runs, adv = cell["runs"], cell.get("advisor")
        if adv and "probe_pooled" in runs and "probe_earlier" in runs:
            earlier_wins = runs["probe_earlier"]["eval_accuracy"] > runs["probe_pooled"]["eval_accuracy"] + 0.01
            checks.append({"cell": key, "probe_curve_says_dissimilar": adv["bottleneck_gap"] > 0.01,
                           "logme_peaks_before_pooled": adv["best_by_logme"] != "pooled" and not adv["best_by_logme"].startswith(
                               f"depth {adv['body_depths'] - 1} "),
                           "validation_earlier_beats_pooled_by_1_point": earlier_wins})
    if checks:
        summary["similarity_checks"] = checks
        summary["probe_curve_agrees"] = sum(c["probe_curve_says_dissimilar"] == c["validation_earlier_beats_pooled_by_1_point"] for c in checks)
        summary["logme_agrees"] = sum(c["logme_peaks_before_pooled"] == c["validation_earlier_beats_pooled_by_1_point"] for c in checks)
        summary["similarity_cells"] = len(checks)
    # Backbone ranking against the fine-tuned ordering, per case with both backbones done.
    ranking = {}
    for case in CASES:
        pair = {b: cells.get(f"{case}/{b}") for b in BACKBONES}
        if not all(p and p.get("advisor") and "full" in p["runs"] and "auto" in p["runs"] for p in pair.values()):
            continue
        from hf_transfer.advisor.rank import RANK_TIE

        probe_cv = {b: pair[b]["advisor"]["best_probe_cv"] for b in pair}
        by_logme = sorted(pair, key=lambda b: -pair[b]["advisor"]["logme_best"])
        # the advisor's order (rank.py): best probe accuracy; within RANK_TIE, LogME
        tied = abs(probe_cv["lite0"] - probe_cv["lite1"]) <= RANK_TIE
        by_probe = by_logme if tied else sorted(pair, key=lambda b: -probe_cv[b])
        best_tuned = {b: max(r["eval_accuracy"] for k, r in pair[b]["runs"].items() if "eval_accuracy" in r) for b in pair}
        by_tuned = sorted(pair, key=lambda b: -best_tuned[b])
        ranking[case] = {"advisor_order": by_probe, "probe_tie_broken_by_logme": tied, "best_probe_cv": probe_cv,
                         "logme_order": by_logme, "best_result_order": by_tuned,
                         "best_result": best_tuned, "advisor_agrees": by_probe == by_tuned,
                         "tie": abs(best_tuned["lite0"] - best_tuned["lite1"]) < 0.005}
    if ranking:
        summary["ranking"] = ranking
    report["summary"] = summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"cases {QUICK['cases']} with {QUICK['backbones']}")
    parser.add_argument("--cases", default=None, help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--backbones", default=None, help=f"comma list of {', '.join(BACKBONES)}")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--budget_scale", type=float, default=1.0, help="multiply every case's time budget")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "advisor.json"))
    parser.add_argument("--scratch", default=None, help="folder for run outputs and caches (default: a temp folder)")
    args = parser.parse_args()

    cases = (args.cases.split(",") if args.cases else QUICK["cases"] if args.quick else list(CASES))
    backbones = (args.backbones.split(",") if args.backbones else QUICK["backbones"] if args.quick else list(BACKBONES))
    strategies = args.strategies.split(",")
    silence()
    from hf_transfer.runtime import configure_cpu_threads

    configure_cpu_threads()
    output = Path(args.output)
    report = json.loads(output.read_text()) if output.is_file() else {}
    report.setdefault("cells", {})
    report["about"] = __doc__.split("\n\n")[0]
    report["cases"] = {k: {"what": v["what"], "flags": " ".join(v["flags"]), "budget_seconds": v["budget"] * args.budget_scale}
                       for k, v in CASES.items()}
    report["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    invocation = {"command": "python bench/bench_advisor.py " + " ".join(sys.argv[1:]), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "load_average_at_start": load_average()}
    report.setdefault("invocations", []).append(invocation)

    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bench_advisor-"))
    for case_name in cases:
        case = CASES[case_name]
        budget = case["budget"] * args.budget_scale
        for short in backbones:
            backbone = BACKBONES[short]
            key = f"{case_name}/{short}"
            cell = report["cells"].setdefault(key, {"runs": {}})
            cell.update({"backbone": backbone, "budget_seconds": budget, "load_average_at_start": load_average()})
            cache = scratch / f"cache-{case_name}-{short}"
            print(f"== {key}: budget {budget:.0f}s, load {load_average()}", flush=True)
            measurement = measure(case, backbone, cache)
            sim = measurement.similarity
            cell["advisor"] = {"best": sim.best.name, "best_probe_cv": sim.best.probe_cv, "pooled_probe_cv": sim.pooled.probe_cv,
                               "bottleneck_gap": round(sim.bottleneck_gap, 4), "peak_position": round(sim.peak_position, 3),
                               "best_by_logme": sim.best_by_logme.name, "logme_best": sim.best_by_logme.logme,
                               "logme_pooled": sim.pooled.logme, "bn_shift": sim.bn_shift, "concat": sim.concat,
                               "body_depths": sim.body_depths,
                               "forward_ms_per_image": round(measurement.cost.forward_ms_per_image, 2),
                               "train_step_seconds": round(measurement.cost.train_step_seconds, 3),
                               "measure_seconds": round(measurement.seconds, 1)}
            for strategy in strategies:
                out = scratch / case_name / short / strategy
                try:
                    record = run_strategy(strategy, case, backbone, budget, measurement, out, cache)
                except Exception as err:  # noqa: BLE001 - one failed run is recorded, the matrix goes on
                    traceback.print_exc()
                    record = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
                record["load_average_after"] = load_average()
                cell["runs"][strategy] = record
                print(f"   {strategy:<14} {json.dumps(record)}", flush=True)
                summarize_cell(cell)
                summarize(report)
                output.parent.mkdir(parents=True, exist_ok=True)
                output.write_text(json.dumps(report, indent=2) + "\n")
                shutil.rmtree(out, ignore_errors=True)
            cell["load_average_at_end"] = load_average()
    invocation["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    invocation["load_average_at_end"] = load_average()
    summarize(report)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report.get("summary", {}), indent=2))
    if not args.scratch:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
