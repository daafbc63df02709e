"""The linear-probe job behind `recipes/linear_probe.py`: data -> frozen backbone -> cached features -> probes -> folder."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..arguments import DataArguments, ModelArguments
from ..backbones import adapter_for
from ..errors import TransferError
from ..hub import run_summary, write_model_card
from ..record import RESULTS_FILE, DataSummary, RunRecord
from ..features import (
    EXTRACTION_BATCH,
    POOLINGS,
    FeatureCache,
    ProcessorImages,
    compute_features,
    describe_cache_use,
    parse_layers,
    transform_fingerprint,
)
from ..probes import (
    EXPORTABLE_PROBES,
    PROBES,
    ProbeConfig,
    evaluate_probe,
    export_probe,
    export_processor,
    probe_layers,
    resolve_probes,
)
from ..runtime import configure_cpu_threads, say
from ..saving import mark_default_output_dir, prepare_output_dir, resolve_output_dir, staged_output, write_json
from .common import prepare


@dataclass
class ProbeArguments:
    UNREAD_FLAGS: ClassVar[dict[str, str]] = {
        "augmentation": "features always go through the eval transform (cached features must not depend on chance)"}

    layers: str = field(
        default="auto",
        metadata={"help": "Where to read features, comma-separated candidates: pooled (bottleneck), depth indices, "
                          "depths joined with + into one concatenated feature (e.g. 3+7+pooled), all (every depth "
                          "group + pooled), concat (the auto depths + pooled, concatenated), auto (depths at 1/4, 1/2, "
                          "3/4 + pooled + their concatenation). E.g. '7,pooled,3+7+pooled'."},
    )
    pooling: str = field(
        default="avg",
        metadata={"help": "Global pooling of depth features: avg, or avgmax (average and max side by side, twice the "
                          "width). The pooled bottleneck keeps the model's own pooling."},
    )
    probe: str = field(
        default="auto",
        metadata={"help": f"{'|'.join(PROBES)}|all|auto or a comma list. auto: logreg (torch_linear above 50k images), "
                          "plus rbf_svm and knn up to 2k images. mlp: one hidden layer. Every probe exports."},
    )
    cv_folds: int = field(default=3, metadata={"help": "Stratified folds for choosing C / k on the training split."})
    class_weighting: str = field(
        default="none",
        metadata={"help": "none, or balanced: every class weighted by n / (classes * n_class) in the probe's loss "
                          "(k-NN has no class weights)."},
    )
    select_by: str = field(
        default="accuracy",
        metadata={"help": "The CV metric that picks each probe's C / k and the exported probe: accuracy or macro_f1 "
                          "(better for imbalanced classes)."},
    )
    export: str = field(
        default="auto",
        metadata={"help": "Which probe becomes the saved model: auto (the best probe by CV), none, or a probe's name "
                          f"({', '.join(EXPORTABLE_PROBES)}; its best layer). Kernel probes (rbf_svm, knn) export with "
                          "their support rows, refused above 200 MB (auto then takes the next best and says so)."},
    )
    output_dir: str | None = field(default=None, metadata={"help": "Default: outputs/linear_probe-<model>-<dataset>."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a previous run in --output_dir."})
    feature_cache_dir: str | None = field(
        default=None, metadata={"help": "Feature cache (default $HF_TRANSFER_CACHE or ~/.cache/hf_transfer/features)."}
    )
    no_feature_cache: bool = field(default=False, metadata={"help": "Always recompute features; write no cache."})
    batch_size: int = field(default=EXTRACTION_BATCH, metadata={
        "help": f"Images per forward pass during feature extraction ({EXTRACTION_BATCH}: cheaper per image on CPU than "
                "larger batches, measured; the features do not depend on it)."})
    seed: int = field(default=42, metadata={"help": "Seed for the validation split and the CV folds."})

    def __post_init__(self):
        mark_default_output_dir(self)


def probe_argument_types() -> tuple:
    """The dataclasses `recipes/linear_probe.py` and `hf-transfer probe` parse, in order."""
    return (ModelArguments, DataArguments, ProbeArguments)


def _choose_export(report, export: str):
    """The probe to export: the CV-best (auto) or the named probe's best layer. ``auto`` passes over a kernel probe
    too large to export, and says so; a named one that is too large is refused by export_probe, with its size."""
    if export == "none":
        return None
    if export == "auto":
        best = report.best()
        if best is not None and not best.exportable:
            fallback = report.best(exportable_only=True)
            say(f"note: {best.export_problem()}; exporting the next best by CV"
                + (f", {fallback.probe} on {fallback.layer.name}" if fallback else " (none)"))
            return fallback
        return best
    matching = [r for r in report.results if r.probe == export]
    if not matching:
        raise TransferError(f"--export {export} names a probe that was not run; add it to --probe or use --export auto")
    return max(matching, key=lambda r: r.cv_score)


def check_pixels(source, split, count: int = 16):
    """The first ``count`` images of a split as the model sees them: export checks its logits on these."""
    return next(iter(source(split.select(range(min(count, len(split)))), count)))[0]


def run_linear_probe(model_args: ModelArguments, data_args: DataArguments, probe_args: ProbeArguments) -> dict:
    """Probe the requested depths, write all_results.json, the per-depth table and plot, and the exported model."""
    import numpy as np
    import torch

    start = time.perf_counter()
    configure_cpu_threads()
    torch.manual_seed(probe_args.seed)
    np.random.seed(probe_args.seed)
    if probe_args.export not in ("auto", "none", *PROBES):
        raise TransferError(f"--export {probe_args.export!r} is not understood; use auto, none or one of "
                            f"{', '.join(EXPORTABLE_PROBES)}")
    if probe_args.pooling not in POOLINGS:  # before the data and the backbone load
        parse_layers("pooled", None, probe_args.pooling)
    probe_config = ProbeConfig(cv_folds=probe_args.cv_folds, seed=probe_args.seed,
                               class_weight=probe_args.class_weighting, select_by=probe_args.select_by)
    resolve_output_dir(probe_args, "linear_probe", model_args, data_args)
    prepare_output_dir(probe_args.output_dir, overwrite=probe_args.overwrite_output_dir, resumable=False)
    # Features always use the eval transform: augmentation would make cached features depend on chance.
    data_args = dataclasses.replace(data_args, augmentation="none")
    data, model, splits, image_size = prepare(model_args, data_args, probe_args, "linear_probe")
    adapter = adapter_for(model)
    layer_map = adapter.layer_map()
    layers = parse_layers(probe_args.layers, layer_map, probe_args.pooling)
    probes = resolve_probes(probe_args.probe, len(splits["train"]))
    say(f"{model_args.model_name_or_path} on {data.source}: {len(splits['train'])} train / {len(splits['validation'])} "
        f"validation images, {len(data.labels)} classes, {image_size} px; layers: {', '.join(l.name for l in layers)}; "
        f"probes: {', '.join(probes)}")
    for note in data.notes:
        say(note)

    # The pixels come from the processor the exported folder carries: pipeline() then feeds the exported model the
    # very pixels the probe was fitted and scored on, image by image.
    processor = export_processor(adapter, image_size)
    source = ProcessorImages(processor, data.image_column, data.label_column)
    transform_key = transform_fingerprint(processor.to_json_string(), None, image_size)
    cache = FeatureCache(probe_args.feature_cache_dir, enabled=not probe_args.no_feature_cache)
    feature_set = compute_features(model, splits, layers, layer_map=layer_map, cache=cache, transform_key=transform_key,
                                   image_size=image_size, batch_size=probe_args.batch_size, source=source,
                                   log=say)
    say(describe_cache_use(feature_set, cache) + f" [{feature_set.seconds:.1f}s]")

    probe_start = time.perf_counter()
    report = probe_layers(feature_set, probes, probe_config, eval_split="validation", log=say,
                          score_cache=cache if cache.enabled else None, label_names=data.labels)
    probe_seconds = time.perf_counter() - probe_start
    say(f"per-layer results (C / k chosen by cross-validated {probe_config.select_by} on train):\n" + report.table())
    best = report.best()
    chosen = _choose_export(report, probe_args.export)
    if "test" in splits and chosen is not None:
        evaluate_probe(chosen, feature_set.features["test"][chosen.layer.key], feature_set.labels["test"], prefix="test",
                       label_names=data.labels)
    shown = chosen or best
    recall_text = report.recall_table(shown) if shown is not None else ""
    if recall_text:
        say(recall_text)
    better = report.better_non_exportable()

    shown_metrics = (chosen or best).eval_metrics
    summary = run_summary(model_args.model_name_or_path, data.source, image_size, splits)  # hub.py: the card's facts
    record = RunRecord(
        kind="probe",
        metrics={"eval_accuracy": shown_metrics.get("validation_accuracy"),
                 "eval_macro_f1": shown_metrics.get("validation_macro_f1")},
        per_class_recall={"eval": (chosen or best).per_class_recall.get("validation"),
                          "test": chosen.per_class_recall.get("test") if chosen else None},
        data=DataSummary(model_name_or_path=summary["model_name_or_path"], dataset=summary["dataset"],
                         image_size=summary["image_size"], skipped_bad_images=len(data.bad_images),
                         samples={k[:-len("_samples")]: v for k, v in summary.items() if k.endswith("_samples")}),
        imbalance={"class_weighting": probe_args.class_weighting},
        export={**report.as_dict(), "pooling": probe_args.pooling,
                "exported": {**chosen.summary(), "head_bytes": chosen.head_bytes} if chosen else None},
        extra={"features_from_cache": feature_set.all_cached, "feature_cache_hits": feature_set.from_cache,
               "backbone_forward_images": feature_set.forward_images,
               "feature_seconds": round(feature_set.seconds, 2), "probe_seconds": round(probe_seconds, 2)},
    )
    with staged_output(probe_args.output_dir) as staging:
        if chosen is not None:
            export_probe(model, chosen, staging, layer_map=layer_map, image_size=image_size,
                         check_pixels=check_pixels(source, splits.get("validation") or splits["train"]))
        if len({r.layer.key for r in report.results}) > 1:
            report.plot(staging / "probe_accuracy_per_depth.png",
                        title=f"{model_args.model_name_or_path} on {data.source}: probe accuracy per depth",
                        highlight=shown)
        (staging / "probe_table.txt").write_text(report.table() + "\n" + (f"\n{recall_text}\n" if recall_text else ""))
        data.write_bad_images(staging)
        record.extra["total_seconds"] = round(time.perf_counter() - start, 2)
        results = record.to_results()  # record.py: all_results.json is the record's serialization
        write_json(staging / RESULTS_FILE, results)
    if chosen is not None:
        write_model_card(probe_args.output_dir)  # hub.py: README.md, read back from the finished folder
    if chosen is not None:
        import json

        written = json.loads((Path(probe_args.output_dir) / "config.json").read_text()).get("model_type")
        note = " (an hf_transfer_probe model: load it with trust_remote_code=True)" if written == "hf_transfer_probe" else ""
        say(f"exported {chosen.probe} on {chosen.layer.name} (head {chosen.head_bytes / 2**20:.2f} MB): validation accuracy "
            f"{chosen.eval_metrics.get('validation_accuracy', float('nan')):.4f}, macro-F1 "
            f"{chosen.eval_metrics.get('validation_macro_f1', float('nan')):.4f} -> {probe_args.output_dir}{note}")
    metric = probe_config.select_by.replace("_", "-")
    if better is not None and chosen is not None:
        say(f"note: {better.probe} on {better.layer.name} scored better by CV ({metric} {better.cv_score:.4f} vs "
            f"{chosen.cv_score:.4f} for the exported {chosen.probe} on {chosen.layer.name}) but is too large to "
            f"export ({better.head_bytes / 2**20:.0f} MB)")
    elif chosen is None and probe_args.export == "auto":
        say("nothing exported: no probe could be exported; see the notes above")
    elif best is not None and best is not chosen:
        say(f"best by CV overall: {best.probe} on {best.layer.name} (cv {metric} {best.cv_score:.4f}; "
            f"{'not exportable, ' if not best.exportable else ''}validation {best.eval_metrics.get('validation_accuracy', float('nan')):.4f})")
    say(f"done in {results['total_seconds']:.1f}s")
    return results
