"""Class imbalance in fine-tuning: class-weighted cross-entropy and a class-balanced sampler.

On imbalanced data a plain fine-tune under-calls the rare classes: accuracy looks fine while macro-F1 and the
rare classes' recall trail it. Two standard corrections, one at a time:

* ``--class_weighting balanced``: cross-entropy with class ``k`` weighted by ``1 / n_k`` (``n_k`` its training
  images), normalized so that the mean weight over the classes present is 1. torch's weighted mean divides by
  the batch's summed weights, so the normalization only makes the printed weights readable.
* ``--sampler balanced``: training images drawn with replacement, each with probability ``1 / (K n_k)``, so every
  class is equally likely in every batch on average; an epoch is as many draws as there are training images.

Both together would correct twice (rare classes then count about ``(n_max / n_min)^2`` times more), so
`TransferConfig.validate` refuses the combination.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from .errors import TransferError

CLASS_WEIGHTINGS = ("none", "balanced")
SAMPLERS = ("random", "balanced")


def class_counts(label_ids, num_classes: int) -> np.ndarray:
    """Images per class id (length ``num_classes``); ids outside [0, num_classes) are an error."""
    ids = np.asarray(label_ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
        raise TransferError(f"training labels run from {ids.min()} to {ids.max()} but the model has {num_classes} "
                            "classes; check the label column")
    return np.bincount(ids, minlength=num_classes)


def balanced_class_weights(counts: Sequence[int]) -> torch.Tensor:
    """``w_k`` proportional to ``1 / n_k``, mean 1 over the classes with training images; 0 for classes without
    (they are never a target, so their weight never enters the loss)."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise TransferError("no training labels to weight the classes by; check the training split")
    inverse = np.zeros_like(counts)
    inverse[present] = 1.0 / counts[present]
    return torch.tensor(inverse / inverse[present].mean(), dtype=torch.float32)


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                           label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy with class weights: ``sum_i w[y_i] l_i / sum_i w[y_i]`` (torch's weighted mean)."""
    return torch.nn.functional.cross_entropy(logits.float(), labels.long(), weight=weights.to(logits.device, torch.float32),
                                             label_smoothing=label_smoothing)


class BalancedClassSampler(torch.utils.data.Sampler[int]):
    """Indices drawn with replacement so that every class is equally likely (``1 / n_k`` per image of class k).

    The draw of epoch ``e`` depends only on ``seed + e``: every process of a DDP run draws the same sequence and
    accelerate's batch sharding (`BatchSamplerShard`) hands each process different batches of it; a resumed run
    redraws exactly the epoch it stopped in. `Trainer` calls `set_epoch` before each epoch; without it each
    iteration moves on to the next epoch's draw.
    """

    def __init__(self, label_ids, num_samples: int | None = None, seed: int = 0):
        ids = np.asarray(label_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise TransferError("--sampler balanced needs a non-empty training split")
        counts = np.bincount(ids)
        self.weights = torch.as_tensor(1.0 / counts[ids], dtype=torch.float64)
        self.num_samples = int(num_samples if num_samples is not None else ids.size)
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        rng = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=rng)
        self.epoch += 1  # the next iteration draws afresh unless set_epoch says otherwise
        yield from drawn.tolist()


def train_label_ids(dataset) -> np.ndarray:
    """The class id of every training item, read without decoding images.

    Knows the in-memory image store (`fastdata.PreparedImages`) and `datasets.Dataset` splits (a ``labels`` or
    ``label`` column, else their one `ClassLabel` column; transforms or not); anything else: pass the weights to `TransferTrainer(class_weights=...)`.
    """
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor):
        return labels.numpy().astype(np.int64)
    column_names = getattr(dataset, "column_names", None)
    if column_names is not None:
        from datasets import ClassLabel

        class_columns = [n for n in column_names if isinstance(dataset.features.get(n), ClassLabel)]
        column = next((name for name in ("labels", "label") if name in column_names),
                      class_columns[0] if len(class_columns) == 1 else None)
        if column is not None:
            # with_format(None) drops the attached transform, so the column is read from Arrow, images untouched
            return np.asarray(dataset.with_format(None)[column], dtype=np.int64)
    raise TransferError(f"cannot read the class of each training item from a {type(dataset).__name__}; give the "
                        "weights yourself with TransferTrainer(class_weights=[...]) or use --class_weighting none")


def describe_balance(counts: Sequence[int], labels: Sequence[str], weights: torch.Tensor | None = None,
                     sampler: str = "random", limit: int = 12) -> str:
    """One line for the run summary: the class counts and what the weighting or sampler does with them."""
    counts = np.asarray(counts)
    present = counts[counts > 0]
    ratio = present.max() / present.min() if present.size else float("nan")
    order = np.argsort(counts, kind="stable")  # rarest first: the classes the correction is about
    shown = order[:limit]

    def item(k: int) -> str:
        text = f"{labels[k] if k < len(labels) else k}={counts[k]}"
        if weights is not None:
            text += f" (w {float(weights[k]):.3g})"
        elif sampler == "balanced" and counts[k]:
            text += f" (x{counts.sum() / (len(present) * counts[k]):.2g})"
        return text

    more = f", and {len(order) - limit} more" if len(order) > limit else ""
    if weights is not None:
        what = "class-weighted cross-entropy (weights 1/n, mean 1)"
    elif sampler == "balanced":
        what = "balanced sampler (draws with replacement, every class equally likely; x = change in how often)"
    else:
        what = "no imbalance correction"
    return f"{what}; train images per class, rarest first (max/min {ratio:.1f}): {', '.join(map(item, shown))}{more}"
