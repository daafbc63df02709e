"""Probe estimators on frozen features, and choosing their regularization by cross-validation.

Every probe is a scikit-learn pipeline ``StandardScaler -> classifier``; its regularization is chosen by
stratified k-fold cross-validation on the training split, and the best probe (by cross-validated score) is
reported on the held-out split with the package's metrics (accuracy, macro-F1).

* ``logreg``: multinomial logistic regression (lbfgs), C by CV.        exportable
* ``linear_svm``: `LinearSVC` (one-vs-rest, squared hinge), C by CV.    exportable
* ``torch_linear``: a linear head trained with AdamW on cached features (large datasets), C by CV.  exportable
* ``rbf_svm``: kernel SVM; ``knn``: k nearest neighbours.   for comparison only: they are not linear, so they
  cannot become a model head (asking to export them is an error).

A linear probe exports as a model folder: the standardization is folded into the head,
``W' = coef / scale`` and ``b' = intercept - coef · (mean / scale)``; a binary probe gives two logits ``[0, d]``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from ..errors import TransferError
from ..features import FeatureLayer

LINEAR_PROBES = ("logreg", "linear_svm", "torch_linear")
COMPARISON_PROBES = ("rbf_svm", "knn")
PROBES = LINEAR_PROBES + COMPARISON_PROBES
# Above this many training images scikit-learn's solvers get slow on CPU; `auto` switches to the torch head.
TORCH_LINEAR_ABOVE = 50_000
# Kernel SVM and k-NN scale with n^2: `auto` adds them for comparison on small sets only.
COMPARISON_UP_TO = 2_000


@dataclass
class ProbeConfig:
    """How probes are fitted and selected."""

    cv_folds: int = 3
    seed: int = 42
    # Grids are short on purpose: with standardized features the optimum is broad, and every value costs cv_folds fits.
    logreg_c: tuple[float, ...] = (0.01, 0.1)
    linear_svm_c: tuple[float, ...] = (0.01, 0.1)
    rbf_svm_c: tuple[float, ...] = (1.0, 10.0)
    knn_k: tuple[int, ...] = (5, 15)
    torch_linear_c: tuple[float, ...] = (0.1, 1.0)
    max_iter: int = 100


def resolve_probes(spec: str | Sequence[str], n_train: int) -> list[str]:
    """``auto`` | one name | a comma list -> probe names."""
    items = [s.strip() for part in ([spec] if isinstance(spec, str) else spec) for s in str(part).split(",") if s.strip()]
    names: list[str] = []
    for item in items or ["auto"]:
        if item == "auto":
            names += ["torch_linear"] if n_train > TORCH_LINEAR_ABOVE else ["logreg"]
            if n_train <= COMPARISON_UP_TO:
                names += list(COMPARISON_PROBES)
        elif item == "all":
            names += list(PROBES)
        elif item in PROBES:
            names.append(item)
        else:
            raise TransferError(f"unknown probe {item!r}; choose from {', '.join(PROBES)}, all or auto")
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------------------------------------- estimators
class TorchLinearClassifier(ClassifierMixin, BaseEstimator):
    """A linear softmax head trained with AdamW on (standardized) features; L2 strength 1/(C·n) as in logreg.

    Minibatches keep memory flat, so it handles feature sets far larger than scikit-learn's lbfgs is happy with.
    Exposes ``coef_`` / ``intercept_`` / ``classes_`` like scikit-learn's linear models (binary: one row).
    """

    def __init__(self, C: float = 1.0, epochs: int = 30, batch_size: int = 512, lr: float = 1e-2, seed: int = 0):
        self.C, self.epochs, self.batch_size, self.lr, self.seed = C, epochs, batch_size, lr, seed

    def fit(self, X, y):
        generator = torch.Generator().manual_seed(self.seed)
        self.classes_ = np.unique(y)
        targets = torch.as_tensor(np.searchsorted(self.classes_, y))
        inputs = torch.as_tensor(np.asarray(X, dtype=np.float32))
        layer = torch.nn.Linear(inputs.shape[1], len(self.classes_))
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
        optimizer = torch.optim.AdamW(layer.parameters(), lr=self.lr, weight_decay=0.0)
        penalty = 1.0 / (self.C * len(inputs))
        for _ in range(self.epochs):
            order = torch.randperm(len(inputs), generator=generator)
            for start in range(0, len(inputs), self.batch_size):
                batch = order[start:start + self.batch_size]
                loss = torch.nn.functional.cross_entropy(layer(inputs[batch]), targets[batch])
                loss = loss + 0.5 * penalty * layer.weight.pow(2).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        weight = layer.weight.detach().double().numpy()
        bias = layer.bias.detach().double().numpy()
        if len(self.classes_) == 2:  # scikit-learn's binary convention: one row, positive class minus negative
            weight, bias = weight[1:] - weight[:1], bias[1:] - bias[:1]
        self.coef_, self.intercept_ = weight, bias
        return self

    def decision_function(self, X):
        scores = np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_
        return scores[:, 0] if len(self.classes_) == 2 else scores

    def predict(self, X):
        return _classes_of(self.decision_function(X), self.classes_)


def _classes_of(scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """scikit-learn's rule: binary scores are one decision value (positive -> second class), else the argmax."""
    return classes[(scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(1)]


def _estimator(kind: str, value, config: ProbeConfig):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, LinearSVC

    if kind == "logreg":
        clf = LogisticRegression(C=value, solver="lbfgs", max_iter=config.max_iter, tol=1e-3)
    elif kind == "linear_svm":
        # Primal coordinate descent: far faster than the dual when images outnumber features, the usual case here.
        clf = LinearSVC(C=value, dual="auto", max_iter=config.max_iter * 3, tol=1e-3, random_state=config.seed)
    elif kind == "rbf_svm":
        clf = SVC(C=value, kernel="rbf", gamma="scale")
    elif kind == "knn":
        clf = KNeighborsClassifier(n_neighbors=value)
    elif kind == "torch_linear":
        clf = TorchLinearClassifier(C=value, seed=config.seed)
    else:
        raise TransferError(f"unknown probe {kind!r}; choose from {', '.join(PROBES)}")
    return make_pipeline(StandardScaler(), clf)


def _grid(kind: str, config: ProbeConfig) -> tuple[str, tuple]:
    return {
        "logreg": ("C", config.logreg_c),
        "linear_svm": ("C", config.linear_svm_c),
        "rbf_svm": ("C", config.rbf_svm_c),
        "knn": ("n_neighbors", config.knn_k),
        "torch_linear": ("C", config.torch_linear_c),
    }[kind]


# ------------------------------------------------------------------------------------------------- fitting
@dataclass
class LinearHead:
    """A fitted linear probe as plain arrays: ``((x - mean) / scale) @ coef.T + intercept``.

    What every linear probe (logreg, linear SVM, torch head) reduces to: export folds it into one layer, and the
    probe cache stores it as safetensors, so a rerun needs neither a refit nor an unpickled estimator.
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (classes, features); one row for a binary probe, as in scikit-learn
    intercept: np.ndarray
    classes: np.ndarray

    @classmethod
    def from_pipeline(cls, pipeline) -> "LinearHead":
        scaler, clf = pipeline[0], pipeline[-1]
        return cls(*(np.asarray(a, dtype=np.float64) for a in (scaler.mean_, scaler.scale_)),
                   np.atleast_2d(np.asarray(clf.coef_, dtype=np.float64)),
                   np.atleast_1d(np.asarray(clf.intercept_, dtype=np.float64)), np.asarray(clf.classes_))

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "LinearHead":
        return cls(**{name: arrays[name] for name in ("mean", "scale", "coef", "intercept", "classes")})

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(vars(self))

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        scores = ((np.asarray(X, dtype=np.float64) - self.mean) / self.scale) @ self.coef.T + self.intercept
        return scores[:, 0] if self.coef.shape[0] == 1 else scores

    def predict(self, X: np.ndarray) -> np.ndarray:
        return _classes_of(self.decision_function(X), self.classes)

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(W', b') with the standardization folded in; a binary probe becomes two logits ``[0, d]``."""
        weight = self.coef / self.scale
        bias = self.intercept - self.coef @ (self.mean / self.scale)
        if weight.shape[0] == 1:
            weight = np.vstack([np.zeros_like(weight), weight])
            bias = np.concatenate([[0.0], bias])
        return weight, bias


@dataclass
class ProbeResult:
    """One fitted probe on one layer: its CV score, chosen hyper-parameter and held-out metrics.

    ``estimator`` is the fitted scikit-learn pipeline, or None when a linear probe came from the cache; ``linear``
    is the `LinearHead` of every linear probe.
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

    @property
    def exportable(self) -> bool:
        return self.probe in LINEAR_PROBES

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        return (self.linear or self.estimator).decision_function(features)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return (self.linear or self.estimator).predict(features)

    def summary(self) -> dict:
        return {
            "probe": self.probe,
            "layer": self.layer.name,
            "cv_accuracy": round(self.cv_score, 5),
            "cv_std": round(self.cv_std, 5),
            self.param_name: self.param_value,
            "fit_seconds": round(self.fit_seconds, 3),
            "fit_from_cache": self.from_cache,
            "exportable": self.exportable,
            **{k: round(v, 5) for k, v in self.eval_metrics.items()},
        }

    def folded_head(self) -> tuple[np.ndarray, np.ndarray]:
        """(W', b') in float64 with the scaler folded in; logits = x @ W'.T + b' equal the decision function."""
        if not self.exportable:
            raise TransferError(
                f"a {self.probe} probe cannot be exported as a model: only linear probes "
                f"({', '.join(LINEAR_PROBES)}) fold into a linear head; {self.probe} is for comparison only"
            )
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
              score_cache=None) -> ProbeResult:
    """Choose the probe's hyper-parameter by stratified k-fold CV on (X, y), then refit on all of it.

    With a `FeatureCache` as ``score_cache``, what a rerun on the same features would recompute is kept beside the
    features: the CV scores of each (features, labels, probe, value, folds, seed) as JSON, and the final fit of a
    linear probe as a `LinearHead` in safetensors. Kernel SVM and k-NN are refitted (only a pickle could store them).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from threadpoolctl import threadpool_limits

    config = config or ProbeConfig()
    start = time.perf_counter()
    name, values = _grid(kind, config)
    if kind == "knn":
        values = tuple(v for v in values if v < len(y) * (1 - 1 / max(2, config.cv_folds))) or (1,)
    n_folds = _cv_folds(y, config.cv_folds)
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=config.seed)
    data_digest = _digest(X, y) if score_cache is not None else ""

    def cache_key(what: str, value) -> str | None:
        return score_cache.key(kind=what, data=data_digest, probe=kind, value=value, folds=n_folds, seed=config.seed,
                               max_iter=config.max_iter) if score_cache is not None else None

    scores = {}
    # One BLAS/OpenMP thread: on these small problems, threads (worse: torch's and scikit-learn's OpenMP runtimes
    # side by side on a busy CPU) made a logistic regression fit 20x slower (6.7s vs 0.27s, measured here).
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        for value in values:
            key = cache_key("cv_scores", value)
            cached = score_cache.load_json(key) if key else None
            if cached is None:
                fold_scores = cross_val_score(_estimator(kind, value, config), X, y, cv=folds, scoring="accuracy")
                cached = {"mean": float(fold_scores.mean()), "std": float(fold_scores.std())}
                if key:
                    score_cache.save_json(key, cached)
            scores[value] = (cached["mean"], cached["std"])
        best = max(values, key=lambda v: (scores[v][0], -values.index(v)))  # ties: the earlier (stronger-regularized)
        fit_key = cache_key("linear_head", best) if kind in LINEAR_PROBES else None
        stored = score_cache.load_arrays(fit_key) if fit_key else None
        estimator = None if stored is not None else _estimator(kind, best, config).fit(X, y)
        linear = LinearHead.from_arrays(stored) if stored is not None else (
            LinearHead.from_pipeline(estimator) if kind in LINEAR_PROBES else None)
        if fit_key and stored is None:
            score_cache.save_arrays(fit_key, linear.arrays())
    return ProbeResult(kind, layer, scores[best][0], scores[best][1], name, best, estimator,
                       time.perf_counter() - start, linear=linear, from_cache=estimator is None)


def _digest(X: np.ndarray, y: np.ndarray) -> str:
    import hashlib

    digest = hashlib.sha256()
    for array in (np.ascontiguousarray(X), np.ascontiguousarray(y)):
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def evaluate_probe(result: ProbeResult, X: np.ndarray, y: np.ndarray, prefix: str = "eval") -> dict[str, float]:
    """Accuracy and macro-F1 on a held-out split, with the package's offline metrics."""
    from ..metrics import load_metric

    predictions = result.predict(X)
    metrics = {
        f"{prefix}_accuracy": load_metric("accuracy").compute(predictions=predictions, references=y)["accuracy"],
        f"{prefix}_macro_f1": load_metric("f1").compute(predictions=predictions, references=y, average="macro")["f1"],
    }
    result.eval_metrics.update({k: float(v) for k, v in metrics.items()})
    return result.eval_metrics


__all__ = [
    "COMPARISON_PROBES",
    "LINEAR_PROBES",
    "PROBES",
    "LinearHead",
    "ProbeConfig",
    "ProbeResult",
    "TorchLinearClassifier",
    "evaluate_probe",
    "fit_probe",
    "resolve_probes",
]
