"""Replay an auto run's decision at other thresholds, without training: the sensitivity of each threshold.

An auto run's advice.json records what the rules read (the measurement), the race's candidates, and every rung's
0/1 per held-out image of every plan. With changed `Thresholds` the replay re-derives the candidates (`candidate_plans`),
the flags the race does not choose (class weighting, the sampler), the halving (`survivors`, probes judged apart as
`make_pruner` does) and the verdict (`choose_winner`), and returns the plan that would have won.

Where the changed thresholds make the race run something it did not (a candidate it never trained, a plan it dropped
kept alive into rungs that were never trained, another rung count, other flags for the run), the replay says so and
returns no winner: that threshold cannot be judged from the record, only by rerunning.

Thresholds that change *what is measured or trained* (the held-out share, the race's time share, the measurement's
size, the overheads) are not replayable at all: `NOT_REPLAYABLE` says why for each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .measure import BackboneMeasurement
from .race import candidate_plans, choose_winner, default_plan, survivors
from .rules import Thresholds, decide

MAX_CANDIDATES = 4  # candidate_plans' default: replayed as a threshold too

NOT_REPLAYABLE = {
    "measure_images_per_budget_second": "sizes the measurement: the curve the rules read would differ",
    "race_share": "the race's time: other rung lengths, other scores",
    "holdout_fraction": "the held-out images: every score would differ",
    "holdout_max_images": "the held-out images: every score would differ",
    "in_process_overhead_seconds": "the time left for the race's last rung and the final run (before a rung is timed)",
    "CURVE_C (measure.py)": "the probe curve's regularization: the measurement itself would differ",
    "PROBE_C (jobs/race_training.py)": "the race's probe fits: the probes' held-out scores would differ",
    "MIN_RUNG_STEPS (jobs/race.py)": "which fine-tunes fit the race and how long a rung is",
    "FINAL_RUN_OVERHEADS (jobs/race.py)": "the time a probe winner's final run is left, in measured rung overheads",
}


@dataclass
class Replayed:
    winner: str | None  # None: not replayable at these thresholds (``why`` says what the race would have run)
    why: str


def _n_rungs(finetunes: int) -> int:
    return max(1, math.ceil(math.log2(max(1, finetunes)))) + 1 if finetunes else 1


def _flags(m: BackboneMeasurement, t: Thresholds) -> tuple:
    d = decide(m, thresholds=t)
    return d.class_weighting, d.sampler


def replay(record: dict, t: Thresholds, *, base: Thresholds | None = None,
           max_candidates: int = MAX_CANDIDATES) -> Replayed:
    """``record``: an auto run's {"measurement", "candidates" (names the race ran, in order), "default", "rungs"}
    (bench/bench_suite.py's auto record, or advice.json's race); ``base``: the thresholds it ran with."""
    base = base or Thresholds()
    m = BackboneMeasurement.from_dict(record["measurement"])
    ran = list(record["candidates"])
    base_plans = {p.name: p for p in candidate_plans(m, base)}
    left_out = set(base_plans) - set(ran)  # by the race's time filter (jobs/race.py `affordable`)
    plans = {p.name: p for p in candidate_plans(m, t, max_candidates=max_candidates) if p.name not in left_out}
    new = [n for n in plans if n not in ran]
    if new:
        return Replayed(None, f"the race would have run {', '.join(new)}, which it did not")
    default = default_plan(m, t).name
    default = default if default in ran or default not in left_out else record["default"]
    if default not in plans:
        return Replayed(None, f"the default would be {default}, which the race did not run")
    if _flags(m, t) != _flags(m, base):
        return Replayed(None, "the run's class weighting / sampler would differ")
    is_probe = {n: p.job == "probe" for n, p in plans.items()}
    alive = [n for n in ran if n in plans]
    finetunes = sum(not is_probe[n] for n in alive)
    if _n_rungs(finetunes) != _n_rungs(sum(base_plans[n].job == "finetune" for n in ran)):
        return Replayed(None, "another number of rungs")
    n_rungs, correct = _n_rungs(finetunes), None
    for rung in record["rungs"]:
        have = rung["plans"]
        missing = [n for n in alive if n not in have]
        if missing:
            return Replayed(None, f"{', '.join(missing)} would be kept past rung {rung['rung']}, never trained there")
        scores = {n: np.frombuffer(have[n]["correct"].encode(), dtype=np.uint8) - ord("0") for n in alive}
        if rung["filling_the_budget"] and correct is not None:
            # the race fills the budget only while a probe leads
            if not is_probe[choose_winner(correct, default, t.decision_z).winner]:
                break
        correct = scores
        if not rung["filling_the_budget"] and rung["rung"] < n_rungs - 1:
            ft = {n: s for n, s in scores.items() if not is_probe[n]}
            if len(ft) >= 2:
                kept = survivors(ft, default, t.decision_z, max(1, len(ft) // 2))
                alive = [n for n in alive if is_probe[n] or n in kept]
                correct = {n: correct[n] for n in alive}
    if correct is None:
        return Replayed(None, "no rung recorded")
    ran_out = record.get("ran_out_of_time")
    if ran_out is None:  # a suite record written before it kept the flag: the verdict's reason says so
        ran_out = "race filled the budget" in ((record.get("verdict") or {}).get("reason") or "")
    verdict = choose_winner(correct, default, t.decision_z, fallback=not ran_out)
    return Replayed(verdict.winner, verdict.reason)


def scaled(t: Thresholds, name: str, factor: float) -> Thresholds:
    """``t`` with one threshold times ``factor`` (integers rounded, at least 1)."""
    from dataclasses import replace

    value = getattr(t, name)
    new = max(1, int(round(value * factor))) if isinstance(value, int) else value * factor
    return replace(t, **{name: new})


__all__ = ["MAX_CANDIDATES", "NOT_REPLAYABLE", "Replayed", "replay", "scaled"]
