#!/usr/bin/env python
"""The same suite cells run twice: how far apart their test accuracies land (bench/results/suite_spread.json).

The suite runs each (case, backbone, seed, strategy) cell once; a budgeted fine-tune's steps depend on how fast the
shared machine is that minute, so one run per cell carries a spread that the 1-point targets of issue #17 must be read
against. Each comparison pairs the cells two results files hold under the same key, for one strategy:

    python bench/suite_spread.py --name default_test --before bench/results/suite_step9.json \
        --after bench/results/suite_default_rerun_5d38e9e.json --strategy default --cases mnist_rotated,mnist_textured
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "suite_spread.json"


def spread(before: dict, after: dict, strategy: str, cases: list[str] | None) -> dict:
    pairs = {}
    for key, cell in sorted(after["cells"].items()):
        case, _, _, strat, _ = key.split("/")
        old = before["cells"].get(key)
        if strat != strategy or (cases and case not in cases) or not old or old == cell:  # equal: not rerun
            continue
        if old.get("test_accuracy") is None or cell.get("test_accuracy") is None:
            continue
        pairs[key] = {"before": round(old["test_accuracy"], 4), "after": round(cell["test_accuracy"], 4),
                      "difference": round(cell["test_accuracy"] - old["test_accuracy"], 4),
                      # the 1-minute load each run started at, and the steps it trained (budgeted fine-tunes)
                      "load_before": [old.get("load_before"), cell.get("load_before")],
                      "steps": [old.get("time_budget_planned_steps"), cell.get("time_budget_planned_steps")]}
    gaps = [abs(p["difference"]) for p in pairs.values()]
    return {"strategy": strategy, "cells": len(pairs), "pairs": pairs,
            "mean_abs_difference": round(sum(gaps) / len(gaps), 4) if gaps else None,
            "max_abs_difference": round(max(gaps), 4) if gaps else None,
            "more_than_1pt_apart": sum(g > 0.01 for g in gaps), "load_and_steps": _load_and_steps(pairs.values())}


def _load_and_steps(pairs) -> dict:
    """Pairs whose two runs started on either side of a 1-minute load of 2 (the cores: the recipes' OpenMP rule
    before b4004b7 chose PASSIVE from there), and how many of them the run that started at 2 or more trained fewer
    steps in."""
    split = [p for p in pairs if None not in p["steps"] and None not in p["load_before"]
             and (p["load_before"][0] >= 2) != (p["load_before"][1] >= 2)]
    high_low = [(p["steps"][0], p["steps"][1]) if p["load_before"][0] >= 2 else (p["steps"][1], p["steps"][0])
                for p in split]
    return {"pairs_across_load_2": len(split), "fewer_steps_from_load_2": sum(h < lo for h, lo in high_low),
            "mean_steps_ratio_from_load_2": round(sum(h / lo for h, lo in high_low) / len(high_low), 3)
            if high_low else None}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the comparison's key in suite_spread.json")
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", required=True)
    parser.add_argument("--strategy", required=True)
    parser.add_argument("--cases", default=None, help="comma-separated (default: every case both files hold)")
    args = parser.parse_args(argv)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    out = spread(json.loads(Path(args.before).read_text()), json.loads(Path(args.after).read_text()), args.strategy,
                 args.cases.split(",") if args.cases else None)
    out["command"] = (f"python bench/suite_spread.py --name {args.name} --before {args.before} --after {args.after} "
                      f"--strategy {args.strategy}" + (f" --cases {args.cases}" if args.cases else ""))
    results[args.name] = out
    RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
