"""The files HF example scripts leave beside a trained model, written from a run's results.

``train_results.json`` / ``eval_results.json`` / ``test_results.json`` and ``trainer_state.json`` (through
Trainer's own `save_metrics` / `save_state`, as ``run_image_classification.py`` does), the training arguments as
``training_args.json`` (readable JSON instead of the ``training_args.bin`` pickle), and two figures for the card:
``training_curves.png`` (from trainer_state.json's log_history) and ``confusion_matrix.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .folder import STATE_FILE, label_names

CURVES_FILE = "training_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
TRAINING_ARGS_FILE = "training_args.json"
SPLITS = ("train", "eval", "test")


def run_summary(model_name_or_path: str, dataset: str, image_size: int, splits) -> dict:
    """What the card needs to describe a run, recorded in all_results.json (``*_samples`` as HF examples name them)."""
    prefix = {"train": "train", "validation": "eval", "test": "test"}
    return {"model_name_or_path": str(model_name_or_path), "dataset": dataset, "image_size": int(image_size),
            **{f"{prefix[name]}_samples": len(split) for name, split in splits.items() if name in prefix}}


def split_metrics(metrics: dict) -> dict[str, dict]:
    """all_results-style metrics -> {"train": {...}, "eval": {...}, "test": {...}}, each with the epoch."""
    epoch = metrics.get("epoch", metrics.get("train_epoch"))
    shared = {"epoch": epoch} if epoch is not None else {}
    parts = {split: {k: v for k, v in metrics.items() if k.startswith(split + "_")} for split in SPLITS}
    return {split: {**shared, **values} for split, values in parts.items() if values}


def save_run_files(trainer, metrics: dict, validation=None) -> None:
    """The files ``run_image_classification.py`` leaves beside the model, plus the card's two figures.

    ``validation``: ``trainer.predict`` output on the validation split (its predictions give the confusion matrix).
    Call on the main process, before all_results.json is written.
    """
    folder = Path(trainer.args.output_dir)
    for split, values in split_metrics(metrics).items():
        trainer.save_metrics(split, values, combined=False)  # combined=True would write all_results.json early
    trainer.save_state()
    write_training_args(trainer.args, folder)
    plot_training_curves(folder / STATE_FILE, folder / CURVES_FILE)
    if validation is not None and validation.label_ids is not None:
        logits = validation.predictions[0] if isinstance(validation.predictions, tuple) else validation.predictions
        labels = label_names(trainer.model.config.to_dict())
        matrix = confusion_matrix(validation.label_ids, logits.argmax(-1), len(labels))
        plot_confusion_matrix(matrix, labels, folder / CONFUSION_FILE)


def write_training_args(args, folder: Path) -> Path:
    """``training_args.json``: `TrainingArguments.to_dict()` (tokens redacted) as JSON, not a pickle to unpickle."""
    path = Path(folder) / TRAINING_ARGS_FILE
    path.write_text(args.to_json_string())
    return path


def confusion_matrix(references, predictions, num_classes: int):
    """counts[true, predicted] with numpy (no scikit-learn import on the fine-tuning path)."""
    import numpy as np

    references, predictions = np.asarray(references, dtype=int), np.asarray(predictions, dtype=int)
    counts = np.bincount(references * num_classes + predictions, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _series(history: list[dict], key: str) -> tuple[list, list]:
    points = [(entry["step"], entry[key]) for entry in history if key in entry and "step" in entry]
    return ([s for s, _ in points], [v for _, v in points])


def plot_training_curves(state_file: Path, path: Path) -> Path | None:
    """Loss, eval accuracy / macro-F1 and learning rate against the step, from trainer_state.json's log_history."""
    from matplotlib.figure import Figure  # not pyplot: no GUI backend, no global state

    history = json.loads(Path(state_file).read_text()).get("log_history", [])
    panels = [
        ("loss", [("loss", "train loss"), ("eval_loss", "eval loss")]),
        ("eval metrics", [("eval_accuracy", "accuracy"), ("eval_macro_f1", "macro-F1")]),
        ("learning rate (first group)", [("learning_rate", "head lr")]),
    ]
    if not any(_series(history, key)[0] for _, keys in panels for key, _ in keys):
        return None
    fig = Figure(figsize=(12, 3.4))
    for ax, (title, keys) in zip(fig.subplots(1, 3), panels):
        drawn = False
        for key, label in keys:
            steps, values = _series(history, key)
            if steps:
                ax.plot(steps, values, marker="o", markersize=3, label=label)
                drawn = True
        if drawn:
            ax.legend(fontsize=8)
        else:  # e.g. fewer steps than --logging_steps: say so instead of an empty frame
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def plot_confusion_matrix(matrix, labels: list[str], path: Path) -> Path:
    """Rows: true class, columns: predicted; counts written in the cells when the classes are few."""
    import numpy as np
    from matplotlib.figure import Figure

    n = len(labels)
    size = min(12.0, max(4.0, 0.45 * n + 2.5))
    fig = Figure(figsize=(size, size * 0.9))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if n <= 40:
        ax.set_xticks(range(n), [str(l)[:14] for l in labels], rotation=90 if n > 6 else 0, fontsize=8)
        ax.set_yticks(range(n), [str(l)[:14] for l in labels], fontsize=8)
    if n <= 20:
        threshold = matrix.max() / 2 if matrix.size else 0
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, int(count), ha="center", va="center", fontsize=7,
                    color="white" if count > threshold else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"validation confusion matrix ({int(matrix.sum())} images)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)
