"""Probe estimators on frozen features, and choosing their regularization by cross-validation.

Every probe standardizes its features (a scikit-learn pipeline ``StandardScaler -> classifier``; the MLP carries
its own standardization); its regularization is chosen by stratified k-fold cross-validation on the training split
(by CV accuracy, or macro-F1 with ``select_by``), and every probe is reported on the held-out split with accuracy,
macro-F1 and per-class recall.

* ``logreg``: multinomial logistic regression (lbfgs), C by CV.        exportable
* ``linear_svm``: `LinearSVC` (one-vs-rest, squared hinge), C by CV.    exportable
* ``torch_linear``: a linear head trained with AdamW on cached features (large datasets), C by CV.  exportable
* ``mlp``: one hidden layer (GELU, dropout) trained with AdamW and early stopping, weight decay by CV.  exportable
* ``rbf_svm``: kernel SVM; ``knn``: k nearest neighbours.   for comparison only: they cannot become a model head
  (asking to export them is an error).

``class_weight="balanced"`` weighs each class by ``n / (classes * n_class)`` (scikit-learn's rule; the torch probes
weigh their loss the same way); k-NN has no class weights.

A linear probe exports with the standardization folded into the head, ``W' = coef / scale`` and
``b' = intercept - coef · (mean / scale)``; a binary probe gives two logits ``[0, d]``. The MLP exports as the very
module it was trained as (`modeling_probe.ProbeMLP`).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import StandardScaler

from ..errors import TransferError
from ..features import FeatureLayer
from ..modeling_probe import ProbeMLP

LINEAR_PROBES = ("logreg", "linear_svm", "torch_linear")
MLP_PROBES = ("mlp",)
EXPORTABLE_PROBES = LINEAR_PROBES + MLP_PROBES
COMPARISON_PROBES = ("rbf_svm", "knn")
PROBES = EXPORTABLE_PROBES + COMPARISON_PROBES
CLASS_WEIGHTINGS = ("none", "balanced")
SELECTION_METRICS = ("accuracy", "macro_f1")
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
    mlp_weight_decay: tuple[float, ...] = (0.5, 0.05)  # stronger first: ties go to it
    mlp_hidden: int = 256
    mlp_dropout: float = 0.2
    mlp_max_epochs: int = 100  # early stopping usually ends training well before
    max_iter: int = 100
    class_weight: str | None = None  # None or "balanced"
    select_by: str = "accuracy"  # the CV metric that picks hyper-parameters and the best probe: accuracy or macro_f1

    def __post_init__(self):
        if self.class_weight == "none":
            self.class_weight = None
        if self.class_weight not in (None, "balanced"):
            raise TransferError(f"--class_weighting {self.class_weight!r} is not understood; use none or balanced")
        if self.select_by not in SELECTION_METRICS:
            raise TransferError(f"--select_by {self.select_by!r} is not understood; use accuracy or macro_f1")


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

    def __init__(self, C: float = 1.0, epochs: int = 30, batch_size: int = 512, lr: float = 1e-2, seed: int = 0,
                 class_weight: str | None = None):
        self.C, self.epochs, self.batch_size, self.lr, self.seed = C, epochs, batch_size, lr, seed
        self.class_weight = class_weight

    def fit(self, X, y):
        generator = torch.Generator().manual_seed(self.seed)
        self.classes_ = np.unique(y)
        targets = torch.as_tensor(np.searchsorted(self.classes_, y))
        weights = class_weights(targets, len(self.classes_), self.class_weight)
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
                loss = torch.nn.functional.cross_entropy(layer(inputs[batch]), targets[batch], weight=weights)
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


class BlockStandardScaler(StandardScaler):
    """`StandardScaler`, then every block of a concatenation scaled to the same share of the total variance.

    ``blocks`` are the widths of the concatenated parts (``3+7+pooled``: 24, 80, 1280). Each standardized feature of
    a block of width ``d`` is multiplied by ``sqrt(D / (B * d))`` (``D`` features in ``B`` blocks): every block then
    carries ``D / B`` of the variance, so a wide pooled block does not drown the narrower depths in the L2 penalty
    or the kernel's distances, and the total stays ``D`` (the C grids keep their meaning). Folded into ``scale_``,
    so a linear probe's export absorbs it like the standardization.
    """

    def __init__(self, blocks: tuple[int, ...] | None = None, *, copy: bool = True, with_mean: bool = True,
                 with_std: bool = True):
        super().__init__(copy=copy, with_mean=with_mean, with_std=with_std)
        self.blocks = blocks

    def fit(self, X, y=None, sample_weight=None):
        super().fit(X, y, sample_weight)
        factors = block_factors(self.blocks, self.n_features_in_)
        if factors is not None:
            self.scale_ = self.scale_ / factors
        return self


def block_factors(blocks: Sequence[int] | None, n_features: int) -> np.ndarray | None:
    """Per-feature multipliers that give each block an equal share of the variance (None: one block)."""
    if not blocks or len(blocks) < 2:
        return None
    if sum(blocks) != n_features:
        raise TransferError(f"the concatenated parts are {'+'.join(map(str, blocks))} = {sum(blocks)} features wide "
                            f"but the features have {n_features}; compute them with the same --layers")
    return np.concatenate([np.full(d, np.sqrt(n_features / (len(blocks) * d))) for d in blocks])


def class_weights(targets: torch.Tensor, n_classes: int, class_weight: str | None) -> torch.Tensor | None:
    """scikit-learn's ``balanced`` weights, ``n / (classes * n_class)``, for a weighted loss (None: unweighted)."""
    if class_weight is None:
        return None
    counts = torch.bincount(targets, minlength=n_classes).double()
    return (len(targets) / (n_classes * counts.clamp(min=1))).float()


class MLPProbeClassifier(ClassifierMixin, BaseEstimator):
    """One hidden layer on standardized features: `modeling_probe.ProbeMLP`, trained with AdamW.

    Early stopping on a stratified hold-out of the training data (10%, at least one image per class): training stops
    when the hold-out loss has not improved by 1% for ``patience`` epochs, and the weights of the best epoch are
    kept. The standardization (mean, std as in `StandardScaler`; block factors as in `BlockStandardScaler`) lives in
    the module, so ``module_`` alone is the probe: predicting and exporting run the same float32 computation.
    """

    def __init__(self, weight_decay: float = 0.05, hidden_size: int = 256, dropout: float = 0.2,
                 activation: str = "gelu", lr: float = 1e-3, max_epochs: int = 100, patience: int = 8,
                 batch_size: int = 128, class_weight: str | None = None, seed: int = 0,
                 blocks: tuple[int, ...] | None = None):
        self.weight_decay, self.hidden_size, self.dropout, self.activation = weight_decay, hidden_size, dropout, activation
        self.lr, self.max_epochs, self.patience, self.batch_size = lr, max_epochs, patience, batch_size
        self.class_weight, self.seed, self.blocks = class_weight, seed, blocks

    def fit(self, X, y):
        X = np.asarray(X, dtype=np.float32)
        self.classes_ = np.unique(y)
        targets = torch.as_tensor(np.searchsorted(self.classes_, y))
        train, held_out = _hold_out(np.asarray(targets), self.seed)
        mean, std = X[train].astype(np.float64).mean(0), X[train].astype(np.float64).std(0)
        std[std < 10 * np.finfo(np.float64).eps] = 1.0  # constant features pass through, as in StandardScaler
        factors = block_factors(self.blocks, X.shape[1])
        if factors is not None:  # equal variance per concatenated block, as BlockStandardScaler
            std = std / factors
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            module = ProbeMLP(X.shape[1], self.hidden_size, len(self.classes_), self.activation, self.dropout)
        with torch.no_grad():
            module.mean.copy_(torch.from_numpy(mean))
            module.scale.copy_(torch.from_numpy(std))
        inputs = torch.from_numpy(X)
        weights = class_weights(targets[train], len(self.classes_), self.class_weight)
        optimizer = torch.optim.AdamW(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        generator = torch.Generator().manual_seed(self.seed)
        train_idx, held_idx = torch.as_tensor(train), torch.as_tensor(held_out)
        best_loss, best_state, best_epoch, epoch = float("inf"), None, 0, 0
        for epoch in range(1, self.max_epochs + 1):
            module.train()
            order = train_idx[torch.randperm(len(train_idx), generator=generator)]
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                loss = torch.nn.functional.cross_entropy(module(inputs[batch]), targets[batch], weight=weights)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if not len(held_idx):
                continue
            module.eval()
            with torch.no_grad():
                held_loss = float(torch.nn.functional.cross_entropy(module(inputs[held_idx]), targets[held_idx],
                                                                    weight=weights))
            if held_loss < best_loss * (1 - 1e-2):  # a 1% gain: a slow slide on separable data is not progress
                best_loss, best_epoch = held_loss, epoch
                best_state = {k: v.clone() for k, v in module.state_dict().items()}
            elif epoch - best_epoch >= self.patience:
                break
        if best_state is not None:
            module.load_state_dict(best_state)
        self.module_ = module.eval()
        self.epochs_ = best_epoch or epoch
        return self

    def decision_function(self, X):
        with torch.inference_mode():
            return self.module_(torch.as_tensor(np.asarray(X, dtype=np.float32))).double().numpy()

    def predict(self, X):
        return self.classes_[self.decision_function(X).argmax(1)]


def _hold_out(targets: np.ndarray, seed: int, fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """A stratified hold-out for early stopping (empty when a class has fewer than 2 images: then no stopping)."""
    from sklearn.model_selection import StratifiedShuffleSplit

    counts = np.bincount(targets)
    n_classes = int((counts > 0).sum())
    size = max(n_classes, int(round(fraction * len(targets))))
    if counts[counts > 0].min() < 2 or size >= len(targets) - n_classes:
        return np.arange(len(targets)), np.arange(0)
    train, held = next(StratifiedShuffleSplit(n_splits=1, test_size=size, random_state=seed).split(targets, targets))
    return np.sort(train), np.sort(held)


def _classes_of(scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """scikit-learn's rule: binary scores are one decision value (positive -> second class), else the argmax."""
    return classes[(scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(1)]


def _estimator(kind: str, value, config: ProbeConfig, blocks: tuple[int, ...] | None = None):
    """A fresh estimator about to be fitted (tests count these calls)."""
    return _build_estimator(kind, value, config, blocks)


def _build_estimator(kind: str, value, config: ProbeConfig, blocks: tuple[int, ...] | None = None):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import SVC, LinearSVC

    weight = config.class_weight
    if kind == "logreg":
        clf = LogisticRegression(C=value, solver="lbfgs", max_iter=config.max_iter, tol=1e-3, class_weight=weight)
    elif kind == "linear_svm":
        # Primal coordinate descent: far faster than the dual when images outnumber features, the usual case here.
        clf = LinearSVC(C=value, dual="auto", max_iter=config.max_iter * 3, tol=1e-3, random_state=config.seed,
                        class_weight=weight)
    elif kind == "rbf_svm":
        clf = SVC(C=value, kernel="rbf", gamma="scale", class_weight=weight)
    elif kind == "knn":
        clf = KNeighborsClassifier(n_neighbors=value)  # no class weights in k-NN
    elif kind == "torch_linear":
        clf = TorchLinearClassifier(C=value, seed=config.seed, class_weight=weight)
    elif kind == "mlp":  # standardizes inside its module: no scaler in front
        return MLPProbeClassifier(weight_decay=value, hidden_size=config.mlp_hidden, dropout=config.mlp_dropout,
                                  max_epochs=config.mlp_max_epochs, class_weight=weight, seed=config.seed,
                                  blocks=blocks)
    else:
        raise TransferError(f"unknown probe {kind!r}; choose from {', '.join(PROBES)}")
    return make_pipeline(BlockStandardScaler(blocks) if blocks else StandardScaler(), clf)


def _grid(kind: str, config: ProbeConfig) -> tuple[str, tuple]:
    return {
        "logreg": ("C", config.logreg_c),
        "linear_svm": ("C", config.linear_svm_c),
        "rbf_svm": ("C", config.rbf_svm_c),
        "knn": ("n_neighbors", config.knn_k),
        "torch_linear": ("C", config.torch_linear_c),
        "mlp": ("weight_decay", config.mlp_weight_decay),
    }[kind]


def _plain_params(estimator) -> dict:
    """An estimator's parameters that are plain values (for cache keys: every setting that changes a fit)."""
    return {k: v for k, v in estimator.get_params(deep=True).items() if not isinstance(v, (BaseEstimator, list))}


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


class MLPHead:
    """A fitted MLP probe: the `ProbeMLP` module (standardization inside) and the classes its logits stand for.

    The probe cache stores it as safetensors (the module's state and the classes), like a `LinearHead`.
    """

    def __init__(self, module: ProbeMLP, classes: np.ndarray, activation: str = "gelu"):
        self.module = module.eval()
        self.classes = np.asarray(classes)
        self.activation = activation

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], activation: str = "gelu") -> "MLPHead":
        hidden, features = arrays["fc1.weight"].shape
        module = ProbeMLP(features, hidden, arrays["fc2.weight"].shape[0], activation)
        module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in arrays.items() if k != "classes"})
        return cls(module, arrays["classes"], activation)

    def arrays(self) -> dict[str, np.ndarray]:
        return {**{k: v.detach().numpy() for k, v in self.module.state_dict().items()}, "classes": self.classes}

    @property
    def hidden_size(self) -> int:
        return self.module.fc1.out_features

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module(torch.as_tensor(np.asarray(X, dtype=np.float32))).double().numpy()

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes[self.decision_function(X).argmax(1)]


@dataclass
class ProbeResult:
    """One fitted probe on one layer: its CV scores, chosen hyper-parameter and held-out metrics.

    ``cv_score`` / ``cv_std`` are the selection metric's (``selected_by``: accuracy or macro-F1); ``cv_metrics``
    holds both. ``estimator`` is the fitted scikit-learn estimator, or None when the probe came from the cache;
    ``linear`` is the `LinearHead` of every linear probe, ``mlp`` the `MLPHead` of an MLP probe.
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

    @property
    def exportable(self) -> bool:
        return self.probe in EXPORTABLE_PROBES

    @property
    def _predictor(self):
        return self.linear or self.mlp or self.estimator

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
        if not self.exportable:
            raise TransferError(
                f"a {self.probe} probe cannot be exported as a model: only linear probes "
                f"({', '.join(LINEAR_PROBES)}) and the mlp probe become a model head; {self.probe} is for comparison "
                "only (--export auto picks the best exportable probe)"
            )
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
    the CV scores of each (features, labels, estimator settings, folds, seed) as JSON, and the final fit of a linear
    or MLP probe as arrays in safetensors. Kernel SVM and k-NN are refitted (only a pickle could store them).
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
                done = cross_validate(_estimator(kind, value, config, blocks), X, y, cv=folds,
                                      scoring={"accuracy": "accuracy", "macro_f1": "f1_macro"})
                cached = {metric: float(done[f"test_{metric}"].mean()) for metric in SELECTION_METRICS}
                cached.update({f"{metric}_std": float(done[f"test_{metric}"].std()) for metric in SELECTION_METRICS})
                if key:
                    score_cache.save_json(key, cached)
            scores[value] = cached
        metric = config.select_by
        # ties: the earlier (stronger-regularized) value
        best = max(values, key=lambda v: (scores[v][metric], -values.index(v)))
        fit_kind = "linear_head" if kind in LINEAR_PROBES else "mlp_head"
        fit_key = cache_key(fit_kind, best) if kind in EXPORTABLE_PROBES else None
        stored = score_cache.load_arrays(fit_key) if fit_key else None
        estimator = None if stored is not None else _estimator(kind, best, config, blocks).fit(X, y)
        linear = mlp = None
        if kind in LINEAR_PROBES:
            linear = LinearHead.from_arrays(stored) if stored is not None else LinearHead.from_pipeline(estimator)
        elif kind in MLP_PROBES:
            mlp = MLPHead.from_arrays(stored) if stored is not None else MLPHead(estimator.module_, estimator.classes_)
        if fit_key and stored is None:
            score_cache.save_arrays(fit_key, (linear or mlp).arrays())
    return ProbeResult(kind, layer, scores[best][metric], scores[best][f"{metric}_std"], name, best, estimator,
                       time.perf_counter() - start, linear=linear, from_cache=estimator is None, mlp=mlp,
                       cv_metrics=dict(scores[best]), selected_by=metric, class_weight=config.class_weight)


def _digest(X: np.ndarray, y: np.ndarray) -> str:
    import hashlib

    digest = hashlib.sha256()
    for array in (np.ascontiguousarray(X), np.ascontiguousarray(y)):
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


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


__all__ = [
    "CLASS_WEIGHTINGS",
    "COMPARISON_PROBES",
    "EXPORTABLE_PROBES",
    "LINEAR_PROBES",
    "MLP_PROBES",
    "PROBES",
    "SELECTION_METRICS",
    "LinearHead",
    "MLPHead",
    "MLPProbeClassifier",
    "ProbeConfig",
    "ProbeResult",
    "TorchLinearClassifier",
    "evaluate_probe",
    "fit_probe",
    "resolve_probes",
]
