"""The race's rules: which plans run, how a rung is judged, who wins. Pure: no model, no data loading.

`--strategy auto` does not trust a transferability score to pick the plan (issue #17: none holds across datasets).
The measurements only pick 3-5 *candidate* plans (`candidate_plans`); the race (`hf_transfer.jobs.race`) trains
each one briefly on the user's own training split, scores it on a held-out part of that split, and keeps the better
half (successive halving, Jamieson & Talwalkar 2016). Every comparison is a *paired* difference over the same
held-out images with its standard error (`paired_difference`): a plan beats another only by more than
``Thresholds.decision_z`` (2) standard errors. The robust default (`default_plan`) wins every comparison that the
noise cannot decide.

Optuna keeps the race (one trial per plan, each rung's score an intermediate value, dropped plans marked PRUNED), and
`PairedHalvingPruner` is an `optuna.pruners.BasePruner`. Optuna's own `SuccessiveHalvingPruner` and
`HyperbandPruner` are asynchronous (ASHA): a trial is judged against the trials that happened to report at its rung
before it (the first to report is always promoted, and the reporting trial's value is counted twice), which suits
hundreds of trials arriving over time, not 3-5 plans that all finish a rung before any is judged. This pruner judges
a rung once every live plan has reported: the better half goes on, and a plan within the noise of the leader, or the
default, is never dropped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .measure import BackboneMeasurement
from .rules import Thresholds, is_similar

CORRECT_ATTR = "correct"  # trial user attribute: the held-out images' correctness (0/1) at the latest rung
RUNG_ATTR = "rung"


@dataclass
class CandidatePlan:
    """One plan in the race: a probe (``job == "probe"``, trained once) or a fine-tune (trained rung by rung)."""

    name: str
    job: str  # "probe" | "finetune"
    strategy: str
    why: str
    layers: str | None = None  # probe: --layers
    freeze: str = "none"
    lp_epochs: int = 0
    backbone_lr_multiplier: float = 0.1
    layer_decay: float = 1.0
    is_default: bool = False
    trainable_share: float = 1.0  # of the body: scales the measured backward time

    def as_dict(self) -> dict:
        return asdict(self)


def default_plan(m: BackboneMeasurement, t: Thresholds) -> CandidatePlan:
    """The documented robust default: from ``default_finetune_min_images`` training images a full fine-tune with the
    backbone at x0.1; below it the linear probe on the pooled bottleneck (the guide: under about a thousand images,
    bottleneck features and a linear classifier)."""
    if m.size.n_train >= t.default_finetune_min_images:
        return CandidatePlan("full x0.1", "finetune", "full", f"the robust default from {t.default_finetune_min_images} "
                             "images: every layer trains, the backbone at x0.1 the head's rate",
                             backbone_lr_multiplier=t.backbone_lr_multiplier, is_default=True)
    return CandidatePlan("probe pooled", "probe", "linear_probe", f"the robust default under "
                         f"{t.default_finetune_min_images} images: a linear probe on the pooled bottleneck",
                         layers="pooled", backbone_lr_multiplier=0.0, is_default=True)


def candidate_plans(m: BackboneMeasurement, t: Thresholds, *, max_candidates: int = 4) -> list[CandidatePlan]:
    """3-5 plans from the measurements: the default, the best probe (concatenation included), `partial` frozen up to
    the probe curve's knee, a full fine-tune, LP-FT when the features look worth keeping."""
    sim = m.similarity
    plans = [default_plan(m, t)]
    concat = sim.concat
    if concat and concat["probe_cv"] >= sim.best.probe_cv + t.concat_min_gain:
        best_probe = CandidatePlan(f"probe {concat['layers']}", "probe", "linear_probe",
                                   f"the probe curve's best: depths {concat['layers']} concatenated, cv "
                                   f"{concat['probe_cv']:.3f}", layers=concat["layers"], backbone_lr_multiplier=0.0)
    else:
        best_probe = CandidatePlan(f"probe {sim.best.spec}", "probe", "linear_probe",
                                   f"the probe curve's best depth: {sim.best.name}, cv {sim.best.probe_cv:.3f}",
                                   layers=sim.best.spec, backbone_lr_multiplier=0.0)
    plans.append(best_probe)
    body = sim.body_depths
    knee = min(max(1, int(math.floor(t.medium_freeze_fraction * body + 1e-9))),
               sim.best.depth if sim.best.depth is not None else body)
    if knee >= 1:
        plans.append(CandidatePlan(f"partial depth:{knee}", "finetune", "partial",
                                   f"the first {knee} of {body} depth groups frozen (up to the probe curve's knee, at "
                                   "most half)", freeze=f"depth:{knee}", trainable_share=1 - knee / body,
                                   backbone_lr_multiplier=t.backbone_lr_multiplier))
    plans.append(CandidatePlan("full x0.1", "finetune", "full", "every layer trains, the backbone at x0.1",
                               backbone_lr_multiplier=t.backbone_lr_multiplier))
    similar, _ = is_similar(m, t)
    if similar:
        plans.append(CandidatePlan("full x0.1 decay", "finetune", "full", "similar data: layer decay keeps the early "
                                   "layers near their pretrained values", layer_decay=t.similar_layer_decay,
                                   backbone_lr_multiplier=t.backbone_lr_multiplier))
    unique: dict[str, CandidatePlan] = {}
    for plan in plans:  # the default first: a duplicate of it keeps the default's flag
        unique.setdefault(plan.name, plan)
    return list(unique.values())[:max(3, max_candidates)]


# ------------------------------------------------------------------------------------------------ paired statistics
def paired_difference(correct_a, correct_b) -> tuple[float, float]:
    """Mean and standard error of a - b over the same images (0/1 correctness each)."""
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("paired comparison needs two correctness vectors over the same images")
    d = a - b
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else float("inf")
    return float(d.mean()), se


def beats(correct_a, correct_b, z: float) -> bool:
    """a beats b beyond the noise: the paired mean difference exceeds ``z`` standard errors (and is positive)."""
    mean, se = paired_difference(correct_a, correct_b)
    return mean > 0 and mean > z * se


@dataclass
class Verdict:
    winner: str
    leader: str  # the best by held-out accuracy (the winner unless the noise sent it back to the default)
    margin: float  # leader - default, paired mean
    se: float
    reason: str


def choose_winner(correct: dict[str, np.ndarray], default: str, z: float, fallback: bool = True) -> Verdict:
    """The leader wins only when it beats the default by more than ``z`` paired standard errors; else the default.

    ``fallback=False``: the race has filled the budget to its end, so what it measured is what each plan will be
    (no time is left to train the default further); the robust default is robust only when trained to the end, so the leader
    by held-out accuracy wins (dev half: the default chosen this way had a few seconds left and lost 3-5 points)."""
    leader = max(correct, key=lambda name: (float(np.mean(correct[name])), name == default))
    if leader == default:
        return Verdict(default, leader, 0.0, 0.0, f"the default ({default}) leads on the held-out images")
    margin, se = paired_difference(correct[leader], correct[default])
    if not fallback:
        return Verdict(leader, leader, margin, se, f"{leader} leads the default ({default}) by {margin:+.3f} "
                       f"(SE {se:.3f}); the race filled the budget, so no plan trains further: the leader wins")
    if margin > z * se:
        return Verdict(leader, leader, margin, se, f"{leader} beats the default ({default}) by {margin:+.3f} on the "
                       f"held-out images, > {z:g} SE ({se:.3f}): it wins")
    return Verdict(default, leader, margin, se, f"{leader} leads the default ({default}) by {margin:+.3f}, within "
                   f"{z:g} SE ({se:.3f}): not beyond the noise, so the robust default wins")


def survivors(correct: dict[str, np.ndarray], default: str, z: float, keep: int) -> list[str]:
    """The better ``keep`` plans by held-out accuracy, plus the default, plus any plan the leader does not beat
    beyond ``z`` SE (a plan is dropped only when the noise says so)."""
    order = sorted(correct, key=lambda name: -float(np.mean(correct[name])))
    leader = order[0]
    alive = set(order[:keep]) | {default}
    alive |= {name for name in order if not beats(correct[leader], correct[name], z)}
    return [name for name in order if name in alive]


# ------------------------------------------------------------------------------------------------ Optuna's side
def fill_plan(correct: dict[str, np.ndarray], default: str, z: float) -> str:
    """The one fine-tune that trains on while a probe leads (filling the budget): the default, unless another
    fine-tune beats it beyond ``z`` SE (then the best of those).

    The verdict compares a probe, whose score is final, with fine-tunes stopped a fraction of the way: the spare
    time goes to the plan the verdict falls back on, so a probe wins only over a default trained most of the budget.
    Given to the best fine-tune instead, a slow-starting default (fewer steps a second, behind after a short rung)
    was left at a third of its budget and a probe beat it (dev half: digits_8x8 on Lite1, 3 points below the
    default run alone); split between two, neither caught up."""
    if default not in correct:
        return max(correct, key=lambda n: float(correct[n].mean()))
    better = [n for n in correct if n != default and beats(correct[n], correct[default], z)]
    return max(better, key=lambda n: float(correct[n].mean())) if better else default


def make_pruner(default: str, z: float, reduction_factor: int = 2, probes: frozenset[str] = frozenset()):
    """``probes``: plans trained once, whose score is final from the first rung. Halving compares plans at equal
    resource: a probe is neither dropped nor drops a fine-tune after a few steps (a 5-step fine-tune scored 0.27
    against a probe's 0.98 on mnist300, and the budget it would have trained on went unused); probes and
    fine-tunes meet only in the verdict, at the race's end."""
    import optuna

    class PairedHalvingPruner(optuna.pruners.BasePruner):
        """Synchronous successive halving with paired standard errors (see the module's docstring)."""

        def prune(self, study, trial) -> bool:
            rung = trial.last_step
            if rung is None or trial.params["plan"] in probes:
                return False
            rivals = [t for t in study.get_trials(deepcopy=False)
                      if t.state == optuna.trial.TrialState.RUNNING and rung in t.intermediate_values
                      and t.params["plan"] not in probes]
            correct = {t.params["plan"]: np.asarray(t.user_attrs[CORRECT_ATTR]) for t in rivals}
            if trial.params["plan"] not in correct or len(correct) < 2:
                return False
            keep = max(1, len(correct) // reduction_factor)
            return trial.params["plan"] not in survivors(correct, default, z, keep)

    return PairedHalvingPruner()


@dataclass
class RaceRecord:
    """What the race did, for advice.json / advice.md / advice.png."""

    candidates: list[dict]
    rungs: list[dict] = field(default_factory=list)  # per rung: plan -> {steps, accuracy, se, seconds, dropped}
    verdict: dict | None = None
    soup: dict | None = None
    # the last rung's 0/1 per held-out image of every plan still in the race: the verdict can be replayed at another
    # decision threshold without training anything (the sensitivity lines in docs/advisor.md)
    final_correct: dict | None = None
    holdout_images: int = 0
    seconds: float = 0.0
    # the race filled the budget to its end: no plan trains further, so the verdict cannot fall back on the default
    ran_out_of_time: bool = False
    # a fine-tune winner's place on its one schedule, where its real run goes on: {"offset", "warmup_steps"}
    winner_schedule: dict | None = None
    # the seconds the race left a probe winner's final run beyond its forward pass (None: no budget)
    final_run_overhead_seconds: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


__all__ = ["CandidatePlan", "RaceRecord", "Verdict", "beats", "candidate_plans", "choose_winner", "default_plan",
           "fill_plan", "make_pruner", "paired_difference", "survivors"]

