"""Ranking candidate backbones before anything is fine-tuned.

Primary key: the best cross-validated probe accuracy over depths (direct evidence of how well the frozen features
separate these classes). Within the noise of each other (``DECISION_Z`` standard errors of the difference, from
the CV folds' spread, and at least ``RANK_TIE``), the higher LogME (best depth) wins, then the cheaper training
step. docs/advisor.md shows how this order compares with the fine-tuned one on the benchmark.
"""

from __future__ import annotations

import functools
import math

from .measure import BackboneMeasurement

RANK_TIE = 0.005  # probe accuracies closer than this are a tie (a few images of a 1,000-image subsample)
DECISION_Z = 2.0  # as Thresholds.decision_z: a difference within 2 SE is noise


def _compare(a: BackboneMeasurement, b: BackboneMeasurement) -> int:
    pa, pb = a.similarity.best.probe_cv, b.similarity.best.probe_cv
    # the fold scores' spread as the SE of each mean (not paired: the two backbones' folds are not stored)
    se = math.hypot(a.similarity.best.probe_cv_std, b.similarity.best.probe_cv_std) / math.sqrt(max(1, a.similarity.cv_folds))
    if abs(pa - pb) > max(RANK_TIE, DECISION_Z * se):
        return -1 if pa > pb else 1
    la, lb = a.similarity.best_by_logme.logme, b.similarity.best_by_logme.logme
    if la != lb:
        return -1 if la > lb else 1
    return -1 if a.cost.train_ms_per_image <= b.cost.train_ms_per_image else 1


def rank_backbones(measurements: list[BackboneMeasurement]) -> list[BackboneMeasurement]:
    """Best first."""
    return sorted(measurements, key=functools.cmp_to_key(_compare))


def ranking_rows(ranked: list[BackboneMeasurement]) -> list[dict]:
    return [{
        "rank": i + 1,
        "backbone": m.backbone,
        "best_probe_cv": m.similarity.best.probe_cv,
        "best_depth": m.similarity.best.name,
        "pooled_probe_cv": m.similarity.pooled.probe_cv,
        "logme": m.similarity.best_by_logme.logme,
        "logme_depth": m.similarity.best_by_logme.name,
        "bn_shift": None if m.similarity.bn_shift is None else round(m.similarity.bn_shift, 4),
        "forward_ms_per_image": round(m.cost.forward_ms_per_image, 2),
        "train_ms_per_image": round(m.cost.train_ms_per_image, 2),
    } for i, m in enumerate(ranked)]


def ranking_table(ranked: list[BackboneMeasurement]) -> str:
    rows = [f"{'rank':>4}  {'backbone':<30} {'best probe':>10} {'at depth':<26} {'pooled':>7} {'LogME':>7} "
            f"{'BN shift':>8} {'fwd ms/img':>10} {'train ms/img':>12}"]
    for r in ranking_rows(ranked):
        shift = "-" if r["bn_shift"] is None else f"{r['bn_shift']:.3f}"
        rows.append(f"{r['rank']:>4}  {r['backbone'][:30]:<30} {r['best_probe_cv']:>10.4f} {r['best_depth'][:26]:<26} "
                    f"{r['pooled_probe_cv']:>7.4f} {r['logme']:>7.3f} {shift:>8} {r['forward_ms_per_image']:>10.2f} "
                    f"{r['train_ms_per_image']:>12.2f}")
    return "\n".join(rows)


__all__ = ["RANK_TIE", "rank_backbones", "ranking_rows", "ranking_table"]
