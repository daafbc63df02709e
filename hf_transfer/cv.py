"""Cross-validation: stratified k folds of the training split, per-fold scores, mean ± std, one setting chosen.

Folds come from the TRAIN split only: scikit-learn's `StratifiedKFold` (shuffled with the seed), so every class keeps
its share in each fold, the validation folds are disjoint and together cover the train split exactly once. The
validation split (given by the dataset, or the stratified share the loader held out) is never part of a fold: it
stays an untouched holdout, which only a final refit of the chosen setting is scored on.

Training itself is not here: `cross_validate` takes a ``run_fold(fold_data, setting, fold)`` callable (the jobs
pass one that runs the fine-tune or probe job on the fold), so this module stays below the jobs.
Standard deviations are sample standard deviations over the folds (ddof=1).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .arguments import DataArguments
from .errors import TransferError
from .record import RunRecord
from .runtime import progress, quieter, say

METRICS = ("accuracy", "macro_f1")
METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1"}
RESULTS_FILE, TABLE_FILE, PLOT_FILE = "cv_results.json", "cv_results.md", "cv_results.png"
HOLDOUT_NOTE = ("folds drawn from the train split only; the validation split is an untouched holdout "
                "(scored only by --refit)")


# ---------------------------------------------------------------------------------------------- folds
def stratified_folds(label_ids, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(train rows, validation rows)] for each of ``folds`` stratified folds, shuffled with ``seed``."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(label_ids)
    if folds < 2:
        raise TransferError(f"--folds {folds}: cross-validation needs at least 2 folds")
    counts = np.unique(labels, return_counts=True)[1] if labels.size else np.array([0])
    if counts.min() < folds:
        raise TransferError(f"--folds {folds} needs at least {folds} training images in every class (the rarest has "
                            f"{counts.min()}); lower --folds or add images")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(np.sort(train), np.sort(held)) for train, held in splitter.split(np.zeros(len(labels)), labels)]


def fold_data(data, train_rows, validation_rows, store=None):
    """The `ImageClassificationData` of one fold: train rows of the train split, validation rows of it, no test."""
    from datasets import DatasetDict

    from .fastdata import SubsetImageStore

    train = data.splits["train"]
    store = (store or SubsetImageStore(train, {})).with_rows({"train": train_rows, "validation": validation_rows})
    splits = DatasetDict({"train": train.select(train_rows), "validation": train.select(validation_rows)})
    return dataclasses.replace(data, splits=splits, notes=[], bad_images=[], check=None, subset_store=store)


@dataclass
class PreloadedDataArguments(DataArguments):
    """`DataArguments` whose `load` returns data already loaded and split (a fold): the jobs run on it unchanged."""

    preloaded: Any = field(default=None, repr=False)

    @classmethod
    def of(cls, data_args: DataArguments, data) -> "PreloadedDataArguments":
        values = {f.name: getattr(data_args, f.name) for f in dataclasses.fields(DataArguments) if f.init}
        return cls(**values, preloaded=data)

    def load(self, seed: int, model_args=None, allow_streaming: bool = False):  # a fold is in memory: never streamed
        return self.preloaded


# ---------------------------------------------------------------------------------------------- search
def parse_search(specs: list[str] | tuple[str, ...]) -> list[dict[str, str]]:
    """``["learning_rate=1e-3,3e-3", "freeze=depth:2,depth:4"]`` -> every combination as {flag: value} (one {} when
    nothing is searched)."""
    axes = []
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip().lstrip("-")
        options = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name or not options:
            raise TransferError(f"--search {spec!r} is not understood; write name=value1,value2 (e.g. "
                                "learning_rate=1e-3,3e-3 or freeze=depth:2,depth:4)")
        if len(set(options)) != len(options):
            raise TransferError(f"--search {spec!r} lists a value twice; list each value once")
        if name in (axis for axis, _ in axes):
            raise TransferError(f"--search names {name} twice; give all its values in one name=v1,v2")
        axes.append((name, options))
    return [dict(zip([a for a, _ in axes], combo)) for combo in itertools.product(*[o for _, o in axes])] or [{}]


def setting_name(setting: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.items()) or "as given"


# ---------------------------------------------------------------------------------------------- results
@dataclass
class FoldResult:
    fold: int  # 0-based
    train_samples: int
    validation_samples: int
    metrics: dict[str, float]  # accuracy, macro_f1 and whatever else the job reported for the fold's validation rows
    seconds: float


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


@dataclass
class SettingResult:
    """One setting (flag values; {} when nothing is searched) over all folds."""

    setting: dict[str, str]
    folds: list[FoldResult] = field(default_factory=list)

    @property
    def name(self) -> str:
        return setting_name(self.setting)

    @property
    def per_fold(self) -> dict[str, list[float]]:
        return {m: [f.metrics.get(m, float("nan")) for f in self.folds] for m in METRICS}

    @property
    def mean(self) -> dict[str, float]:
        return {m: _mean_std(v)[0] for m, v in self.per_fold.items()}

    @property
    def std(self) -> dict[str, float]:
        return {m: _mean_std(v)[1] for m, v in self.per_fold.items()}

    @property
    def class_recall(self) -> dict[str, float]:
        """Mean recall of each class over the folds (where the job reported it): which class the setting misses."""
        labels = dict.fromkeys(k for f in self.folds for k in f.metrics if k.startswith("recall/"))
        return {k.split("/", 1)[1]: _mean_std([f.metrics.get(k, float("nan")) for f in self.folds])[0] for k in labels}

    def to_dict(self) -> dict:
        return {"setting": self.setting, "name": self.name, "mean": self.mean, "std": self.std,
                "per_fold": self.per_fold, "class_recall_mean": self.class_recall,
                "folds": [dataclasses.asdict(f) for f in self.folds]}


@dataclass
class CVResult:
    """Every setting's folds; `chosen` is the best mean ``choose_by`` (ties: higher mean accuracy, then the first
    listed). `mean`, `std` and `per_fold` are the chosen setting's."""

    settings: list[SettingResult]
    folds: int
    seed: int
    choose_by: str = "macro_f1"
    recipe: str = "finetune"
    refit: dict | None = None  # the chosen setting trained on the whole train split, scored on the holdout
    seconds: float = 0.0

    def choose(self, metric: str | None = None) -> SettingResult:
        metric = metric or self.choose_by
        if metric not in METRICS:
            raise TransferError(f"cannot choose by {metric!r}; use one of {', '.join(METRICS)}")

        def score(item):
            index, result = item
            mean = result.mean
            return (_or_low(mean[metric]), _or_low(mean["accuracy"]), -index)

        return max(enumerate(self.settings), key=score)[1]

    @property
    def chosen(self) -> SettingResult:
        return self.choose()

    @property
    def mean(self) -> dict[str, float]:
        return self.chosen.mean

    @property
    def std(self) -> dict[str, float]:
        return self.chosen.std

    @property
    def per_fold(self) -> dict[str, list[float]]:
        return self.chosen.per_fold

    def summary(self) -> dict:
        """The short form (all_results.json): the chosen setting's mean ± std."""
        chosen = self.chosen
        out = {"recipe": self.recipe, "folds": self.folds, "seed": self.seed, "choose_by": self.choose_by,
               "chosen_setting": chosen.setting, "settings_tried": len(self.settings),
               "total_seconds": round(self.seconds, 2)}
        for metric in METRICS:
            out[f"cv_{metric}_mean"], out[f"cv_{metric}_std"] = chosen.mean[metric], chosen.std[metric]
        if self.refit:
            out.update({f"refit_{k}": v for k, v in self.refit.items() if k in ("eval_accuracy", "eval_macro_f1")})
        return out

    def to_dict(self) -> dict:
        return {**self.summary(), "holdout": HOLDOUT_NOTE, "std": "sample standard deviation over folds (ddof=1)",
                "chosen": self.chosen.to_dict(), "settings": [s.to_dict() for s in self.settings], "refit": self.refit}

    def table(self) -> str:
        """Markdown: one table per metric, a row per setting, a column per fold, then mean ± std."""
        chosen = self.chosen
        lines = [f"Cross-validation of `{self.recipe}`: {self.folds} stratified folds of the train split (seed "
                 f"{self.seed}); chosen by mean {METRIC_NAMES[self.choose_by]}.", ""]
        for metric in METRICS:
            lines += [f"| {METRIC_NAMES[metric]} | " + " | ".join(f"fold {i + 1}" for i in range(self.folds))
                      + " | mean ± std |", "|---|" + "---:|" * (self.folds + 1)]
            for result in self.settings:
                mark = " (chosen)" if result is chosen and len(self.settings) > 1 else ""
                cells = [_num(v) for v in result.per_fold[metric]]
                lines.append(f"| {result.name}{mark} | " + " | ".join(cells)
                             + f" | {_num(result.mean[metric])} ± {_num(result.std[metric])} |")
            lines.append("")
        recall = chosen.class_recall
        if recall:
            lowest = sorted(recall, key=recall.get)[:5]
            lines += [f"Lowest mean class recall ({chosen.name}): " + ", ".join(f"{c} {_num(recall[c])}" for c in lowest)
                      + ".", ""]
        if self.refit:
            lines += [f"Refit of {chosen.name} on the whole train split, holdout accuracy "
                      f"{_num(self.refit.get('eval_accuracy'))}, macro-F1 {_num(self.refit.get('eval_macro_f1'))}.", ""]
        return "\n".join(lines)

    def plot(self, path) -> Path:
        """Each fold's score as a dot and mean ± std as a bar, per setting, for accuracy and macro-F1."""
        from matplotlib.figure import Figure  # not pyplot: no GUI backend, no global state

        chosen = self.chosen
        keys = [tuple(s.setting) for s in self.settings]
        same_flags = len(set(keys)) == 1 and keys[0]
        names = [(" / ".join(s.setting.values()) if same_flags else s.name.replace(" ", "\n"))
                 + (" *" if s is chosen and len(self.settings) > 1 else "") for s in self.settings]
        fig = Figure(figsize=(max(6.0, 1.4 * len(names) + 3), 3.6))
        for ax, metric in zip(fig.subplots(1, 2), METRICS):
            for x, result in enumerate(self.settings):
                values = result.per_fold[metric]
                ax.scatter([x] * len(values), values, s=18, color="tab:blue", alpha=0.7, zorder=3)
                ax.errorbar([x], [result.mean[metric]], yerr=[result.std[metric]], fmt="s", color="tab:red",
                            capsize=6, zorder=4)
            ax.set_xticks(range(len(names)), names, rotation=20 if len(names) > 3 else 0, fontsize=8)
            ax.set_xlim(-0.6, len(names) - 0.4)
            if same_flags:
                ax.set_xlabel(" / ".join(keys[0]) + (" (* chosen)" if len(names) > 1 else ""), fontsize=8)
            ax.set_title(f"{METRIC_NAMES[metric]} per fold (dots), mean ± std (red)", fontsize=9)
            ax.grid(alpha=0.3, axis="y")
        fig.suptitle(f"{self.recipe}: {self.folds}-fold cross-validation on the train split", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        return Path(path)

    def write(self, folder) -> None:
        """cv_results.json, cv_results.md and cv_results.png into ``folder``."""
        from .saving import write_json

        folder = Path(folder)
        write_json(folder / RESULTS_FILE, self.to_dict())
        (folder / TABLE_FILE).write_text(self.table())
        self.plot(folder / PLOT_FILE)

    @classmethod
    def read(cls, folder) -> "CVResult":
        """A finished run's cv_results.json back as a `CVResult`."""
        payload = json.loads((Path(folder) / RESULTS_FILE).read_text())
        settings = [SettingResult(s["setting"], [FoldResult(**f) for f in s["folds"]]) for s in payload["settings"]]
        return cls(settings, payload["folds"], payload["seed"], payload["choose_by"], payload["recipe"],
                   payload.get("refit"), payload.get("total_seconds", 0.0))


def _or_low(value: float) -> float:
    return -math.inf if value is None or math.isnan(value) else value


def _num(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def fold_metrics(results: dict) -> dict[str, float]:
    """A job's results on the fold's validation rows (``eval_*``) without the prefix: accuracy, macro_f1, and
    ``recall/<label>`` (read through the `RunRecord`, whichever layout the job wrote)."""
    run = RunRecord.from_results(results)
    metrics = {key[len("eval_"):]: float(value) for key, value in run.metrics.items()
               if key.startswith("eval_") and isinstance(value, (int, float))}
    metrics.update({f"recall/{label}": float(value) for label, value in run.recall("eval").items()})
    if isinstance(run.metrics.get("train_runtime"), (int, float)):
        metrics["train_runtime"] = float(run.metrics["train_runtime"])  # where a fold's time went
    return metrics


# ---------------------------------------------------------------------------------------------- the loop
def cross_validate(data, run_fold: Callable[[Any, dict[str, str], int], dict], *, folds: int = 5, seed: int = 42,
                   settings: list[dict[str, str]] | None = None, choose_by: str = "macro_f1",
                   recipe: str = "finetune") -> CVResult:
    """Run ``run_fold(fold_data, setting, fold)`` for every setting and fold; -> `CVResult`.

    ``data``: an `ImageClassificationData` (its train split is folded). ``run_fold`` trains on the fold's train
    split, scores its validation split and returns results with ``eval_accuracy`` and ``eval_macro_f1`` (what the
    fine-tune and probe jobs return). All settings share the same folds, so their scores compare fold by fold.
    """
    if choose_by not in METRICS:
        raise TransferError(f"--choose_by {choose_by!r} is unknown; use one of {', '.join(METRICS)}")
    start = time.perf_counter()
    settings = settings or [{}]
    label_column = data.label_column
    train = data.splits["train"]
    splits = stratified_folds(train[label_column], folds, seed)
    from .fastdata import SubsetImageStore

    store = SubsetImageStore(train, {})  # the train split is decoded once for all folds and settings
    results = [SettingResult(dict(setting)) for setting in settings]
    bar = progress(total=len(results) * folds, desc="cross-validation folds", unit="fold")
    for result in results:
        for index, (train_rows, held_rows) in enumerate(splits):
            say(f"cross-validation: {result.name}, fold {index + 1}/{folds} ({len(train_rows)} train / {len(held_rows)} "
                "validation images)")
            fold_start = time.perf_counter()
            with quieter(logging.WARNING):  # a fold's own run would print its plan and a folder about to be deleted
                metrics = fold_metrics(run_fold(fold_data(data, train_rows, held_rows, store), result.setting, index))
            bar.update()
            if not all(m in metrics for m in METRICS):
                raise TransferError(f"the {recipe} run of fold {index + 1} reported no eval accuracy / macro-F1")
            result.folds.append(FoldResult(index, len(train_rows), len(held_rows), metrics,
                                            round(time.perf_counter() - fold_start, 2)))
            say(f"cross-validation: {result.name}, fold {index + 1}/{folds}: accuracy {metrics['accuracy']:.4f}, "
                f"macro-F1 {metrics['macro_f1']:.4f}")
    bar.close()
    outcome = CVResult(results, folds, seed, choose_by, recipe)
    outcome.seconds = time.perf_counter() - start
    return outcome
