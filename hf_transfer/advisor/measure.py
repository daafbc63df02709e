"""What the advisor measures about (data, backbone), with nothing but the data and the pretrained weights.

* **Size**: training images, classes, images per class, class balance (`SizeStats`).
* **Similarity to the pretraining data**, three ways, per depth of the backbone's `LayerMap` (`SimilarityStats`):
  - the *probe curve*: cross-validated accuracy of a logistic-regression probe on each depth's pooled features
    (where it peaks, and how far the bottleneck falls behind the peak);
  - *LogME* (You et al., ICML 2021) of each depth's features: the evidence of a Bayesian linear model, no training;
  - for BatchNorm networks, the *BN shift*: the KL divergence between the Gaussian of the data's activation
    statistics at each BatchNorm input and the one of the stored running statistics (zero when they agree).
* **Cost**: forward milliseconds per image, and the seconds of one full training step (forward + backward), timed on
  a real batch; the budget fitting (`hf_transfer.budget`) extrapolates epochs from them (`CostStats`).

Everything runs on a stratified subsample of the training split (``max_images``, 1,000 by default), with the
features of every depth from one forward pass and cached (`hf_transfer.features`), and the probes fitted with the
probe job's own `fit_probe` (their CV scores cached beside the features): a rerun costs no backbone forward.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..features import POOLED, FeatureCache, FeatureLayer, compute_features, iter_batches
from ..layers import LayerMap
from ..probes import ProbeConfig, fit_probe
from .logme import logme

# The probe behind the curve: logistic regression on standardized features with one regularization strength.
# The probe job searches C over (0.01, 0.1); for ranking depths against each other one value is enough, and it halves
# the cost. 0.1 was the probe job's choice at most depths of the embedded backbones.
CURVE_PROBE = "logreg"
CURVE_C = 0.1


@dataclass
class SizeStats:
    """How much data, and how it is spread over the classes (from the training split's labels)."""

    n_train: int
    n_validation: int
    n_classes: int
    per_class: list[int]  # training images of each class, by class index
    class_names: list[str] = field(default_factory=list)

    @classmethod
    def from_labels(cls, train_labels, n_validation: int, class_names: list[str]) -> "SizeStats":
        counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=len(class_names))
        return cls(int(counts.sum()), int(n_validation), len(class_names), counts.tolist(), list(class_names))

    @property
    def min_per_class(self) -> int:
        present = [c for c in self.per_class if c > 0]
        return min(present) if present else 0

    @property
    def max_per_class(self) -> int:
        return max(self.per_class) if self.per_class else 0

    @property
    def median_per_class(self) -> float:
        return float(np.median(self.per_class)) if self.per_class else 0.0

    @property
    def imbalance_ratio(self) -> float:
        """Largest class over smallest (1.0 = balanced)."""
        return self.max_per_class / max(1, self.min_per_class)

    @property
    def majority_share(self) -> float:
        """Accuracy of always answering the largest class: the floor every probe must beat."""
        return self.max_per_class / max(1, self.n_train)

    def as_dict(self) -> dict:
        return {**asdict(self), "min_per_class": self.min_per_class, "median_per_class": self.median_per_class,
                "max_per_class": self.max_per_class, "imbalance_ratio": round(self.imbalance_ratio, 3),
                "majority_share": round(self.majority_share, 4)}


@dataclass
class DepthMeasure:
    """One depth of the backbone (or the pooled bottleneck): probe accuracy, LogME and BN shift there."""

    name: str
    depth: int | None  # None: pooled
    dim: int
    probe_cv: float
    probe_cv_std: float
    logme: float
    bn_shift: float | None = None  # mean KL over the BatchNorm layers of this depth group (None: no BatchNorm)

    @property
    def is_pooled(self) -> bool:
        return self.depth is None

    @property
    def spec(self) -> str:
        """How `--layers` names it."""
        return POOLED if self.is_pooled else str(self.depth)


@dataclass
class SimilarityStats:
    """The per-depth curves and what the rules read from them."""

    depths: list[DepthMeasure]  # shallow first, pooled last
    body_depths: int  # depth groups in the body (the x axis runs 0 .. body_depths - 1, then pooled)
    concat: dict | None = None  # {"layers": [...specs], "probe_cv": float, "dim": int}: the best depths together
    images: int = 0  # images the curves were measured on
    cv_folds: int = 3

    @property
    def pooled(self) -> DepthMeasure:
        return next(d for d in self.depths if d.is_pooled)

    @property
    def best(self) -> DepthMeasure:
        """The depth with the best cross-validated probe accuracy (ties: the deeper one)."""
        return max(reversed(self.depths), key=lambda d: d.probe_cv)

    @property
    def best_by_logme(self) -> DepthMeasure:
        return max(reversed(self.depths), key=lambda d: d.logme)

    @property
    def bottleneck_gap(self) -> float:
        """How far the pooled bottleneck's probe falls behind the best depth (accuracy, 0 when pooled is best)."""
        return self.best.probe_cv - self.pooled.probe_cv

    @property
    def peak_position(self) -> float:
        """Where the probe curve peaks, as a share of the network: 1.0 at the bottleneck, near 0 at the stem."""
        best = self.best
        return 1.0 if best.is_pooled else (best.depth + 1) / (self.body_depths + 1)

    @property
    def bn_shift(self) -> float | None:
        """Mean BN shift over the depth groups that have BatchNorm (None for networks without)."""
        values = [d.bn_shift for d in self.depths if d.bn_shift is not None]
        return float(np.mean(values)) if values else None

    def as_dict(self) -> dict:
        return {
            "depths": [asdict(d) for d in self.depths],
            "body_depths": self.body_depths,
            "best": self.best.name, "best_probe_cv": round(self.best.probe_cv, 5),
            "pooled_probe_cv": round(self.pooled.probe_cv, 5),
            "bottleneck_gap": round(self.bottleneck_gap, 5), "peak_position": round(self.peak_position, 4),
            "best_by_logme": self.best_by_logme.name, "bn_shift": self.bn_shift,
            "concat": self.concat, "images": self.images, "cv_folds": self.cv_folds,
        }


@dataclass
class CostStats:
    """Measured speed of the backbone at this input size on this machine."""

    forward_ms_per_image: float  # inference, eval mode
    train_step_seconds: float  # one forward + backward with every parameter trainable, at ``batch_size``
    batch_size: int
    image_size: int

    @property
    def train_ms_per_image(self) -> float:
        return 1000 * self.train_step_seconds / max(1, self.batch_size)

    def step_seconds(self, trainable_share: float) -> float:
        """One training step when the top ``trainable_share`` of the body trains (0: head only; 1: everything).

        The forward always runs in full; the backward stops at the first trainable layer, so its cost scales with
        the trainable share (a linear interpolation between the measured forward and full step).
        """
        forward = self.forward_ms_per_image * self.batch_size / 1000
        return forward + max(0.0, self.train_step_seconds - forward) * min(1.0, max(0.0, trainable_share))

    def as_dict(self) -> dict:
        return {**asdict(self), "train_ms_per_image": round(self.train_ms_per_image, 3)}


# ------------------------------------------------------------------------------------------------ similarity
def probe_curve(features: dict[str, np.ndarray], labels: np.ndarray, layers: list[FeatureLayer], *, cv_folds: int = 3,
                seed: int = 42, score_cache: FeatureCache | None = None) -> dict[str, tuple[float, float]]:
    """layer key -> (CV accuracy, its std) of the curve's logistic-regression probe, via the probe job's `fit_probe`."""
    config = ProbeConfig(cv_folds=cv_folds, seed=seed, logreg_c=(CURVE_C,))
    curve = {}
    for layer in layers:
        same = _same_features(features, layer, curve)
        if same is not None:  # e.g. the last depth group's output is the pooled feature itself
            curve[layer.key] = curve[same]
            continue
        result = fit_probe(CURVE_PROBE, layer, features[layer.key], labels, config, score_cache=score_cache)
        curve[layer.key] = (result.cv_score, result.cv_std)
    return curve


def _cached_logme(X: np.ndarray, labels: np.ndarray, cache: FeatureCache | None) -> float:
    """LogME, kept beside the features as JSON (keyed by the features' and labels' content) when a cache is given."""
    from ..probes.estimators import _digest

    key = cache.key(kind="logme", data=_digest(np.ascontiguousarray(X), np.ascontiguousarray(labels))) if cache else None
    stored = cache.load_json(key) if key else None
    if stored is None:
        stored = {"logme": round(logme(X, labels), 5)}
        if key:
            cache.save_json(key, stored)
    return float(stored["logme"])


def _same_features(features: dict[str, np.ndarray], layer: FeatureLayer, done: dict) -> str | None:
    """The key of an already measured layer whose features equal this one's (None when there is none)."""
    X = features[layer.key]
    return next((key for key in done if features[key].shape == X.shape and np.array_equal(features[key], X)), None)


def concat_probe(features: dict[str, np.ndarray], labels: np.ndarray, layers: list[FeatureLayer],
                 curve: dict[str, tuple[float, float]], *, top: int = 3, cv_folds: int = 3, seed: int = 42,
                 score_cache: FeatureCache | None = None) -> dict | None:
    """The ``top`` depths of the curve, concatenated (shallow first, as `--layers 3+7+pooled` orders them), probed
    the same way. Earlier and later depths carry different information; together they can beat either."""
    ranked, seen = [], {}
    for layer in sorted(layers, key=lambda l: curve[l.key][0], reverse=True):
        if len(ranked) < top and _same_features(features, layer, seen) is None:  # a duplicate adds nothing
            ranked.append(layer)
            seen[layer.key] = True
    if len(ranked) < 2:
        return None
    chosen = [l for l in layers if l in ranked]  # network order
    X = np.concatenate([features[l.key] for l in chosen], axis=1)
    name = "+".join(POOLED if l.is_pooled else str(l.depth) for l in chosen)
    config = ProbeConfig(cv_folds=cv_folds, seed=seed, logreg_c=(CURVE_C,))
    result = fit_probe(CURVE_PROBE, FeatureLayer(f"concat {name}"), X, labels, config, score_cache=score_cache)
    return {"layers": name, "probe_cv": round(result.cv_score, 5), "probe_cv_std": round(result.cv_std, 5),
            "dim": int(X.shape[1])}


def batchnorm_shift(model: torch.nn.Module, dataset, layer_map: LayerMap, *, max_images: int = 128,
                    batch_size: int = 64, timing: dict | None = None, channels_last: bool = False) -> dict[int, float]:
    """depth -> mean over that depth group's BatchNorm layers of the per-channel KL divergence
    KL(N(data mean, data var) || N(running mean, running var)) at the BatchNorm's input, averaged over channels.

    The data's statistics are taken in eval mode (every layer sees what the frozen network would give it), over
    batch, height and width. Zero when the data's statistics equal the stored ones; it grows with the shift of the
    means (in units of the running standard deviation) and with the log ratio of the variances. {} without BatchNorm.
    The same eval-mode forward is timed: ``timing["forward_ms_per_image"]`` when a dict is given (batches after the
    first, which pays for allocations).
    """
    norms = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.running_mean is not None}
    sums: dict[str, list] = {name: [0.0, 0.0, 0] for name in norms}

    def hook_for(name):
        def hook(module, args):
            x = args[0].detach().double()
            dims = [d for d in range(x.ndim) if d != 1]
            acc = sums[name]
            acc[0] = acc[0] + x.sum(dims)
            acc[1] = acc[1] + (x * x).sum(dims)
            acc[2] += x.numel() // x.shape[1]
        return hook

    handles = [m.register_forward_pre_hook(hook_for(name)) for name, m in norms.items()]
    was_training = model.training
    model.eval()
    call = _caller(model)
    seen, timed_images, timed_seconds = 0, 0, 0.0
    try:
        with torch.inference_mode():
            for pixels, _ in iter_batches(dataset, batch_size):
                pixels = pixels[: max_images - seen]
                if channels_last:
                    pixels = pixels.contiguous(memory_format=torch.channels_last)
                start = time.perf_counter()
                call(pixels)
                if seen:  # the first batch warms up
                    timed_images, timed_seconds = timed_images + len(pixels), timed_seconds + time.perf_counter() - start
                seen += len(pixels)
                if seen >= max_images:
                    break
            if timing is not None and not timed_images:  # one batch only: time it again
                start = time.perf_counter()
                call(pixels)
                timed_images, timed_seconds = len(pixels), time.perf_counter() - start
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if timing is not None:
        timing["forward_ms_per_image"] = 1000 * timed_seconds / max(1, timed_images)
    per_depth: dict[int, list[float]] = {}
    for name, module in norms.items():
        total, total_sq, count = sums[name]
        if not count:
            continue
        mean = total / count
        var = (total_sq / count - mean * mean).clamp_min(0)
        per_depth.setdefault(_depth_of_module(name, module, layer_map), []).append(
            float(gaussian_kl(mean, var, module.running_mean.double(), module.running_var.double(), module.eps)))
    return {depth: float(np.mean(values)) for depth, values in per_depth.items() if depth is not None}


def gaussian_kl(mean, var, ref_mean, ref_var, eps: float = 1e-5) -> torch.Tensor:
    """Mean over channels of KL(N(mean, var) || N(ref_mean, ref_var)), variances padded by the BatchNorm's eps."""
    var, ref_var = var + eps, ref_var + eps
    return (0.5 * (torch.log(ref_var / var) + (var + (mean - ref_mean) ** 2) / ref_var - 1)).mean()


def _depth_of_module(name: str, module: torch.nn.Module, layer_map: LayerMap) -> int | None:
    for param_name, _ in module.named_parameters():
        try:
            return layer_map.depth_of(f"{name}.{param_name}")
        except KeyError:
            return None
    return None


def _caller(model):
    """pixels -> logits, for a PreTrainedModel (every loaded backbone: pixel_values=) or a bare module."""
    if hasattr(model, "config"):
        return lambda x: model(pixel_values=x).logits
    return model


# ------------------------------------------------------------------------------------------------------ cost
def time_train_step(model: torch.nn.Module, dataset, *, batch_size: int = 32, channels_last: bool = False) -> float:
    """Seconds of one full forward + backward step on a real batch of ``dataset`` (the second of two: the first
    allocates), scaled to ``batch_size`` when the data has fewer images.

    The backward runs in eval mode with every parameter trainable and no optimizer step: BatchNorm statistics and
    weights are untouched, gradients are dropped afterwards, ``requires_grad`` flags restored.
    """
    pixels, labels = next(iter_batches(dataset, batch_size))
    if channels_last:  # batches in the layout the fine-tune feeds (CNNs: channels_last)
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    call = _caller(model)
    was_training = model.training
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        for _ in range(2):
            begin = time.perf_counter()
            torch.nn.functional.cross_entropy(call(pixels), labels).backward()
            took = time.perf_counter() - begin
    finally:
        for n, p in model.named_parameters():
            p.grad = None
            p.requires_grad_(flags[n])
        model.train(was_training)
    return float(took) * batch_size / len(pixels)


# -------------------------------------------------------------------------------------------------- together
@dataclass
class BackboneMeasurement:
    """Everything measured for one backbone on one dataset."""

    backbone: str
    size: SizeStats
    similarity: SimilarityStats
    cost: CostStats
    default_learning_rate: float
    has_batchnorm: bool
    seconds: float = 0.0
    features_from_cache: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "BackboneMeasurement":
        """Back from `as_dict` (advice.json): the rules can be re-run on a recorded measurement (the replay)."""
        size = SizeStats(*(d["size"][k] for k in ("n_train", "n_validation", "n_classes", "per_class", "class_names")))
        s = d["similarity"]
        similarity = SimilarityStats([DepthMeasure(**x) for x in s["depths"]], s["body_depths"], s.get("concat"),
                                     s.get("images", 0), s.get("cv_folds", 3))
        cost = CostStats(*(d["cost"][k] for k in ("forward_ms_per_image", "train_step_seconds", "batch_size",
                                                  "image_size")))
        return cls(d["backbone"], size, similarity, cost, d["default_learning_rate"], d["has_batchnorm"],
                   d.get("seconds", 0.0), d.get("features_from_cache", False))

    def as_dict(self) -> dict:
        return {"backbone": self.backbone, "size": self.size.as_dict(), "similarity": self.similarity.as_dict(),
                "cost": self.cost.as_dict(), "default_learning_rate": self.default_learning_rate,
                "has_batchnorm": self.has_batchnorm, "seconds": round(self.seconds, 2),
                "features_from_cache": self.features_from_cache}


def measure_similarity(model, subsample, layers: list[FeatureLayer], layer_map: LayerMap, *, cache: FeatureCache,
                       transform_key: str, image_size: int, cv_folds: int = 3, seed: int = 42, batch_size: int = 64,
                       bn_images: int = 128, timing: dict | None = None,
                       channels_last: bool = False) -> tuple[SimilarityStats, bool]:
    """The per-depth curves on ``subsample`` (a train subset carrying the eval transform) -> (stats, from cache);
    ``timing`` (a dict) receives the forward milliseconds per image of the BatchNorm pass."""
    feature_set = compute_features(model, {"train": subsample}, layers, layer_map=layer_map, cache=cache,
                                   transform_key=transform_key, image_size=image_size, batch_size=batch_size)
    features, labels = feature_set.features["train"], feature_set.labels["train"]
    score_cache = cache if cache.enabled else None
    curve = probe_curve(features, labels, layers, cv_folds=cv_folds, seed=seed, score_cache=score_cache)
    shifts = batchnorm_shift(model, subsample, layer_map, max_images=bn_images, batch_size=batch_size, timing=timing,
                             channels_last=channels_last)
    depths, scores = [], {}
    for layer in layers:
        X = features[layer.key]
        same = _same_features(features, layer, scores)
        scores[layer.key] = scores[same] if same is not None else _cached_logme(X, labels, score_cache)
        depths.append(DepthMeasure(layer.name, layer.depth, int(X.shape[1]), round(curve[layer.key][0], 5),
                                   round(curve[layer.key][1], 5), scores[layer.key],
                                   None if layer.is_pooled else shifts.get(layer.depth)))
    concat = concat_probe(features, labels, layers, curve, cv_folds=cv_folds, seed=seed, score_cache=score_cache)
    stats = SimilarityStats(depths, len(layer_map.body), concat, len(labels), cv_folds)
    return stats, feature_set.all_cached


__all__ = [
    "BackboneMeasurement",
    "CostStats",
    "DepthMeasure",
    "SimilarityStats",
    "SizeStats",
    "batchnorm_shift",
    "concat_probe",
    "gaussian_kl",
    "measure_similarity",
    "probe_curve",
    "time_train_step",
]
