"""The advisor's decision rules, all in one place: measurements in, a scenario and a training plan out.

The classic answer to "which recipe, for my data and this backbone?" is a 2x2 of dataset size x similarity to the
pretraining data (see docs/advisor.md for the sources and for what the benchmark says about each rule):

    |            | similar                                   | dissimilar                                      |
    |------------|-------------------------------------------|-------------------------------------------------|
    | small      | frozen bottleneck + linear classifier     | features from an earlier depth + linear classifier |
    | large      | fine-tune everything                      | fine-tune everything (from scratch when huge and the features are useless) |

with more of the body frozen the smaller the data: half of it for medium-sized sets.

Every threshold is a named field of `Thresholds`; `decide` reads nothing else. Each rule that fires adds one line to
``Decision.reasons`` with the numbers behind it, and that list is what the report prints.

* **Size** (`size_band`): small under ``small_max_images`` training images, or under ``small_max_per_class`` images
  in the median class (2,000 images over 100 classes is small); large from ``large_min_images``; medium in between.
* **Similarity** (`is_similar`): the probe curve. Similar when the pooled bottleneck's cross-validated probe accuracy
  is within ``dissimilar_gap`` of the best depth's; dissimilar when an earlier depth beats it by more. LogME and
  the BatchNorm shift are measured and reported, not voted: on the benchmark the probe curve's gap is the measure that
  tells which depth to probe (docs/advisor.md).
* **Strategy**: small -> ``linear_probe`` (pooled when similar, the best depth when not, the concatenation of the best
  depths when it beats both by ``concat_min_gain``); medium -> ``partial`` with half the body frozen (when
  dissimilar: frozen only up to the probe curve's peak, at most half); large -> ``lp_ft`` when similar and the run is
  long enough for a head-only epoch, else ``full``; ``scratch`` only for huge sets whose best probe barely beats
  chance.
* **Budget**: a fine-tuning plan gets the epochs that fit the time budget (from the measured step time); when not even
  ``min_finetune_epochs`` epochs and ``min_finetune_steps`` optimizer steps fit, the plan falls back to the linear
  probe, whose features are already cached.
* **Imbalance**: largest over smallest class from ``imbalance_ratio`` -> class-weighted loss; from
  ``severe_imbalance_ratio`` -> balanced sampling for fine-tuning (weights that large make the loss noisy).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..budget import epochs_that_fit
from .measure import BackboneMeasurement

SCENARIOS = {
    "small_similar": "small data, similar to the pretraining data: a linear classifier on the frozen bottleneck",
    "small_dissimilar": "small data, unlike the pretraining data: a linear classifier on features from an earlier depth",
    "large_similar": "enough data, similar to the pretraining data: fine-tune (more of the body frozen the smaller the data)",
    "large_dissimilar": "enough data, unlike the pretraining data: fine-tune everything (from scratch only when huge)",
}


@dataclass(frozen=True)
class Thresholds:
    """Every number the rules compare against, named once."""

    # Size. The transfer-learning folklore: under about a thousand images a linear classifier on frozen features
    # usually beats fine-tuning; from a few thousand (with augmentation) fine-tuning wins.
    small_max_images: int = 1000
    # The median class below this: small, whatever the total. Set from the benchmark: at 162 images a class (digits)
    # a probe beat 1- and 3-epoch fine-tunes (0.978 vs 0.950 / 0.967); at 450 (MNIST-5k) one epoch beat it (0.980 vs
    # 0.970). A classifier's appetite for data grows with its classes: 1,000 images are plenty for 2, few for 100.
    small_max_per_class: float = 200.0
    large_min_images: int = 10_000  # from here "large": little or nothing frozen
    medium_freeze_fraction: float = 0.5  # "half for medium data"
    # Similarity: the bottleneck's probe falls behind the best depth by more than this (accuracy) -> dissimilar.
    dissimilar_gap: float = 0.01
    concat_min_gain: float = 0.005  # concatenated depths must beat the best single depth by this much
    # From scratch: huge data whose best probe lifts accuracy above the majority class by under this share of what
    # is left to gain: the pretrained features are nearly useless.
    scratch_min_images: int = 100_000
    scratch_max_probe_lift: float = 0.3
    # Imbalance: largest class over smallest.
    imbalance_ratio: float = 3.0
    severe_imbalance_ratio: float = 10.0
    # Schedule.
    target_steps: int = 600  # optimizer steps a fine-tuning plan aims at (then capped by the budget)
    min_epochs: int = 3  # a fine-tune sees the data at least this often, when the budget allows
    max_epochs: int = 10
    min_finetune_epochs: float = 1.0  # fewer fit in the time budget: a linear probe instead
    # ...and so do fewer optimizer steps than this: on the benchmark, fine-tunes of 15-51 steps lost 3-9 points to
    # the best probe (mnist500, digits), while the embedded default's 141 steps beat it by one (0.980 vs 0.970).
    min_finetune_steps: int = 120
    lp_ft_min_epochs: int = 3  # LP-FT spends one epoch on the head: worth it only in longer runs
    augmentation_from_epochs: int = 3  # shorter runs: augmentation only slows convergence (README: 0.964 vs 0.984)
    similar_layer_decay: float = 0.8  # similar data: keep the general early layers closer to their pretrained values
    backbone_lr_multiplier: float = 0.1  # "about 10x smaller than for training from scratch"
    fixed_overhead_seconds: float = 20.0  # a new process (plan.yaml): imports, model load, data preparation, saving
    # The same outside the training loop, in the process that measured and raced (imports done, the data decoded):
    # the final probe job's reload, fits, export, save and exit took 3.2 s (lfw_faces, load 6).
    in_process_overhead_seconds: float = 4.0
    # Similarity as headroom (`is_similar`): the best probe must lift accuracy this share of the way from the
    # majority class to 1. From the guide's reading of "similar" (the frozen features nearly solve the task), not
    # tuned; issue #17's flat weak curve lifted 48%.
    similar_min_lift: float = 0.8
    # Decisions (the race, similarity, backbone ranking) fire only beyond this many standard errors of a paired
    # difference; within them the robust default stands.
    decision_z: float = 2.0
    # The robust default: from this many training images a full fine-tune (backbone x0.1), below it the pooled
    # linear probe (the guide's "under about a thousand images, bottleneck features and a linear classifier").
    default_finetune_min_images: int = 1000
    # The race (jobs/race.py): its share of the time left after measuring, and the held-out part of train it scores on.
    # --strategy auto under --time_budget measures at most this many images per budget second (at most
    # --max_probe_images): on the shared 2-core CPU the measurement ran at 11-25 images a second (1,000 images in
    # 40-94 s at load 9-14, suite runs of c611608), so 4 keeps it near a quarter of the budget.
    measure_images_per_budget_second: float = 4.0
    race_share: float = 0.5  # the winner keeps its race weights, so its share of the race is not lost
    holdout_fraction: float = 0.15
    holdout_max_images: int = 400


@dataclass
class Decision:
    """The scenario and the plan, with the reasons (one line per rule that fired, numbers included)."""

    scenario: str
    size_band: str  # small | medium | large
    similar: bool
    job: str  # "probe" (recipes/linear_probe.py) | "finetune" (recipes/finetune.py)
    strategy: str  # linear_probe | partial | lp_ft | full | scratch
    layers: str | None = None  # probe: "pooled", "7" or "3+7+pooled"
    freeze: str = "none"
    learning_rate: float | None = None
    backbone_lr_multiplier: float = 0.1
    layer_decay: float = 1.0
    num_train_epochs: float | None = None
    lp_epochs: int = 0
    augmentation: str = "none"
    class_weighting: str | None = None  # "balanced" (flag of the cross-validation / probes branches)
    sampler: str | None = None  # "balanced"
    estimated_seconds: float | None = None
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def size_band(m: BackboneMeasurement, t: Thresholds) -> tuple[str, str]:
    s = m.size
    if s.n_train < t.small_max_images:
        return "small", f"{s.n_train} training images < {t.small_max_images}: small"
    if s.median_per_class < t.small_max_per_class:
        return "small", (f"{s.median_per_class:g} images in the median class < {t.small_max_per_class:g}: small, "
                         f"although {s.n_train} in all")
    if s.n_train >= t.large_min_images:
        return "large", f"{s.n_train} training images >= {t.large_min_images}: large"
    return "medium", f"{t.small_max_images} <= {s.n_train} training images < {t.large_min_images}: medium"


def is_similar(m: BackboneMeasurement, t: Thresholds) -> tuple[bool, str]:
    """Similarity as headroom: similar only when the frozen features already solve the task. The best probe must
    lift accuracy at least ``similar_min_lift`` of the way from the majority class to 1, and the pooled bottleneck
    must be within ``decision_z`` standard errors of the best depth. A flat curve of weak probes is the opposite of
    similar: the pretrained features fit the task at no depth (issue #17: CV 0.76-0.84 over a 0.69 majority, a
    flat curve, was read as similar and half the body frozen)."""
    sim, size = m.similarity, m.size
    best, pooled = sim.best, sim.pooled
    majority = size.majority_share
    lift = (best.probe_cv - majority) / max(1e-9, 1 - majority)
    se = math.hypot(best.probe_cv_std, pooled.probe_cv_std) / math.sqrt(max(1, sim.cv_folds))
    gap = sim.bottleneck_gap
    if lift < t.similar_min_lift:
        return False, (f"the best probe ({best.probe_cv:.3f} at {best.name}) lifts accuracy only {lift:.0%} of the way "
                       f"from the majority class ({majority:.3f}) to 1 (< {t.similar_min_lift:.0%}): the pretrained "
                       "features leave headroom at every depth, so the data reads as unlike the pretraining data")
    if gap > max(t.decision_z * se, t.dissimilar_gap):
        return False, (f"the bottleneck's probe ({pooled.probe_cv:.3f}) falls {gap:.3f} behind {best.name} "
                       f"({best.probe_cv:.3f}), beyond {t.decision_z:g} SE ({se:.3f}) and {t.dissimilar_gap:.3f}: unlike "
                       f"the pretraining data (the curve peaks at {sim.peak_position:.0%} of the network)")
    return True, (f"the best probe ({best.probe_cv:.3f} at {best.name}) lifts accuracy {lift:.0%} of the way to 1 and "
                  f"the pooled probe ({pooled.probe_cv:.3f}) is within {t.decision_z:g} SE ({se:.3f}) of it: similar "
                  "to the pretraining data")


def probe_layer_choice(m: BackboneMeasurement, similar: bool, t: Thresholds) -> tuple[str, str]:
    """The `--layers` of a probe plan, and why."""
    sim = m.similarity
    single = sim.pooled if similar else sim.best
    concat = sim.concat
    if concat and concat["probe_cv"] >= sim.best.probe_cv + t.concat_min_gain:
        return concat["layers"], (f"depths {concat['layers']} concatenated reach {concat['probe_cv']:.3f}, "
                                  f">= {t.concat_min_gain:.3f} above the best single depth ({sim.best.probe_cv:.3f})")
    return single.spec, f"probe on {single.name} (cv {single.probe_cv:.3f})"


def epochs_for(n_train: int, batch_size: int, t: Thresholds) -> int:
    steps_per_epoch = max(1, math.ceil(n_train / max(1, batch_size)))
    return int(min(t.max_epochs, max(t.min_epochs, round(t.target_steps / steps_per_epoch))))


def epoch_seconds(m: BackboneMeasurement, trainable_share: float, batch_size: int) -> float:
    """One epoch of training plus the per-epoch evaluation, from the measured step and forward times."""
    steps = math.ceil(m.size.n_train / max(1, batch_size))
    evaluation = m.cost.forward_ms_per_image * m.size.n_validation / 1000
    return steps * m.cost.step_seconds(trainable_share) + evaluation


def probe_seconds(m: BackboneMeasurement) -> float:
    """A linear-probe plan: one forward over train and validation, and a few seconds of probe fits."""
    return m.cost.forward_ms_per_image * (m.size.n_train + m.size.n_validation) / 1000 + 5.0


def decide(m: BackboneMeasurement, *, time_budget: float | None = None, batch_size: int = 32,
           thresholds: Thresholds | None = None) -> Decision:
    """The scenario and the plan for one measured backbone. ``time_budget``: seconds the plan's run may take."""
    t = thresholds or Thresholds()
    band, size_reason = size_band(m, t)
    similar, similarity_reason = is_similar(m, t)
    scenario = f"{'small' if band == 'small' else 'large'}_{'similar' if similar else 'dissimilar'}"
    reasons = [size_reason, similarity_reason]
    decision = Decision(scenario, band, similar, "finetune", "full", learning_rate=m.default_learning_rate,
                        backbone_lr_multiplier=t.backbone_lr_multiplier, reasons=reasons)
    if band == "small":
        _make_probe(decision, m, similar, t)
    else:
        _make_finetune(decision, m, band, similar, t, time_budget, batch_size)
    _imbalance(decision, m, t)
    return decision


def _make_probe(d: Decision, m: BackboneMeasurement, similar: bool, t: Thresholds) -> None:
    layers, why = probe_layer_choice(m, similar, t)
    d.job, d.strategy, d.layers = "probe", "linear_probe", layers
    d.learning_rate, d.backbone_lr_multiplier, d.num_train_epochs, d.augmentation = None, 0.0, None, "none"
    d.estimated_seconds = round(probe_seconds(m), 1)
    d.reasons.append(why)


def _make_finetune(d: Decision, m: BackboneMeasurement, band: str, similar: bool, t: Thresholds,
                   time_budget: float | None, batch_size: int) -> None:
    body = m.similarity.body_depths
    trainable_share = 1.0
    lift = (m.similarity.best.probe_cv - m.size.majority_share) / max(1e-9, 1 - m.size.majority_share)
    if band == "large" and not similar and m.size.n_train >= t.scratch_min_images and lift < t.scratch_max_probe_lift:
        d.strategy, d.backbone_lr_multiplier = "scratch", 1.0
        d.reasons.append(f"{m.size.n_train} images >= {t.scratch_min_images} and the best probe lifts accuracy only "
                         f"{lift:.0%} of the way from the majority class to 1 (< {t.scratch_max_probe_lift:.0%}): the "
                         "pretrained features barely help; train from scratch")
    elif band == "medium":
        half = max(1, int(math.floor(t.medium_freeze_fraction * body + 1e-9)))
        frozen = half if similar or m.similarity.best.is_pooled else min(half, m.similarity.best.depth)
        if frozen >= 1:
            d.strategy, d.freeze = "partial", (f"fraction:{t.medium_freeze_fraction:g}" if frozen == half else f"depth:{frozen}")
            trainable_share = 1 - frozen / body
            d.reasons.append(f"medium data: the first {frozen} of {body} depth groups frozen"
                             + ("" if frozen == half else f" (up to the probe curve's peak at {m.similarity.best.name};"
                                                          " the layers after it are the ones that must change)"))
        else:
            d.reasons.append("medium data, but the probe curve peaks at the stem: nothing is worth freezing")
    else:
        d.reasons.append("large data: every layer trains")
    if similar and d.strategy in ("full", "lp_ft"):
        d.layer_decay = t.similar_layer_decay
    epochs = epochs_for(m.size.n_train, batch_size, t)
    reason = (f"{epochs} epoch(s): about {t.target_steps} steps at batch {batch_size}, at least {t.min_epochs} and at "
              f"most {t.max_epochs} epochs")
    per_epoch = epoch_seconds(m, trainable_share, batch_size)
    if time_budget is not None:
        fits = epochs_that_fit(time_budget, epoch_seconds=per_epoch, overhead_seconds=t.fixed_overhead_seconds)
        steps = int(math.floor(max(0.0, fits))) * math.ceil(m.size.n_train / max(1, batch_size))
        if fits < t.min_finetune_epochs or steps < t.min_finetune_steps:
            d.reasons.append(f"time budget {time_budget:.0f}s fits {max(0.0, fits):.2f} epoch(s) of {per_epoch:.0f}s, "
                             f"{steps} steps (a fine-tune needs {t.min_finetune_epochs:g}+ epochs and "
                             f"{t.min_finetune_steps}+ steps to beat a probe): a linear probe instead, on the features "
                             "already measured")
            _make_probe(d, m, similar, t)
            return
        if fits < epochs:
            epochs = max(1, int(math.floor(fits)))
            reason = f"{epochs} epoch(s): what the time budget of {time_budget:.0f}s fits at {per_epoch:.0f}s per epoch"
    d.num_train_epochs = epochs
    d.reasons.append(reason)
    if band == "large" and similar and d.strategy == "full" and epochs >= t.lp_ft_min_epochs:
        d.strategy, d.lp_epochs = "lp_ft", 1
        d.reasons.append(f"similar data, {epochs} epochs: LP-FT (one head-only epoch first, so the random head does "
                         "not distort the pretrained features; Kumar et al., ICLR 2022)")
    d.augmentation = "gentle" if epochs >= t.augmentation_from_epochs else "none"
    d.estimated_seconds = round(epochs * per_epoch + t.fixed_overhead_seconds, 1)


def _imbalance(d: Decision, m: BackboneMeasurement, t: Thresholds) -> None:
    ratio = m.size.imbalance_ratio
    if ratio < t.imbalance_ratio:
        return
    if d.job == "finetune" and ratio >= t.severe_imbalance_ratio:
        d.sampler = "balanced"
        d.reasons.append(f"classes {ratio:.1f}:1 (>= {t.severe_imbalance_ratio:g}:1): balanced sampling")
    else:
        d.class_weighting = "balanced"
        d.reasons.append(f"classes {ratio:.1f}:1 (>= {t.imbalance_ratio:g}:1): class-weighted loss")


__all__ = ["SCENARIOS", "Decision", "Thresholds", "decide", "epochs_for", "is_similar", "size_band"]
