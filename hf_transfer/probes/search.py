"""Choosing a probe's hyper-parameter by cross-validation, the fitted result, and its held-out metrics.

Each grid value is scored by stratified k-fold CV on the training split (accuracy and macro-F1 from the same fits;
``ProbeConfig.select_by`` picks), then the best is refitted on all of it. With a `FeatureCache`, a rerun on the same
features recomputes nothing: the CV scores are kept as JSON and the final fit as its head's arrays (safetensors).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import TransferError
from ..features import FeatureLayer
from . import estimators
from .estimators import (
    KERNEL_PROBES,
    LINEAR_PROBES,
    MAX_HEAD_BYTES,
    MLP_PROBES,
    SELECTION_METRICS,
    ProbeConfig,
    _build_estimator,
    _digest,
    _grid,
    _plain_params,
    block_factors,
)
from .heads import KernelHead, LinearHead, MLPHead


@dataclass
class ProbeResult:
    """One fitted probe on one layer: its CV scores, chosen hyper-parameter and held-out metrics.

    ``cv_score`` / ``cv_std`` are the selection metric's (``selected_by``: accuracy or macro-F1); ``cv_metrics``
    holds both. ``estimator`` is the fitted scikit-learn estimator, or None when the probe came from the cache;
    ``linear`` is the `LinearHead` of every linear probe, ``mlp`` the `MLPHead` of an MLP probe, ``kernel`` the
    `KernelHead` of an RBF-SVM or k-NN probe: the head that predicts here and that export writes.
    """

    probe: str
    layer: FeatureLayer
    cv_score: float
    cv_std: float
    param_name: str
    param_value: float
    estimator: object = field(repr=False)
    fit_seconds: float = 0.0
    eval_metrics: dict[str, float] = field(default_factory=dict)
    linear: LinearHead | None = field(default=None, repr=False)
    from_cache: bool = False
    mlp: MLPHead | None = field(default=None, repr=False)
    cv_metrics: dict[str, float] = field(default_factory=dict)
    selected_by: str = "accuracy"
    class_weight: str | None = None
    per_class_recall: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> {label: recall}
    kernel: KernelHead | None = field(default=None, repr=False)

    @property
    def head_bytes(self) -> int:
        """The size of the probe's head in an exported folder (the backbone aside)."""
        if self.kernel is not None:
            return self.kernel.nbytes
        if self.mlp is not None:
            return sum(int(t.numel()) * t.element_size() for t in self.mlp.module.state_dict().values())
        return int(self.linear.coef.size + self.linear.intercept.size) * 8 if self.linear is not None else 0

    def export_problem(self) -> str | None:
        """Why this probe cannot become a model (None: it can): only a kernel head over the size limit."""
        if self.head_bytes > MAX_HEAD_BYTES:
            rows = len(self.kernel.module.support) if self.kernel is not None else 0
            return (f"the {self.probe} probe on {self.layer.name} would add {self.head_bytes / 2**20:.0f} MB to the "
                    f"model ({rows} stored rows x {self.kernel.module.support.shape[1] if rows else 0} features, "
                    f"float64), over the {MAX_HEAD_BYTES / 2**20:.0f} MB export limit")
        return None

    @property
    def exportable(self) -> bool:
        return self.export_problem() is None

    @property
    def _predictor(self):
        return self.linear or self.mlp or self.kernel or self.estimator

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        return self._predictor.decision_function(features)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self._predictor.predict(features)

    def summary(self) -> dict:
        summary = {
            "probe": self.probe,
            "layer": self.layer.name,
            "layer_spec": self.layer.spec,
            "cv_accuracy": round(self.cv_metrics.get("accuracy", self.cv_score), 5),
            "cv_macro_f1": round(self.cv_metrics["macro_f1"], 5) if "macro_f1" in self.cv_metrics else None,
            "cv_std": round(self.cv_std, 5),
            "selected_by": self.selected_by,
            self.param_name: self.param_value,
            "class_weight": self.class_weight if self.probe != "knn" else None,
            "fit_seconds": round(self.fit_seconds, 3),
            "fit_from_cache": self.from_cache,
            "exportable": self.exportable,
            **{k: round(v, 5) for k, v in self.eval_metrics.items()},
        }
        if self.mlp is not None:
            summary["hidden_size"] = self.mlp.hidden_size
        for split, recalls in self.per_class_recall.items():
            summary[f"{split}_per_class_recall"] = {k: round(v, 5) for k, v in recalls.items()}
        return summary

    def folded_head(self) -> tuple[np.ndarray, np.ndarray]:
        """(W', b') in float64 with the scaler folded in; logits = x @ W'.T + b' equal the decision function."""
        if self.linear is None:
            raise TransferError(f"a {self.probe} probe has no linear head to fold; export it with export_probe")
        return self.linear.folded()


def _cv_folds(y: np.ndarray, requested: int) -> int:
    smallest = min((int(c) for c in np.bincount(y) if c > 0), default=0)
    folds = min(requested, smallest)
    if folds < 2:
        raise TransferError(
            f"cross-validation needs at least 2 training images per class (the smallest class has {smallest}); "
            "add images or drop that class"
        )
    return folds


def fit_probe(kind: str, layer: FeatureLayer, X: np.ndarray, y: np.ndarray, config: ProbeConfig | None = None,
              score_cache=None, blocks: Sequence[int] | None = None) -> ProbeResult:
    """Choose the probe's hyper-parameter by stratified k-fold CV on (X, y), then refit on all of it.

    Each value is scored by CV accuracy and macro-F1 (the same fits); ``config.select_by`` picks. With a
    `FeatureCache` as ``score_cache``, what a rerun on the same features would recompute is kept beside the features:
    the CV scores of each (features, labels, estimator settings, folds, seed) as JSON, and the final fit as its
    head's arrays in safetensors (linear, MLP and kernel heads alike: no pickles).
    ``blocks``: the widths of a concatenation's parts, given an equal share of the variance (`BlockStandardScaler`).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold, cross_validate
    from threadpoolctl import threadpool_limits

    config = config or ProbeConfig()
    start = time.perf_counter()
    blocks = tuple(int(b) for b in blocks) if blocks is not None and len(blocks) > 1 else None
    block_factors(blocks, X.shape[1])  # the one-line error when the widths do not add up
    name, values = _grid(kind, config)
    if kind == "knn":
        values = tuple(v for v in values if v < len(y) * (1 - 1 / max(2, config.cv_folds))) or (1,)
    n_folds = _cv_folds(y, config.cv_folds)
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=config.seed)
    data_digest = _digest(X, y) if score_cache is not None else ""

    def cache_key(what: str, value) -> str | None:
        if score_cache is None:
            return None
        return score_cache.key(kind=what, data=data_digest, probe=kind, folds=n_folds, seed=config.seed,
                               params=_plain_params(_build_estimator(kind, value, config, blocks)))

    scores = {}
    # One BLAS/OpenMP thread: on these small problems, threads (worse: torch's and scikit-learn's OpenMP runtimes
    # side by side on a busy CPU) made a logistic regression fit 20x slower (6.7s vs 0.27s, measured here).
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        for value in values:
            key = cache_key("cv_scores", value)
            cached = score_cache.load_json(key) if key else None
            if cached is None:
                done = cross_validate(estimators._estimator(kind, value, config, blocks), X, y, cv=folds,
                                      scoring={"accuracy": "accuracy", "macro_f1": "f1_macro"},
                                      n_jobs=config.jobs(n_folds))
                cached = {metric: float(done[f"test_{metric}"].mean()) for metric in SELECTION_METRICS}
                cached.update({f"{metric}_std": float(done[f"test_{metric}"].std()) for metric in SELECTION_METRICS})
                if key:
                    score_cache.save_json(key, cached)
            scores[value] = cached
        metric = config.select_by
        # ties: the earlier (stronger-regularized) value
        best = max(values, key=lambda v: (scores[v][metric], -values.index(v)))
        fit_kind = "linear_head" if kind in LINEAR_PROBES else "mlp_head" if kind in MLP_PROBES else "kernel_head"
        fit_key = cache_key(fit_kind, best)
        stored = score_cache.load_arrays(fit_key) if fit_key else None
        estimator = None if stored is not None else estimators._estimator(kind, best, config, blocks).fit(X, y)
        linear = mlp = kernel = None
        if kind in LINEAR_PROBES:
            linear = LinearHead.from_arrays(stored) if stored is not None else LinearHead.from_pipeline(estimator)
        elif kind in MLP_PROBES:
            mlp = MLPHead.from_arrays(stored) if stored is not None else MLPHead(estimator.module_, estimator.classes_)
        elif kind in KERNEL_PROBES:
            kernel = KernelHead.from_arrays(stored) if stored is not None else KernelHead.from_pipeline(kind, estimator)
        if fit_key and stored is None:
            score_cache.save_arrays(fit_key, (linear or mlp or kernel).arrays())
    return ProbeResult(kind, layer, scores[best][metric], scores[best][f"{metric}_std"], name, best, estimator,
                       time.perf_counter() - start, linear=linear, from_cache=estimator is None, mlp=mlp,
                       cv_metrics=dict(scores[best]), selected_by=metric, class_weight=config.class_weight,
                       kernel=kernel)


def evaluate_probe(result: ProbeResult, X: np.ndarray, y: np.ndarray, prefix: str = "eval",
                   label_names: Sequence[str] | None = None) -> dict[str, float]:
    """Accuracy and macro-F1 on a held-out split (the package's offline metrics), and per-class recall
    (``result.per_class_recall[prefix]``, keyed by label name when ``label_names`` is given)."""
    from ..metrics import load_metric, per_class_recall

    predictions = result.predict(X)
    metrics = {
        f"{prefix}_accuracy": load_metric("accuracy").compute(predictions=predictions, references=y)["accuracy"],
        f"{prefix}_macro_f1": load_metric("f1").compute(predictions=predictions, references=y, average="macro")["f1"],
    }
    result.eval_metrics.update({k: float(v) for k, v in metrics.items()})
    # The fine-tune's metric, so probes and fine-tunes report recall the same way (classes present in the split).
    names = [str(name) for name in label_names] if label_names is not None else None
    result.per_class_recall[prefix] = per_class_recall(predictions, y, names)
    return result.eval_metrics


__all__ = ["ProbeResult", "evaluate_probe", "fit_probe"]
