"""The held-out suite's summary (bench/bench_suite.py): the figures the issue's targets are read from (regret
against the best fixed strategy and the default, rows more than a point below it, budget used) and what a row below
the default lifts from its race record."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite():
    path_before = list(sys.path)
    yield _load_bench("bench_suite")
    sys.path[:] = path_before  # the module puts bench/ first on the path for its `suite` package


def _load_bench(name):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cell(case, strategy, accuracy, wall, budget=100.0, backbone="embedded:efficientnet_lite1", seed=42, **extra):
    return {"case": case, "backbone": backbone, "seed": seed, "strategy": strategy, "test_accuracy": accuracy,
            "budget_seconds": budget, "wall_seconds": wall, **extra}


def race(default_steps: list[int], winner="full x0.1", run_steps=40):
    rungs = [{"rung": i, "plans": {"full x0.1": {"steps": s, "accuracy": 0.9 + 0.01 * i},
                                    "probe 7": {"steps": 0, "accuracy": 0.93}}} for i, s in enumerate(default_steps)]
    return {"winner": winner, "default": "full x0.1", "rungs": rungs,
            "verdict": {"winner": winner, "margin": 0.03, "se": 0.02}, "decision": {"job": "finetune"},
            "budget": {"planned_steps": run_steps}}


def test_regrets_targets_and_the_rows_below_the_default(suite):
    split = {"dev": ["a"], "test": ["b", "c"]}
    cells = [
        # b: auto 2 points below the default, which is the best; one budgeted cell at 85%
        cell("b", "auto", 0.90, 95.0, auto=race([30, 50], run_steps=40)),
        cell("b", "default", 0.92, 98.0, time_budget_planned_steps=300),
        cell("b", "partial", 0.91, 85.0),
        cell("b", "probe_pooled", 0.89, 20.0),
        # c: auto ahead of everything (negative regret); the default is not the best fixed strategy
        cell("c", "auto", 0.95, 99.0, auto=race([10], winner="probe 7")),
        cell("c", "default", 0.90, 97.0, time_budget_planned_steps=100),
        cell("c", "lp_ft", 0.945, 96.0),
        # a (dev): auto half a point below the best, level with the default
        cell("a", "auto", 0.980, 92.0, auto=race([5])),
        cell("a", "default", 0.980, 91.0, time_budget_planned_steps=50),
        cell("a", "probe_auto", 0.985, 10.0),
    ]
    summary = suite.summarize({"cells": {str(i): c for i, c in enumerate(cells)}}, split)
    rows = {r["case"]: r for r in summary["rows"]}
    assert rows["b"]["best_fixed"] == "default" and rows["b"]["regret_vs_best"] == pytest.approx(0.02)
    assert rows["c"]["best_fixed"] == "lp_ft" and rows["c"]["regret_vs_best"] == pytest.approx(-0.005)
    assert rows["c"]["regret_vs_default"] == pytest.approx(-0.05)
    # the probes have no --time_budget: only auto and the fine-tunes count towards the budget
    assert rows["b"]["budget_used"] == {"auto": 0.95, "default": 0.98, "partial": 0.85}

    test, dev = summary["halves"]["test"], summary["halves"]["dev"]
    assert test["within_1pt_of_best"] == "1/2" and test["more_than_1pt_below_default"] == 1
    assert test["mean_regret_vs_best"] == pytest.approx((0.02 - 0.005) / 2, abs=1e-4)
    assert test["budget_used_within_90_100"] == "5/6"  # partial at 85% is the one outside
    assert test["auto_budget_used_when_a_probe_won"] == {"cells": 1, "mean": 0.99, "min": 0.99}  # c's probe 7
    assert dev["auto_budget_used_when_a_probe_won"] == {"cells": 0, "mean": None, "min": None}
    assert dev["within_1pt_of_best"] == "1/1" and dev["more_than_1pt_below_default"] == 0
    assert dev["below_default"] == {}

    below = test["below_default"]
    assert set(below) == {"b-lite1-42"}  # only the row more than a point below the default
    row = below["b-lite1-42"]
    assert (row["auto"], row["default"], row["winner"], row["race_default"]) == (0.90, 0.92, "full x0.1", "full x0.1")
    # the default's steps over every rung, the real run's, and the default alone's, side by side
    assert (row["default_race_steps"], row["default_run_steps"], row["default_alone_steps"]) == (80, 40, 300)
    assert row["heldout"] == {"full x0.1": 0.91, "probe 7": 0.93}  # each plan's score at its last rung
    assert (row["margin"], row["se"]) == (0.03, 0.02)


def test_the_spread_pairs_only_cells_of_the_strategy_that_were_run_again():
    """bench/suite_spread.py: a cell copied unchanged from the first file is not a second run; other strategies and
    cases are left out; the mean and largest gap are over the pairs."""
    spread = _load_bench("suite_spread")
    def key(case, strategy):
        return f"{case}/embedded:efficientnet_lite0/42/{strategy}/120"

    first = {key(c, s): cell(c, s, acc, 118) for c, s, acc in
             [("a", "default", 0.80), ("b", "default", 0.90), ("c", "default", 0.95), ("a", "auto", 0.70)]}
    for k, load, steps in ((key("a", "default"), 2.1, 150), (key("b", "default"), 1.2, 300)):
        first[k].update(load_before=load, time_budget_planned_steps=steps)
    second = {**first, key("a", "default"): cell("a", "default", 0.86, 117, load_before=1.9,
                                                 time_budget_planned_steps=250),
              key("b", "default"): cell("b", "default", 0.895, 119, load_before=1.5, time_budget_planned_steps=290),
              key("a", "auto"): cell("a", "auto", 0.9, 118)}
    out = spread.spread({"cells": first}, {"cells": second}, "default", None)
    assert sorted(out["pairs"]) == [key("a", "default"), key("b", "default")]  # c was not rerun
    assert out["pairs"][key("a", "default")] == {"before": 0.8, "after": 0.86, "difference": 0.06,
                                                 "load_before": [2.1, 1.9], "steps": [150, 250]}
    # only a's runs started on either side of a load of 2; the one from 2.1 trained 150 steps to the other's 250
    assert out["load_and_steps"] == {"pairs_across_load_2": 1, "fewer_steps_from_load_2": 1,
                                     "mean_steps_ratio_from_load_2": 0.6}
    assert (out["mean_abs_difference"], out["max_abs_difference"], out["more_than_1pt_apart"]) == (0.0325, 0.06, 1)
    assert spread.spread({"cells": first}, {"cells": second}, "default", ["b"])["cells"] == 1



def test_paired_rows_are_judged_on_the_mean_of_back_to_back_differences():
    """bench/suite_paired.py: a repeat counts only when both of its cells finished; a row is below the default on the
    mean of its paired differences, beyond the noise only past 2 SE; the first repeat alone is reported beside it;
    the default's steps inside auto count only when the default won; the order alternates between repeats."""
    path_before = list(sys.path)
    paired = _load_bench("suite_paired")
    try:
        split = {"dev": ["a"], "test": ["b", "c"]}
        runs = [  # (case, repeat, strategy, accuracy, extra)
            ("b", 0, "auto", 0.88, {"auto": race([30, 50], run_steps=40)}),
            ("b", 0, "default", 0.90, {"time_budget_planned_steps": 200}),  # -2 points
            ("b", 1, "auto", 0.91, {"auto": race([30], winner="probe 7")}),
            ("b", 1, "default", 0.90, {"time_budget_planned_steps": 180}),  # +1 point
            ("b", 2, "auto", 0.70, {}),  # the default of repeat 2 failed: no pair
            ("c", 0, "auto", 0.80, {}), ("c", 0, "default", 0.84, {}),
            ("c", 1, "auto", 0.81, {}), ("c", 1, "default", 0.85, {}),
            ("a", 0, "auto", 0.95, {}), ("a", 0, "default", 0.95, {}),
        ]
        cells = {f"{c}/{s}/r{r}": cell(c, s, acc, 100.0, repeat=r, **extra) for c, r, s, acc, extra in runs}
        summary = paired.summarize(cells, split)
        rows = {r["case"]: r for r in summary["rows"]}
        b, c, a = rows["b"], rows["c"], rows["a"]
        assert b["repeats"] == 2 and b["differences"] == [-0.02, 0.01]
        assert b["mean_difference"] == pytest.approx(-0.005) and b["se"] == pytest.approx(0.015)
        assert b["first_difference"] == -0.02
        assert b["default_steps_in_auto"] == [120, None] and b["default_steps_alone"] == [200, 180]
        assert c["mean_difference"] == pytest.approx(-0.04) and c["se"] == pytest.approx(0.0)
        assert a["repeats"] == 1 and a["se"] is None

        test = summary["halves"]["test"]
        assert (test["rows"], test["pairs"]) == (2, 4)
        assert test["more_than_1pt_below_default_on_the_mean"] == 1 and test["rows_below"] == ["c-lite1-42"]
        assert test["below_default_beyond_2se"] == 1  # c: -4 points, no spread; b: within its noise
        assert test["more_than_1pt_below_default_first_repeat_only"] == 2  # one run each would have said both
        assert test["default_steps_in_auto_over_alone"] == pytest.approx(0.6)  # b's first pair: 120 of 200 steps
        assert summary["halves"]["dev"]["below_default_beyond_2se"] == 0  # one repeat: no SE, never "beyond"
        assert paired.order(0) == ("auto", "default") and paired.order(1) == ("default", "auto")
    finally:
        sys.path[:] = path_before  # suite_paired and the bench_suite it imports each put bench/ first
