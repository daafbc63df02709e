"""Probe estimators on frozen features: what is fitted, with which grid.

Every probe standardizes its features (a scikit-learn pipeline ``StandardScaler -> classifier``; the MLP carries
its own standardization); its regularization is chosen by stratified k-fold cross-validation on the training split
(`search.fit_probe`), and every probe can be exported as a model (`export.export_probe`):

* ``logreg``: multinomial logistic regression (lbfgs), C by CV.
* ``linear_svm``: `LinearSVC` (one-vs-rest, squared hinge), C by CV.
* ``torch_linear``: a linear head trained with AdamW on cached features (large datasets), C by CV.
* ``mlp``: one hidden layer (GELU, dropout) trained with AdamW and early stopping, weight decay by CV.
* ``rbf_svm``: kernel SVM (``gamma="scale"``, ties between classes broken by the decision values), C by CV.
* ``knn``: k nearest neighbours, k by CV.

``class_weight="balanced"`` weighs each class by ``n / (classes * n_class)`` (scikit-learn's rule; the torch probes
weigh their loss the same way); k-NN has no class weights.

A linear probe exports with the standardization folded into the head, ``W' = coef / scale`` and
``b' = intercept - coef · (mean / scale)``; a binary probe gives two logits ``[0, d]``. The MLP exports as the very
module it was trained as (`modeling_probe.ProbeMLP`), a kernel probe as `modeling_probe.KernelProbe`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import StandardScaler

from ..errors import TransferError
from ..modeling_probe import ProbeMLP

LINEAR_PROBES = ("logreg", "linear_svm", "torch_linear")
MLP_PROBES = ("mlp",)
KERNEL_PROBES = ("rbf_svm", "knn")
PROBES = LINEAR_PROBES + MLP_PROBES + KERNEL_PROBES
EXPORTABLE_PROBES = PROBES  # every probe exports as a model head (kernel probes within a size limit)
COMPARISON_PROBES = KERNEL_PROBES  # what `auto` adds on small sets (they scale with n^2)
# A kernel probe's head holds its support rows: above this size export refuses it, with the numbers.
MAX_HEAD_BYTES = 200 * 2**20
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
    # One value: early stopping regularizes the MLP, and each grid value costs cv_folds fits (the MLP's budget in
    # `auto` is 2x a logistic regression's).
    mlp_weight_decay: tuple[float, ...] = (0.05,)
    mlp_hidden: int = 128
    mlp_dropout: float = 0.2
    mlp_max_epochs: int = 60  # early stopping usually ends training well before
    max_iter: int = 100
    class_weight: str | None = None  # None or "balanced"
    select_by: str = "accuracy"  # the CV metric that picks hyper-parameters and the best probe: accuracy or macro_f1
    n_jobs: int | None = None  # processes for the CV folds (joblib); None: as many as free cores allow

    def jobs(self, tasks: int) -> int:
        """Processes for ``tasks`` independent fits: ``n_jobs``, else one per core this process may use, never
        more than the tasks (one: fits run in this process, no worker start-up)."""
        if self.n_jobs is not None:
            return max(1, min(self.n_jobs, tasks))
        import os

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(cores // 2, tasks))  # half the cores: the other half stays with torch and the machine

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
    """``balanced`` weights for the torch probes' weighted loss (None: unweighted): the fine-tune's own
    `imbalance.balanced_class_weights`, proportional to ``1 / n_class``. torch's weighted mean cross-entropy
    divides by the summed weights, so only the ratios count: scikit-learn's ``n / (classes * n_class)`` gives the
    same loss and the same fit (tests/test_probe_variants.py checks the predictions are identical)."""
    if class_weight is None:
        return None
    from ..imbalance import balanced_class_weights

    return balanced_class_weights(torch.bincount(targets, minlength=n_classes).tolist())


class MLPProbeClassifier(ClassifierMixin, BaseEstimator):
    """One hidden layer on standardized features: `modeling_probe.ProbeMLP`, trained with AdamW.

    Early stopping on a stratified hold-out of the training data (10%, at least one image per class): training stops
    when the hold-out loss has not improved by 1% for ``patience`` epochs, and the weights of the best epoch are
    kept. The standardization (mean, std as in `StandardScaler`; block factors as in `BlockStandardScaler`) lives in
    the module, so ``module_`` alone is the probe: predicting and exporting run the same float32 computation.

    Cheap on purpose (`--probe auto` takes it only at <= 2x a logistic regression's cost,
    bench/bench_probe_mlp_cost.py): one torch thread (these matrices are small: a second thread only adds
    synchronisation, and on a busy CPU it waits for a core), large batches (256) with a higher learning rate and
    a short patience.
    """

    def __init__(self, weight_decay: float = 0.05, hidden_size: int = 128, dropout: float = 0.2,
                 activation: str = "gelu", lr: float = 3e-3, max_epochs: int = 60, patience: int = 4,
                 batch_size: int = 256, class_weight: str | None = None, seed: int = 0,
                 blocks: tuple[int, ...] | None = None):
        self.weight_decay, self.hidden_size, self.dropout, self.activation = weight_decay, hidden_size, dropout, activation
        self.lr, self.max_epochs, self.patience, self.batch_size = lr, max_epochs, patience, batch_size
        self.class_weight, self.seed, self.blocks = class_weight, seed, blocks

    def fit(self, X, y):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            # Dropout draws from torch's global generator: seeded here, so a fit depends on its data and settings,
            # not on what the process ran before (other layers, fits that came from the cache)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                return self._fit(np.asarray(X, dtype=np.float32), y)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, X, y):
        self.classes_ = np.unique(y)
        targets = torch.as_tensor(np.searchsorted(self.classes_, y))
        train, held_out = _hold_out(np.asarray(targets), self.seed)
        mean, std = X[train].astype(np.float64).mean(0), X[train].astype(np.float64).std(0)
        std[std < 10 * np.finfo(np.float64).eps] = 1.0  # constant features pass through, as in StandardScaler
        factors = block_factors(self.blocks, X.shape[1])
        if factors is not None:  # equal variance per concatenated block, as BlockStandardScaler
            std = std / factors
        module = ProbeMLP(X.shape[1], self.hidden_size, len(self.classes_), self.activation, self.dropout)
        with torch.no_grad():
            module.mean.copy_(torch.from_numpy(mean))
            module.scale.copy_(torch.from_numpy(std))
        inputs = torch.from_numpy(X)
        weights = class_weights(targets[train], len(self.classes_), self.class_weight)
        optimizer = torch.optim.AdamW(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        generator = torch.Generator().manual_seed(self.seed)
        train_idx, held_idx = torch.as_tensor(train), torch.as_tensor(held_out)
        held_inputs, held_targets = inputs[held_idx], targets[held_idx]
        best_loss, best_state, best_epoch, epoch = float("inf"), None, 0, 0
        for epoch in range(1, self.max_epochs + 1):
            module.train()
            order = train_idx[torch.randperm(len(train_idx), generator=generator)]
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                loss = torch.nn.functional.cross_entropy(module(inputs[batch]), targets[batch], weight=weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if not len(held_idx):
                continue
            module.eval()
            with torch.no_grad():
                held_loss = float(torch.nn.functional.cross_entropy(module(held_inputs), held_targets, weight=weights))
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
        # break_ties: predict is the argmax of the decision values, which is what the exported model's logits are
        clf = SVC(C=value, kernel="rbf", gamma="scale", class_weight=weight, break_ties=True)
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


def _digest(X: np.ndarray, y: np.ndarray) -> str:
    import hashlib

    digest = hashlib.sha256()
    for array in (np.ascontiguousarray(X), np.ascontiguousarray(y)):
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()



__all__ = [
    "CLASS_WEIGHTINGS",
    "COMPARISON_PROBES",
    "EXPORTABLE_PROBES",
    "KERNEL_PROBES",
    "LINEAR_PROBES",
    "MAX_HEAD_BYTES",
    "MLP_PROBES",
    "PROBES",
    "SELECTION_METRICS",
    "BlockStandardScaler",
    "MLPProbeClassifier",
    "ProbeConfig",
    "TorchLinearClassifier",
    "class_weights",
    "resolve_probes",
]
