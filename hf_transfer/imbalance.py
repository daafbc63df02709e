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
from .runtime import say

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


class ImbalanceCorrection:
    """A `transformers.Trainer` mixin: the config's ``class_weighting`` makes `compute_loss` a class-weighted
    cross-entropy (weights from the train split's class counts, or ``class_weights=``); ``sampler="balanced"``
    makes `_get_train_sampler` a seeded class-balanced draw, the same on every process, which accelerate shards by
    batch. Put it before `Trainer` in the bases and call `setup_imbalance_correction` at the end of ``__init__``.
    """

    imbalance_config = None  # a TransferConfig (its class_weighting and sampler)
    class_weights = None
    class_counts = None

    def setup_imbalance_correction(self, config, class_weights=None) -> None:
        """Call at the end of the trainer's __init__ (it needs the model, args and train_dataset)."""
        self.imbalance_config = config
        self.class_weights, self.class_counts = self._imbalance_correction(class_weights)

    def _imbalance_correction(self, class_weights):
        """(loss weights or None, train images per class or None) for the plan's --class_weighting / --sampler."""
        config = self.imbalance_config
        if class_weights is None and config.class_weighting == "none" and config.sampler == "random":
            return None, None
        if class_weights is not None and config.sampler == "balanced":
            raise TransferError("class_weights and --sampler balanced both correct for imbalance; pick one")
        if config.sampler == "balanced" and self.args.train_sampling_strategy != "random":
            raise TransferError(f"--sampler balanced replaces the training order; drop --train_sampling_strategy "
                                f"{self.args.train_sampling_strategy}")
        num_classes = int(self.model.config.num_labels)
        counts = None
        if self.train_dataset is not None and (class_weights is None or config.sampler == "balanced"):
            counts = class_counts(train_label_ids(self.train_dataset), num_classes)
        weights = None
        if class_weights is not None:
            weights = torch.as_tensor(class_weights, dtype=torch.float32).reshape(-1)
            if len(weights) != num_classes:
                raise TransferError(f"class_weights has {len(weights)} values for a model with {num_classes} classes")
        elif config.class_weighting == "balanced":
            if counts is None:
                raise TransferError("--class_weighting balanced needs a train_dataset to count the classes in")
            weights = balanced_class_weights(counts)
        if weights is not None:
            self.loss_is_scaled_for_ga = False  # a per-batch mean: Trainer divides it by the accumulation steps
        if counts is not None:
            labels = [str(self.model.config.id2label.get(k, k)) for k in range(num_classes)]
            say(describe_balance(counts, labels, weights, config.sampler))
        return weights, counts

    def imbalance_summary(self) -> dict:
        """What all_results.json and the model card record about the imbalance correction (empty when none)."""
        config = self.imbalance_config
        if self.class_weights is None and getattr(config, "sampler", "random") == "random":
            return {}
        id2label = self.model.config.id2label
        name = lambda k: str(id2label.get(k, k))  # noqa: E731
        weighting = "none" if self.class_weights is None else (
            "custom" if config.class_weighting == "none" else config.class_weighting)  # custom: class_weights= given
        summary = {"class_weighting": weighting, "sampler": config.sampler}
        if self.class_counts is not None:
            summary["train_class_counts"] = {name(k): int(n) for k, n in enumerate(self.class_counts)}
        if self.class_weights is not None:
            summary["class_weights"] = {name(k): round(float(w), 6) for k, w in enumerate(self.class_weights)}
        return summary

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.class_weights is None or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        loss = weighted_cross_entropy(logits, labels, self.class_weights, self.args.label_smoothing_factor)
        if not isinstance(outputs, dict):
            outputs = (loss, *outputs)  # as with labels: prediction_step reads the logits after the loss
        return (loss, outputs) if return_outputs else loss

    def _get_train_sampler(self, train_dataset=None):
        if getattr(self.imbalance_config, "sampler", "random") != "balanced":
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        # Same draw on every process (seed + epoch); accelerate shards the batches between processes.
        return BalancedClassSampler(train_label_ids(dataset), len(dataset), seed=seed)
