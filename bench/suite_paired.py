#!/usr/bin/env python
"""`--strategy auto` against the default fine-tune, run back to back and repeated (bench/results/suite_paired.json).

The suite (bench/bench_suite.py) runs each cell once, and its fixed cells ran on other evenings than its auto cells.
A budgeted fine-tune trains the steps the machine's speed that minute allows, and that speed moved by up to
two-fold between evenings here, so a single auto cell against a default cell from another evening compares two
amounts of training as much as two strategies (bench/results/suite_spread.json: the default's own cells, rerun, land
3 points apart on average). Here each row's auto and default cells run one right after the other (the order
alternating from repeat to repeat, so a drift in the machine's speed does not always favour the same one), and each
pair is repeated; the row is judged on the mean of its paired differences and their standard error:

    nice -n -5 python bench/suite_paired.py --half test --repeats 2
    python bench/suite_paired.py --summary

Resumable like the suite: finished cells are kept (`<case>/<backbone>/<seed>/<strategy>/<budget>/r<repeat>`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_suite import _head, add_selection_arguments, run_cell, save_results, selected  # noqa: E402
from suite.cases import CASES, load_split  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "suite_paired.json"
PAIR = ("auto", "default")


def order(repeat: int) -> tuple[str, str]:
    """Auto first on even repeats, the default first on odd ones."""
    return PAIR if repeat % 2 == 0 else PAIR[::-1]


def default_training_steps(auto_cell: dict) -> int | None:
    """The steps the default fine-tune trained inside an auto run: its race rungs, plus the real run when it won
    (None when the run ended in another plan)."""
    record = auto_cell.get("auto") or {}
    default, rungs = record.get("default"), record.get("rungs") or []
    if record.get("winner") != default or (record.get("decision") or {}).get("job") != "finetune":
        return None
    race_steps = sum(rung["plans"].get(default, {}).get("steps", 0) for rung in rungs)
    return race_steps + ((record.get("budget") or {}).get("planned_steps") or 0)


def _mean_se(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return round(mean, 4), None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return round(mean, 4), round(math.sqrt(var / len(values)), 4)


def summarize(cells: dict, split: dict) -> dict:
    """Per row (case, backbone, seed): every repeat whose two cells both finished gives one paired difference
    (auto minus default test accuracy; negative: auto below); the row's mean and standard error over repeats. Per
    half: rows whose mean is more than a point below the default, rows below it beyond two standard errors, and,
    for comparison, the same count from each row's first repeat alone (what one run per cell would have said)."""
    pairs: dict[tuple, dict[int, dict]] = {}
    for rec in cells.values():
        if rec.get("test_accuracy") is None:
            continue
        row_key = (rec["case"], rec["backbone"], rec["seed"])
        pairs.setdefault(row_key, {}).setdefault(rec["repeat"], {})[rec["strategy"]] = rec
    rows = []
    # the test half's rows first, then the dev half's: docs read rows by position (`rows.11`), and dev rows sorted
    # among them would move those positions
    for (case, backbone, seed), repeats in sorted(pairs.items(), key=lambda kv: (kv[0][0] in split["dev"], kv[0])):
        done = {r: p for r, p in sorted(repeats.items()) if set(PAIR) <= set(p)}
        if not done:
            continue
        diffs = [p["auto"]["test_accuracy"] - p["default"]["test_accuracy"] for p in done.values()]
        mean, se = _mean_se(diffs)
        rows.append({
            "case": case, "half": "dev" if case in split["dev"] else "test", "backbone": backbone, "seed": seed,
            "repeats": len(done), "auto": [round(p["auto"]["test_accuracy"], 4) for p in done.values()],
            "default": [round(p["default"]["test_accuracy"], 4) for p in done.values()],
            "auto_winner": [(p["auto"].get("auto") or {}).get("winner") for p in done.values()],
            "differences": [round(d, 4) for d in diffs], "mean_difference": mean, "se": se,
            "first_difference": round(diffs[0], 4),
            # the race's cost to the default, in steps: the default inside auto (when it won) against the default alone
            "default_steps_in_auto": [default_training_steps(p["auto"]) for p in done.values()],
            "default_steps_alone": [p["default"].get("time_budget_planned_steps") for p in done.values()],
            "measurement_seconds": [((p["auto"].get("auto") or {}).get("budget") or {}).get("measurement_seconds")
                                    for p in done.values()]})
    halves = {}
    for half in ("dev", "test"):
        hr = [r for r in rows if r["half"] == half]
        halves[half] = {
            "rows": len(hr), "pairs": sum(r["repeats"] for r in hr),
            "mean_difference": _mean_se([r["mean_difference"] for r in hr])[0],
            "more_than_1pt_below_default_on_the_mean": sum(r["mean_difference"] < -0.01 for r in hr),
            "below_default_beyond_2se": sum(r["se"] is not None and r["mean_difference"] < -2 * r["se"] for r in hr),
            "more_than_1pt_below_default_first_repeat_only": sum(r["first_difference"] < -0.01 for r in hr),
            # the race's cost to the default in steps, over the pairs where the default won: inside auto / alone
            "default_steps_in_auto_over_alone": _mean_se([inside / alone for r in hr for inside, alone in
                                                          zip(r["default_steps_in_auto"], r["default_steps_alone"])
                                                          if inside and alone])[0],
            "rows_below": [f"{r['case']}-{r['backbone'].split('_')[-1]}-{r['seed']}" for r in hr
                           if r["mean_difference"] < -0.01]}
    return {"rows": rows, "halves": halves}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_selection_arguments(parser, half="test")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", default="/tmp/hf_transfer_suite_paired")
    parser.add_argument("--summary", action="store_true", help="only recompute the summary")
    args = parser.parse_args(argv)
    split = load_split()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {
        "command": "nice -n -5 python bench/suite_paired.py", "cells": {}, "commits": []}
    if not args.summary:
        head = _head()
        if head and head not in results["commits"]:
            results["commits"].append(head)
        cases, backbones, seeds = selected(args, split)
        for repeat in range(args.repeats):  # every row once, then every row again: a repeat spans the evening
            for case in cases:
                for backbone in backbones:
                    for seed in seeds:
                        budget = CASES[case].budget_seconds
                        for strategy in order(repeat):
                            key = f"{case}/{backbone}/{seed}/{strategy}/{budget:g}/r{repeat}"
                            if results["cells"].get(key, {}).get("returncode") == 0:
                                continue
                            rec = run_cell(case, backbone, seed, strategy, budget, Path(args.workdir) / f"r{repeat}")
                            rec["repeat"] = repeat
                            results["cells"][key] = rec
                            results["summary"] = summarize(results["cells"], split)
                            save_results(results, RESULTS)
                            print(f"{key}: test {rec.get('test_accuracy')} in {rec['wall_seconds']}s "
                                  f"(load {rec['load_before']}->{rec['load_after']})"
                                  + (f" ERROR {rec['error'][-300:]}" if "error" in rec else ""), flush=True)
    results["summary"] = summarize(results["cells"], split)
    save_results(results, RESULTS)
    print(json.dumps(results["summary"]["halves"], indent=1))
    for r in results["summary"]["rows"]:
        print(f"{r['half']:4s} {r['case']:16s} {r['backbone'].split(':')[-1]:22s} {r['seed']} "
              f"auto-default {r['differences']} mean {r['mean_difference']} se {r['se']}")


if __name__ == "__main__":
    main()
