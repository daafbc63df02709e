"""Fitted probes as plain arrays: what export folds into a model and the probe cache stores as safetensors.

* `LinearHead`: ``((x - mean) / scale) @ coef.T + intercept`` (logreg, linear SVM, torch head).
* `MLPHead`: the `modeling_probe.ProbeMLP` module the MLP probe trained as.
* `KernelHead`: an RBF-SVM's support vectors, dual coefficients, intercept and gamma, or k-NN's training rows
  and labels, with the standardization: the `modeling_probe.KernelProbe` module the export carries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..modeling_probe import KernelProbe, ProbeMLP
from .estimators import _classes_of


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


class KernelHead:
    """A fitted kernel probe (``rbf_svm`` or ``knn``) as its `KernelProbe` module and the classes it scores.

    Its decision values are scikit-learn's, in float64: ``SVC.decision_function`` (one-vs-rest shape for three
    classes or more; binary: one value, logits ``[0, d]``) or ``KNeighborsClassifier.predict_proba``.
    """

    ARRAYS = ("mean", "scale", "support", "coef", "intercept", "gamma")

    def __init__(self, module: KernelProbe, classes: np.ndarray):
        self.module = module.eval()
        self.classes = np.asarray(classes)

    @property
    def kind(self) -> str:
        return self.module.kind

    @classmethod
    def from_pipeline(cls, kind: str, pipeline) -> "KernelHead":
        """From a fitted ``scaler -> SVC`` or ``scaler -> KNeighborsClassifier`` pipeline."""
        scaler, clf = pipeline[0], pipeline[-1]
        classes = np.asarray(clf.classes_)
        n_classes = len(classes)
        if kind == "rbf_svm":
            support = np.asarray(clf.support_vectors_, dtype=np.float64)
            dual = np.asarray(clf.dual_coef_, dtype=np.float64)
            if n_classes == 2:  # scikit-learn already signs dual_coef_ / intercept_ as its decision_function
                coef = dual.T
            else:  # one-vs-one: the pair (i, j) weighs class i's vectors by row j-1, class j's by row i
                starts = np.concatenate([[0], np.cumsum(clf.n_support_)])
                pairs = [(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)]
                coef = np.zeros((len(support), len(pairs)))
                for column, (i, j) in enumerate(pairs):
                    coef[starts[i]:starts[i + 1], column] = dual[j - 1, starts[i]:starts[i + 1]]
                    coef[starts[j]:starts[j + 1], column] = dual[i, starts[j]:starts[j + 1]]
            intercept, gamma, neighbours = np.asarray(clf.intercept_, dtype=np.float64), float(clf._gamma), 1
        else:
            support = np.asarray(clf._fit_X, dtype=np.float64)
            coef = np.eye(n_classes)[np.asarray(clf._y)]
            intercept, gamma, neighbours = np.zeros(n_classes), 1.0, int(clf.n_neighbors)
        module = KernelProbe(kind, support.shape[1], len(support), coef.shape[1], n_classes, neighbours)
        arrays = {"mean": scaler.mean_, "scale": scaler.scale_, "support": support, "coef": coef,
                  "intercept": intercept, "gamma": np.asarray(gamma)}
        with torch.no_grad():
            for name, value in arrays.items():
                getattr(module, name).copy_(torch.as_tensor(np.asarray(value, dtype=np.float64)))
        return cls(module, classes)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "KernelHead":
        kind = "knn" if int(arrays["is_knn"][0]) else "rbf_svm"
        module = KernelProbe(kind, arrays["support"].shape[1], len(arrays["support"]), arrays["coef"].shape[1],
                             len(arrays["classes"]), int(arrays["neighbours"][0]))
        with torch.no_grad():
            for name in cls.ARRAYS:
                getattr(module, name).copy_(torch.from_numpy(arrays[name].reshape(getattr(module, name).shape).copy()))
        return cls(module, arrays["classes"])

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {name: getattr(self.module, name).numpy().reshape(-1) if name == "gamma"
                  else getattr(self.module, name).numpy() for name in self.ARRAYS}
        return {**arrays, "classes": self.classes, "is_knn": np.array([int(self.kind == "knn")]),
                "neighbours": np.array([self.module.neighbours])}

    @property
    def nbytes(self) -> int:
        """What the head adds to an exported folder (float64 buffers)."""
        return sum(int(t.numel()) * t.element_size() for t in self.module.state_dict().values())

    def logits(self, X: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module(torch.as_tensor(np.asarray(X))).numpy()

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        logits = self.logits(X)
        return logits[:, 1] if self.kind == "rbf_svm" and len(self.classes) == 2 else logits

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes[self.logits(X).argmax(1)]


__all__ = ["KernelHead", "LinearHead", "MLPHead"]
