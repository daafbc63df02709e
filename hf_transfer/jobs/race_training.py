"""The candidates of the race (`jobs/race.py`) trained on the user's images: the training split cut into the race's
train and held-out parts, the probe plans fitted once on one forward pass, the fine-tune plans trained rung by rung,
each rung resumed where the plan's last one stopped, and every plan scored image by image on the held-out part."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..advisor.race import CandidatePlan
from ..advisor.rules import Thresholds
from ..budget import StopAt
from ..continuation import ContinueSchedule, RestoreOptimizer

PROBE_C = 0.1  # the probe curve's regularization (advisor.measure.CURVE_C): the race scores the same probe
# A rung's data order is drawn from seed + stride x (the plan's rung number): each Trainer starts its sampler at epoch
# 0, so with one seed every rung replayed the first rung's batches (a rung of 40 steps on 4,000 images saw the same
# 1,280 every time). The sampler adds the epoch to the seed; the stride keeps rungs' orders apart.
DATA_ORDER_STRIDE = 1000


@dataclasses.dataclass
class Contender:
    """A fine-tune plan in the race: its rungs are stretches of one training run, each resumed where the last one
    stopped (weights, AdamW's moments, the place on its schedule)."""

    model: torch.nn.Module
    optimizer_state: dict | None = None  # AdamW's moments after the last rung
    step_seconds: float | None = None  # measured on the last rung
    rungs_run: int = 0  # the next rung's data order (the same for every plan: see DATA_ORDER_STRIDE)
    steps_done: int = 0  # where it stands on its one schedule
    warmup_steps: int | None = None  # its schedule's warm-up, fixed at its first rung



def holdout_split(data, seed: int, t: Thresholds):
    """(train, held-out) from the training split, stratified: the race never sees validation or test."""
    from ..data import _stratified_split

    train = data.splits["train"]
    n_classes = len(data.labels)
    n = int(min(t.holdout_max_images, max(2 * n_classes, round(t.holdout_fraction * len(train)))))
    return _stratified_split(train, data.label_column, n, seed, what="held-out part of train for the race",
                             fix="add training images to the rarest classes, or choose a fixed --strategy")


class RaceTrainer:
    """Trains and scores the candidate plans on the race's own split of the training images: the probes once,
    the fine-tunes rung by rung (each a `Contender`), all in one process on one decoded image store."""

    def __init__(self, measurement, data, model_args, training_args, image_size: int, t: Thresholds,
                 output_dir: Path, probe_images: int, cache):
        from datasets import DatasetDict

        from ..fastdata import prepare_splits
        from ..transforms import with_transforms

        self.m, self.t, self.model_args, self.training_args = measurement, t, model_args, training_args
        self.output_dir = output_dir
        self.image_size = image_size
        self.cache = cache
        self.race_data = data
        self.pretrained, self.adapter = self._load()
        self.cfg = self.adapter.data_config()
        train, holdout, self.probe_train = self._split(data, probe_images, training_args.seed)
        self.race_data = dataclasses.replace(data, splits=DatasetDict(train=train, validation=holdout), subset_store=None)
        self.lazy = with_transforms(self.race_data.splits, self.race_data, self.cfg, image_size=image_size,
                                    augmentation="none")
        self.splits, self.collator, _ = prepare_splits(self.race_data, self.lazy, self.cfg, image_size=image_size,
                                                       augmentation="none",
                                                       channels_last=self.adapter.prefers_channels_last())
        self.holdout_labels = np.asarray(holdout[data.label_column])
        self.contenders: dict[str, Contender] = {}  # the fine-tunes that have trained a rung, by plan name

    def _split(self, data, probe_images: int, seed: int):
        """(race train, held-out, the probes' training images). With more training images than the measurement's
        subsample, the held-out images are drawn from outside that subsample and the probes train on it: its
        features are in the cache already, so the probes cost one forward pass over the held-out images only."""
        from sklearn.model_selection import train_test_split

        from ..data import _stratified_subset
        from ..transforms import with_transforms

        full = data.splits["train"]
        if len(full) > probe_images + self.t.holdout_max_images:
            labels = np.asarray(full[data.label_column])
            measured = _stratified_subset(full, data.label_column, probe_images, seed, "--max_probe_images")
            _, inside = train_test_split(np.arange(len(full)), test_size=probe_images, random_state=seed, stratify=labels)
            rest = np.setdiff1d(np.arange(len(full)), inside)
            n = int(min(self.t.holdout_max_images, max(2 * len(data.labels), round(self.t.holdout_fraction * len(full)))))
            try:
                _, picked = train_test_split(rest, test_size=n, random_state=seed, stratify=labels[rest])
            except ValueError:  # a class too rare outside the subsample: the plain split, probes on race train
                picked = None
            if picked is not None:
                holdout = full.select(np.sort(picked))
                train = full.select(np.setdiff1d(np.arange(len(full)), picked))
                probe_train = with_transforms({"train": measured}, data, self.cfg, image_size=self.image_size,
                                              augmentation="none")["train"]
                return train, holdout, probe_train
        train, holdout = holdout_split(data, seed, self.t)
        return train, holdout, None

    def _load(self):
        from .common import load_sized_backbone

        return load_sized_backbone(self.model_args, self.race_data.labels, self.image_size, pretrained=True,
                                   name=self.m.backbone, report=False)

    # ------------------------------------------------------------------ probes: trained once
    def score_probes(self, plans: list[CandidatePlan]) -> dict[str, np.ndarray]:
        """Every probe plan from one forward pass over the race's train and held-out images."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        from ..features import compute_features, parse_layers

        if not plans:
            return {}
        layer_map = self.adapter.layer_map()
        layers = {p.name: parse_layers(p.layers, layer_map) for p in plans}
        every = list({layer.key: layer for group in layers.values() for layer in group}.values())
        from ..features import transform_fingerprint
        from ..transforms import build_transform

        train = self.probe_train if self.probe_train is not None else self.lazy["train"]
        key = transform_fingerprint(build_transform(self.cfg, image_size=self.image_size), self.cfg, self.image_size)
        fs = compute_features(self.pretrained, {"train": train, "validation": self.lazy["validation"]}, every,
                              layer_map=layer_map, cache=self.cache, transform_key=key, image_size=self.image_size)
        from threadpoolctl import threadpool_limits

        out = {}
        for name, group in layers.items():
            X = {split: np.concatenate([fs.features[split][layer.key] for layer in group], axis=1)
                 for split in ("train", "validation")}
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=2000))
            # one BLAS thread, as probes/search.py: beside torch's OpenMP threads the two fits of mnist300's race
            # took 17 s, most of the race's time (the probes' own search measured 20x)
            with threadpool_limits(limits=1):
                probe.fit(X["train"], fs.labels["train"])
            out[name] = (probe.predict(X["validation"]) == fs.labels["validation"]).astype(np.int8)
        return out

    # ------------------------------------------------------------------ fine-tunes: trained rung by rung
    def train_rung(self, plan: CandidatePlan, steps: int, until: float | None = None,
                   horizon: int | None = None) -> tuple[np.ndarray, int]:
        """Train ``plan`` ``steps`` more steps, or until the clock (`time.perf_counter`) would pass ``until``; the
        held-out correctness, and the steps it ran. ``horizon``: the plan's steps in all should it win (its rungs and
        the real run): the rung is a stretch of one warm-up and cosine over them (None: its own warm-up and cosine)."""
        from ..arguments import TransferArguments
        from ..plan import TransferPlan
        from ..trainer import TransferTrainer
        from ..training_args import TransferTrainingArguments

        first = plan.name not in self.contenders
        if first:
            model = copy.deepcopy(self.pretrained)
            if self.adapter.prefers_channels_last():
                model = model.to(memory_format=torch.channels_last)
            self.contenders[plan.name] = Contender(model)
        contender = self.contenders[plan.name]
        model = contender.model
        args = TransferTrainingArguments(
            output_dir=str(self.output_dir / "race" / plan.name.replace(" ", "_").replace(":", "")),
            max_steps=int(steps), learning_rate=self.m.default_learning_rate,
            per_device_train_batch_size=self.training_args.per_device_train_batch_size,
            per_device_eval_batch_size=self.training_args.per_device_eval_batch_size,
            eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=10_000,
            seed=self.training_args.seed, use_cpu=self.training_args.use_cpu,
            data_seed=self.training_args.seed + DATA_ORDER_STRIDE * contender.rungs_run)
        transfer = TransferArguments(strategy=plan.strategy, freeze=plan.freeze,
                                     backbone_lr_multiplier=plan.backbone_lr_multiplier, layer_decay=plan.layer_decay)
        transfer_plan = TransferPlan.build(model, transfer.to_config(args))
        if first:
            transfer_plan.reinitialize(model)
        trainer = TransferTrainer(model=model, args=args, plan=transfer_plan, train_dataset=self.splits["train"],
                                  eval_dataset=self.splits["validation"], data_collator=self.collator)
        if contender.optimizer_state is not None:  # the next rung continues the last one's AdamW moments
            trainer.add_callback(RestoreOptimizer(contender.optimizer_state, f"race {plan.name}"))
        if horizon is not None:  # after RestoreOptimizer, whose state carries the last rung's rates
            done = contender.steps_done
            if contender.warmup_steps is None:
                contender.warmup_steps = math.ceil(args.warmup_steps * max(horizon, steps))
            trainer.add_callback(ContinueSchedule(offset=done, warmup_steps=contender.warmup_steps,
                                                  horizon=max(horizon - done, steps), what=f"race {plan.name}"))
        if until is not None:
            trainer.add_callback(StopAt(until))
        began = time.perf_counter()
        trainer.train()
        ran = max(1, trainer.state.global_step)
        contender.rungs_run += 1
        contender.steps_done += trainer.state.global_step
        contender.optimizer_state = copy.deepcopy(trainer.optimizer.state_dict())
        contender.step_seconds = (time.perf_counter() - began) / ran
        return self.correct_on_holdout(model), ran

    def correct_on_holdout(self, model) -> np.ndarray:
        """0/1 per held-out image (a plain no-grad loop: no Trainer needed to predict a few hundred images)."""
        from torch.utils.data import DataLoader

        model.eval()
        hits = []
        loader = DataLoader(self.splits["validation"], batch_size=self.training_args.per_device_eval_batch_size,
                            collate_fn=self.collator)
        with torch.no_grad():
            for batch in loader:
                logits = model(pixel_values=batch["pixel_values"]).logits
                hits.append((logits.argmax(-1) == batch["labels"]).numpy())
        return np.concatenate(hits).astype(np.int8)

    def estimated_step_seconds(self, plan: CandidatePlan) -> float:
        """Measured on its last rung, else the measurement's cost model."""
        contender = self.contenders.get(plan.name)
        if contender is not None and contender.step_seconds is not None:
            return contender.step_seconds
        return self.m.cost.step_seconds(plan.trainable_share)

    def steps_done(self, name: str) -> int:
        return self.contenders[name].steps_done if name in self.contenders else 0

    def predict_state(self, state: dict):
        model = copy.deepcopy(next(iter(self.contenders.values())).model)
        model.load_state_dict(state)
        return self.correct_on_holdout(model), model


__all__ = ["Contender", "RaceTrainer", "holdout_split"]
