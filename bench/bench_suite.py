#!/usr/bin/env python
"""The advisor's held-out suite: `--strategy auto` against every fixed strategy and the default fine-tune, at the
same time budget, on the cases of `bench/suite/` (dev and test halves in bench/suite/split.json).

    python bench/bench_suite.py                          # the full matrix: every case x backbone x seed x strategy
    python bench/bench_suite.py --half test --backbones embedded:efficientnet_lite0 --seeds 42
    python bench/bench_suite.py --summary                # the table from what bench/results/suite.json holds

Each cell is one subprocess (`recipes/finetune.py` or `recipes/linear_probe.py`) with the case's budget (its
`budget_seconds` times --budget_scale); the result is written into bench/results/suite.json as soon as it ends, so
a killed run resumes where it stopped (cells already there are skipped). "Budget used" is the subprocess's wall
time from its start to its exit, over the budget (`wall_seconds`); the tool's own figure (`time_budget_used_seconds`,
which since the process-start fix also counts from the process's start) is kept beside it. Scores are on the case's *test* split,
which neither the race (held-out part of train) nor any early stopping sees. Every cell records the 1-minute load
before and after it: the machine is shared, and step times follow the load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from suite.cases import CASES, case_path, load_split  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "suite.json"
# Fixed strategies, each at the case's budget (the fine-tunes fill it: --time_budget is a deadline).
STRATEGIES = {
    "auto": ["--strategy", "auto"],
    "default": [],  # the project's default fine-tune: full, backbone x0.1, its default epochs re-planned to the budget
    "partial": ["--strategy", "partial", "--freeze", "fraction:0.5"],
    "lp_ft": ["--strategy", "lp_ft", "--lp_epochs", "1", "--num_train_epochs", "3"],  # 3: the first estimate (re-planned)
    "probe_pooled": None,  # recipes/linear_probe.py --layers pooled
    "probe_auto": None,  # recipes/linear_probe.py --layers auto (depths at 1/4, 1/2, 3/4 and pooled; best by CV)
}
FIXED = [s for s in STRATEGIES if s != "auto"]
BUDGETED = [s for s, flags in STRATEGIES.items() if flags is not None]  # the cells run under --time_budget


def load_results() -> dict:
    if RESULTS.is_file():
        return json.loads(RESULTS.read_text())
    return {"command": "nice -n -5 python bench/bench_suite.py", "cells": {}, "note": (
        "Fresh since the budget fix (process start charged, advisor2 branch): the cells of c611608 and earlier were "
        "measured from the job's start, not the process's, and are not comparable.")}


def save_results(results: dict, path: Path = RESULTS) -> None:
    """Written whole, then renamed over the last: a killed run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _find(d, key):
    """The first value of ``key`` in a nested dict (probe results keep test metrics under the exported probe)."""
    if isinstance(d, dict):
        if key in d:
            return d[key]
        for v in d.values():
            found = _find(v, key)
            if found is not None:
                return found
    if isinstance(d, list):
        for v in d:
            found = _find(v, key)
            if found is not None:
                return found
    return None


def _head() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def run_cell(case: str, backbone: str, seed: int, strategy: str, budget: float, workdir: Path) -> dict:
    c = CASES[case]
    out = workdir / f"{case}-{backbone.split(':')[-1]}-{seed}-{strategy}"
    common = ["--model_name_or_path", backbone, "--dataset_name", str(case_path(case)), "--image_size", str(c.image_size),
              "--seed", str(seed), "--output_dir", str(out), "--overwrite_output_dir", "True"]
    if STRATEGIES[strategy] is None:
        layers = "pooled" if strategy == "probe_pooled" else "auto"
        cmd = [sys.executable, str(ROOT / "recipes" / "linear_probe.py"), *common, "--layers", layers]
    else:
        cmd = [sys.executable, str(ROOT / "recipes" / "finetune.py"), *common, *STRATEGIES[strategy],
               "--time_budget", str(budget), "--disable_tqdm", "True", "--report_to", "none"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - began
    record = {"case": case, "backbone": backbone, "seed": seed, "strategy": strategy, "budget_seconds": budget,
              "wall_seconds": round(wall, 1), "load_before": round(load_before, 2),
              "load_after": round(os.getloadavg()[0], 2), "returncode": proc.returncode,
              "command": " ".join(cmd[1:]), "commit": _head()}
    if proc.returncode != 0:
        record["error"] = (proc.stderr or proc.stdout)[-1500:]
        return record
    metrics = json.loads((out / "all_results.json").read_text())
    record["test_accuracy"] = _find(metrics, "test_accuracy")
    record["eval_accuracy"] = _find(metrics, "eval_accuracy")
    for key in ("time_budget_used_seconds", "time_budget_planned_steps", "time_budget_initial_steps",
                "stopped_by_time_budget", "total_seconds", "epoch", "train_epoch"):
        if key in metrics:
            record[key] = metrics[key]
    if (out / "advice.json").is_file():
        record["auto"] = auto_record(json.loads((out / "advice.json").read_text()))
    return record


def auto_record(advice: dict) -> dict:
    """What the suite keeps of an auto run's advice.json: the race, and the measures (to test which predict)."""
    import numpy as np

    race = advice.get("race") or {}
    m = advice["measurements"][0]
    sim, size = m["similarity"], m["size"]
    best = max(reversed(sim["depths"]), key=lambda d: d["probe_cv"])  # ties: the deeper, as SimilarityStats.best
    pooled = next(d for d in sim["depths"] if d["name"] == "pooled")
    majority = size["majority_share"]
    return {"winner": (race.get("verdict") or {}).get("winner"), "verdict": race.get("verdict"),
            "candidates": [c["name"] for c in race.get("candidates", [])], "rungs": race.get("rungs"),
            "default": next((c["name"] for c in race.get("candidates", []) if c["is_default"]), None),
            "soup": race.get("soup"), "budget": advice.get("budget"), "scenario": advice["decision"]["scenario"],
            "final_correct": race.get("final_correct"), "ran_out_of_time": race.get("ran_out_of_time"),
            # what the replay (sensitivity) reads: the measurement the rules read, the decision's flags
            "measurement": m, "decision": {k: advice["decision"].get(k) for k in
                                            ("job", "strategy", "class_weighting", "sampler", "num_train_epochs",
                                             "augmentation")},
            "measures": {"best_probe": best["probe_cv"], "pooled_probe": pooled["probe_cv"],
                         "bottleneck_gap": round(best["probe_cv"] - pooled["probe_cv"], 4),
                         "gap_se": round(float(np.hypot(best["probe_cv_std"], pooled["probe_cv_std"])
                                               / np.sqrt(sim["cv_folds"])), 4),
                         "best_depth": best["name"], "read_as": advice["decision"]["scenario"],
                         "lift": round((best["probe_cv"] - majority) / max(1e-9, 1 - majority), 4),
                         "logme_best": max(d["logme"] for d in sim["depths"]), "logme_pooled": pooled["logme"],
                         "bn_shift": sim.get("bn_shift"), "n_train": size["n_train"]}}


def refresh_auto_records(results: dict, workdir: Path) -> None:
    """Re-read the auto cells' advice.json (still in the work folder) into suite.json."""
    for rec in results["cells"].values():
        if rec.get("strategy") != "auto" or rec.get("returncode") != 0:
            continue
        out = workdir / f"{rec['case']}-{rec['backbone'].split(':')[-1]}-{rec['seed']}-auto"
        if (out / "advice.json").is_file():
            rec["auto"] = auto_record(json.loads((out / "advice.json").read_text()))


def summarize(results: dict, split: dict) -> dict:
    """Per (case, backbone, seed): auto's regret against the best fixed strategy and the default; per half: means."""
    cells = results["cells"]
    groups: dict[tuple, dict] = {}
    for rec in cells.values():
        if rec.get("test_accuracy") is None:
            continue
        groups.setdefault((rec["case"], rec["backbone"], rec["seed"]), {})[rec["strategy"]] = rec
    rows = []
    for (case, backbone, seed), recs in sorted(groups.items()):
        if "auto" not in recs:
            continue
        fixed = {s: r["test_accuracy"] for s, r in recs.items() if s != "auto"}
        auto = recs["auto"]
        row = {"case": case, "half": "dev" if case in split["dev"] else "test", "backbone": backbone, "seed": seed,
               "auto": auto["test_accuracy"], "auto_winner": (auto.get("auto") or {}).get("winner"),
               "fixed": fixed, "fixed_run": sorted(fixed), "budget_seconds": auto["budget_seconds"],
               "auto_used_seconds": auto["wall_seconds"], "auto_tool_used_seconds": auto.get("time_budget_used_seconds"),
               # the advisor's measurement runs before the race: its seconds show how fast the machine was that run
               "auto_measurement_seconds": ((auto.get("auto") or {}).get("budget") or {}).get("measurement_seconds")}
        # "used": the subprocess's wall time, start to exit (BUDGETED strategies; the probes have no --time_budget)
        row["budget_used"] = {s: round(r["wall_seconds"] / r["budget_seconds"], 3) for s, r in recs.items()
                              if s in BUDGETED}
        if fixed:
            best = max(fixed, key=fixed.get)
            row["best_fixed"], row["regret_vs_best"] = best, round(fixed[best] - auto["test_accuracy"], 4)
        if "default" in fixed:
            row["regret_vs_default"] = round(fixed["default"] - auto["test_accuracy"], 4)
        rows.append(row)
    halves = {}
    for half in ("dev", "test"):
        hr = [r for r in rows if r["half"] == half]
        complete = [r for r in hr if set(r["fixed_run"]) >= set(FIXED)]
        with_best = [r for r in hr if "regret_vs_best" in r]
        halves[half] = {
            "cells": len(hr), "cells_with_every_fixed_strategy": len(complete),
            "mean_regret_vs_best": _mean([r["regret_vs_best"] for r in with_best]),
            "within_1pt_of_best": f"{sum(r['regret_vs_best'] <= 0.01 for r in with_best)}/{len(with_best)}",
            "mean_regret_vs_default": _mean([r["regret_vs_default"] for r in hr if "regret_vs_default" in r]),
            "more_than_1pt_below_default": sum(r.get("regret_vs_default", 0) > 0.01 for r in hr),
            "budget_used": {s: [r["budget_used"].get(s) for r in hr] for s in BUDGETED},
            "budget_used_within_90_100": f"{sum(0.9 <= u <= 1.0 for r in hr for u in r['budget_used'].values())}/"
                                         f"{sum(len(r['budget_used']) for r in hr)}",
            "auto_measurement_seconds_mean": _mean([r["auto_measurement_seconds"] for r in hr
                                                    if r["auto_measurement_seconds"] is not None]),
            # the race keeps a probe winner's final run back (jobs/race.py: final_run_overhead): what those cells used
            "auto_budget_used_when_a_probe_won": _mean_and_least([r["budget_used"]["auto"] for r in hr
                                                          if (r["auto_winner"] or "").startswith("probe")]),
            "below_default": {f"{r['case']}-{r['backbone'].split('_')[-1]}-{r['seed']}":
                              _below_default(groups[(r["case"], r["backbone"], r["seed"])])
                              for r in hr if r.get("regret_vs_default", 0) > 0.01},
        }
    return {"rows": rows, "halves": halves}


def _below_default(recs: dict) -> dict:
    """What a row where auto fell more than a point below the default fine-tune reads from its race record: the
    verdict, the held-out scores at the last rung, and the steps the race's default got against the default alone."""
    auto = recs["auto"].get("auto") or {}
    rungs, default = auto.get("rungs") or [], auto.get("default")
    last = {name: plan for rung in rungs for name, plan in rung["plans"].items()}  # each plan's latest rung
    verdict = auto.get("verdict") or {}
    out = {"auto": recs["auto"]["test_accuracy"], "default": recs["default"]["test_accuracy"],
           "winner": auto.get("winner"), "race_default": default,
           "margin": round(verdict.get("margin", float("nan")), 4), "se": round(verdict.get("se", float("nan")), 4),
           "heldout": {name: plan["accuracy"] for name, plan in last.items()},
           "default_race_steps": sum(rung["plans"].get(default, {}).get("steps", 0) for rung in rungs),
           "default_alone_steps": recs["default"].get("time_budget_planned_steps"),
           "measurement_seconds": (auto.get("budget") or {}).get("measurement_seconds")}
    if auto.get("winner") == default and (auto.get("decision") or {}).get("job") == "finetune":
        out["default_run_steps"] = (auto.get("budget") or {}).get("planned_steps")
    return out


def _fixed_cell_for(plan: str, measurement: dict) -> str | None:
    """The fixed cell that runs a race plan for the whole budget (None: none does): the default fine-tune, the pooled
    probe, and `partial` when the race's knee is the fixed cell's half (fraction:0.5)."""
    half = int(0.5 * measurement["similarity"]["body_depths"] + 1e-9)
    return {"full x0.1": "default", "probe pooled": "probe_pooled", f"partial depth:{half}": "partial"}.get(plan)


def sensitivity(results: dict, split: dict, factors=(0.5, 2.0)) -> dict:
    """Every threshold of `Thresholds` (and candidate_plans' max_candidates) at x0.5 and x2: each auto cell's
    decision replayed from its record (hf_transfer/advisor/replay.py), no training. A changed winner is scored with
    the fixed cell that runs its plan for the whole budget (an approximation: that cell trained from the start, not
    from the race's weights); a plan no fixed cell runs, or a race the record cannot replay, is counted, not scored.
    Mean regret against the best fixed strategy, over the cells that could be scored, beside the same cells' regret
    as run (``as_run``)."""
    import dataclasses

    sys.path.insert(0, str(ROOT))
    from hf_transfer.advisor import Thresholds
    from hf_transfer.advisor.replay import MAX_CANDIDATES, NOT_REPLAYABLE, replay, scaled

    base = Thresholds()
    rows = [r for r in summarize(results, split)["rows"] if "best_fixed" in r]
    records = {id(r): ((results["cells"].get(_key(r, "auto")) or {}).get("auto") or {}) for r in rows}
    names = [f.name for f in dataclasses.fields(Thresholds) if f.name not in NOT_REPLAYABLE] + ["max_candidates"]
    out = {"how": sensitivity.__doc__.split("\n\n")[0].replace("\n", " "), "not_replayable": NOT_REPLAYABLE,
           "thresholds": {}}
    for name in names:
        line = {"value": MAX_CANDIDATES if name == "max_candidates" else getattr(base, name)}
        for factor in factors:
            if name == "max_candidates":
                t, kw = base, {"max_candidates": max(1, int(round(MAX_CANDIDATES * factor)))}
            else:
                t, kw = scaled(base, name, factor), {}
            per_half = {h: {"replayed": [], "as_run": [], "changed": 0, "unscored": 0, "unreplayable": 0}
                        for h in ("dev", "test")}
            for row in rows:
                rec, acc = records[id(row)], None
                h = per_half[row["half"]]
                if "measurement" not in rec or "rungs" not in rec:
                    h["unreplayable"] += 1
                    continue
                winner = replay(rec, t, base=base, **kw).winner
                if winner is None:
                    h["unreplayable"] += 1
                    continue
                if winner == rec["winner"]:
                    acc = row["auto"]
                else:
                    h["changed"] += 1
                    fixed = _fixed_cell_for(winner, rec["measurement"])
                    acc = row["fixed"].get(fixed) if fixed else None
                if acc is None:
                    h["unscored"] += 1
                    continue
                best = row["fixed"][row["best_fixed"]]
                h["replayed"].append(best - acc)
                h["as_run"].append(row["regret_vs_best"])
            line[f"x{factor:g}"] = {half: {"mean_regret_vs_best": _mean(v["replayed"]), "as_run": _mean(v["as_run"]),
                                           "scored": len(v["replayed"]), "changed": v["changed"],
                                           "changed_but_unscored": v["unscored"], "unreplayable": v["unreplayable"]}
                                    for half, v in per_half.items()}
        out["thresholds"][name] = line
    return out


def _key(row, strategy):
    return f"{row['case']}/{row['backbone']}/{row['seed']}/{strategy}/{row['budget_seconds']:g}"


def _mean(values):
    return round(sum(values) / len(values), 4) if values else None


def _mean_and_least(values) -> dict:
    return {"cells": len(values), "mean": _mean(values), "min": min(values, default=None)}


def add_selection_arguments(parser, half: str = "all") -> None:
    """--half, --cases, --backbones, --seeds: which rows of the suite a run covers (`selected`)."""
    parser.add_argument("--half", choices=["dev", "test", "all"], default=half)
    parser.add_argument("--cases", default=None, help="comma-separated case names (default: the half's)")
    parser.add_argument("--backbones", default=None, help="default: split.json's two")
    parser.add_argument("--seeds", default=None, help="default: split.json's two")


def selected(args, split: dict) -> tuple[list[str], list[str], list[int]]:
    """The cases, backbones and seeds `add_selection_arguments`' flags name."""
    cases = args.cases.split(",") if args.cases else (
        split["dev"] + split["test"] if args.half == "all" else split[args.half])
    backbones = args.backbones.split(",") if args.backbones else split["backbones"]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else split["seeds"]
    return cases, backbones, seeds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_selection_arguments(parser)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--budget_scale", type=float, default=1.0, help="times each case's budget_seconds")
    parser.add_argument("--workdir", default="/tmp/hf_transfer_suite")
    parser.add_argument("--summary", action="store_true", help="only print the summary of suite.json")
    args = parser.parse_args(argv)
    split = load_split()
    results = load_results()
    if not args.summary:
        results.setdefault("commits", [])
        head = _head()
        if head and head not in results["commits"]:
            results["commits"].append(head)  # the code the cells ran (a resumed run may add one)
    if not args.summary:
        cases, backbones, seeds = selected(args, split)
        strategies = args.strategies.split(",")
        for case in cases:
            for backbone in backbones:
                for seed in seeds:
                    for strategy in strategies:
                        budget = round(CASES[case].budget_seconds * args.budget_scale, 1)
                        key = f"{case}/{backbone}/{seed}/{strategy}/{budget:g}"
                        if key in results["cells"] and results["cells"][key].get("returncode") == 0:
                            continue
                        rec = run_cell(case, backbone, seed, strategy, budget, Path(args.workdir))
                        results["cells"][key] = rec
                        results["summary"] = summarize(results, split)
                        save_results(results)
                        print(f"{key}: test {rec.get('test_accuracy')} in {rec['wall_seconds']}s "
                              f"(load {rec['load_before']}->{rec['load_after']})"
                              + (f" ERROR {rec['error'][-300:]}" if 'error' in rec else ""), flush=True)
    if args.summary:
        refresh_auto_records(results, Path(args.workdir))
    results["summary"] = summarize(results, split)
    results["summary"]["sensitivity"] = sensitivity(results, split)
    save_results(results)
    print(json.dumps(results["summary"]["halves"], indent=1))
    print(json.dumps(results["summary"]["sensitivity"], indent=1))
    for row in results["summary"]["rows"]:
        print(f"{row['half']:4s} {row['case']:16s} {row['backbone'].split(':')[-1]:22s} {row['seed']} auto "
              f"{row['auto']:.4f} ({row['auto_winner']}) best fixed {row.get('best_fixed')} regret "
              f"{row.get('regret_vs_best')} vs default {row.get('regret_vs_default')} budget used {row['budget_used']}")


if __name__ == "__main__":
    main()
