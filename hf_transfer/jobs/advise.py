"""The advise job behind `recipes/advise.py`, `hf-transfer advise` and `recipes/finetune.py --strategy auto`:
data -> each candidate backbone measured on a subsample -> ranking -> decision -> plan.yaml, advice.md/.json/.png."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..arguments import DataArguments, ModelArguments
from ..errors import TransferError
from ..runtime import configure_cpu_threads, say
from ..saving import mark_default_output_dir, resolve_output_dir
from ..strategies import get_strategy

AUTO = "auto"


@dataclass
class AdviseArguments:
    candidates: str = field(
        default=AUTO,
        metadata={"help": "Backbones to measure and rank, comma-separated; auto: --model_name_or_path when it is not "
                          "the default, else every embedded backbone."},
    )
    time_budget: float | None = field(
        default=None, metadata={"help": "Seconds the planned run may take: a fine-tune's epochs are fitted to it (from "
                                        "measured step times); when not even one epoch fits, a linear probe is planned."}
    )
    max_probe_images: int = field(
        default=1000, metadata={"help": "Stratified subsample of train the probe curve, LogME and BN shift are measured on."}
    )
    layers: str = field(default="all", metadata={"help": "Depths measured (--layers of the probe job); pooled is always added."})
    cv_folds: int = field(default=3, metadata={"help": "Stratified folds of the probe curve's cross-validation."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "The plan's batch size (the step is timed at it)."})
    output_dir: str | None = field(default=None, metadata={"help": "Default: outputs/advise-<model>-<dataset>."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a previous advice in --output_dir."})
    feature_cache_dir: str | None = field(
        default=None, metadata={"help": "Feature cache (default $HF_TRANSFER_CACHE or ~/.cache/hf_transfer/features)."}
    )
    no_feature_cache: bool = field(default=False, metadata={"help": "Always recompute features; write no cache."})
    batch_size: int = field(default=64, metadata={"help": "Images per forward pass while measuring."})
    seed: int = field(default=42, metadata={"help": "Seed for the validation split, the subsample and the CV folds."})

    def __post_init__(self):
        mark_default_output_dir(self)


def advise_argument_types() -> tuple:
    """The dataclasses `recipes/advise.py` and `hf-transfer advise` parse, in order."""
    return (ModelArguments, DataArguments, AdviseArguments)


def resolve_candidates(spec: str, model_args: ModelArguments) -> list[str]:
    from ..backbones import DEFAULT_BACKBONE, EMBEDDED_BACKBONES, EMBEDDED_PREFIX

    if spec.strip() == AUTO:
        if model_args.model_name_or_path != DEFAULT_BACKBONE:
            return [model_args.model_name_or_path]
        return [EMBEDDED_PREFIX + name for name in EMBEDDED_BACKBONES]
    names = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    if not names:
        raise TransferError("--candidates is empty; pass backbone names separated by commas, or auto")
    return names


def measure_backbone(name: str, model_args: ModelArguments, data, settings: AdviseArguments, cache):
    """Load one pretrained backbone and measure it on a stratified subsample of ``data``'s train split."""
    import torch

    from ..advisor import BackboneMeasurement, CostStats, SizeStats
    from ..advisor.measure import measure_similarity, time_train_step
    from ..data import _stratified_subset
    from ..features import POOLED, parse_layers, transform_fingerprint
    from ..plan import default_learning_rate
    from ..transforms import build_transform, with_transforms
    from .common import load_sized_backbone

    start = time.perf_counter()
    image_size = model_args.image_size or data.suggested_image_size
    # As jobs.common.prepare does for a run: the backbone with the data's labels, at the run's input size.
    model, adapter = load_sized_backbone(model_args, data.labels, image_size, pretrained=True, name=name, report=False)
    cfg = adapter.data_config()
    image_size = int(image_size or cfg["input_size"][-1])
    train = data.splits["train"]
    subsample = _stratified_subset(train, data.label_column, settings.max_probe_images, settings.seed, "--max_probe_images")
    prepared = with_transforms({"train": subsample}, data, cfg, image_size=image_size, augmentation="none")["train"]
    transform_key = transform_fingerprint(build_transform(cfg, image_size=image_size), cfg, image_size)
    layer_map = adapter.layer_map()
    layers = parse_layers(f"{settings.layers},{POOLED}", layer_map)
    channels_last = adapter.prefers_channels_last()
    if channels_last:  # as the fine-tune runs it (and ~1.7x faster CNN inference on CPU)
        model = model.to(memory_format=torch.channels_last)
    timing: dict = {}
    similarity, cached = measure_similarity(model, prepared, layers, layer_map, cache=cache, transform_key=transform_key,
                                            image_size=image_size, cv_folds=settings.cv_folds, seed=settings.seed,
                                            batch_size=settings.batch_size, timing=timing, channels_last=channels_last)
    forward_ms = timing["forward_ms_per_image"]
    step_seconds = time_train_step(model, prepared, batch_size=settings.per_device_train_batch_size,
                                   channels_last=channels_last)
    size = SizeStats.from_labels(train[data.label_column], len(data.splits["validation"]), data.labels)
    has_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    measurement = BackboneMeasurement(name, size, similarity, CostStats(forward_ms, step_seconds,
                                      settings.per_device_train_batch_size, image_size),
                                      default_learning_rate(model), has_batchnorm, time.perf_counter() - start, cached)
    say(f"{name}: measured {similarity.images} images at {len(layers)} depths in {measurement.seconds:.1f}s"
        f"{' (features from the cache)' if cached else ''}; best probe {similarity.best.probe_cv:.4f} at "
        f"{similarity.best.name}, pooled {similarity.pooled.probe_cv:.4f}; {forward_ms:.1f} ms/image forward, "
        f"{step_seconds:.2f}s per training step of {settings.per_device_train_batch_size}")
    del model
    return measurement


def measure_candidates(model_args: ModelArguments, data_args: DataArguments, settings: AdviseArguments, candidates: list[str]):
    """-> (data, measurements): the data loaded once, every candidate measured."""
    from ..features import FeatureCache

    if model_args.no_pretrained:
        raise TransferError("the advisor measures pretrained features; --no_pretrained leaves nothing to measure "
                            "(drop it, or use recipes/finetune.py --strategy scratch)")
    if settings.max_probe_images < 20:
        raise TransferError(f"--max_probe_images {settings.max_probe_images} is too few to measure anything; use at least 100")
    data = data_args.load(settings.seed, model_args)
    for note in data.notes:
        say(note)
    cache = FeatureCache(settings.feature_cache_dir, enabled=not settings.no_feature_cache)
    return data, [measure_backbone(name, model_args, data, settings, cache) for name in candidates]


def run_advise(model_args: ModelArguments, data_args: DataArguments, settings: AdviseArguments):
    """Measure, rank, decide; write plan.yaml, advice.md, advice.json and advice.png; print the tables and plan."""
    from ..advisor import ADVICE_FILES, build_advice
    from ..saving import staged_output

    start = time.perf_counter()
    configure_cpu_threads()
    candidates = resolve_candidates(settings.candidates, model_args)
    naming = dataclasses.replace(model_args, model_name_or_path=candidates[0] if len(candidates) == 1 else "candidates")
    resolve_output_dir(settings, "advise", naming, data_args)
    output_dir = Path(settings.output_dir)
    earlier = [name for name in ADVICE_FILES if (output_dir / name).exists()]
    if earlier and not settings.overwrite_output_dir:
        raise TransferError(f"output folder {str(output_dir)!r} holds a previous advice ({', '.join(earlier)}); pass "
                            "--overwrite_output_dir to replace it, or choose another --output_dir")
    if settings.time_budget is not None and settings.time_budget <= 0:
        raise TransferError(f"--time_budget {settings.time_budget:g} must be a positive number of seconds")
    data, measurements = measure_candidates(model_args, data_args, settings, candidates)
    plan_dir = output_dir / "run"
    advice = build_advice(measurements, data_args, data_source=data.source, output_dir=str(plan_dir),
                          time_budget=settings.time_budget, batch_size=settings.per_device_train_batch_size,
                          seed=settings.seed, started=start)
    advice.plan_path_hint = str(output_dir / "plan.yaml")
    with staged_output(output_dir, last=("advice.json",)) as staging:
        advice.write(staging)
    say("\n" + advice.summary())
    say(f"wrote {output_dir}/plan.yaml, advice.md, advice.json, advice.png in {time.perf_counter() - start:.1f}s; run the "
        f"plan with: python {advice.recipe} {output_dir / 'plan.yaml'}")
    return advice


# --------------------------------------------------------------------------------------------- --strategy auto
def resolve_auto_strategy(model_args: ModelArguments, data_args: DataArguments, training_args, transfer_args,
                          started: float):
    """`recipes/finetune.py --strategy auto`: measure the backbone, decide, and fill the run's flags with the plan.

    Returns the `Advice`; its files (advice.json/.md/.png, plan.yaml) are written into the output folder now, so they
    stand beside the model (or the probe) whatever the plan turns out to be. ``started``: `time.perf_counter()` at
    the start of the run (the measurement counts against ``--time_budget``).
    """
    from ..advisor import build_advice
    from ..saving import prepare_output_dir

    if training_args.resume_from_checkpoint:
        raise TransferError("--strategy auto measures again and may choose another plan than the checkpoint's; resume "
                            "with the plan's flags instead (plan.yaml in the output folder) and --resume_from_checkpoint")
    if transfer_args.time_budget is not None and transfer_args.time_budget <= 0:
        raise TransferError(f"--time_budget {transfer_args.time_budget:g} must be a positive number of seconds")
    resolve_output_dir(training_args, "finetune", model_args, data_args)
    prepare_output_dir(training_args.output_dir, overwrite=training_args.overwrite_output_dir)  # refuse before measuring
    configure_cpu_threads()
    settings = AdviseArguments(candidates=model_args.model_name_or_path, time_budget=transfer_args.time_budget,
                               per_device_train_batch_size=training_args.per_device_train_batch_size,
                               seed=training_args.seed, output_dir=training_args.output_dir)
    data, measurements = measure_candidates(model_args, data_args, settings, [model_args.model_name_or_path])
    remaining = None
    if transfer_args.time_budget is not None:
        remaining = transfer_args.time_budget - (time.perf_counter() - started)
    advice = build_advice(measurements, data_args, data_source=data.source, output_dir=training_args.output_dir,
                          time_budget=remaining, batch_size=training_args.per_device_train_batch_size,
                          seed=training_args.seed, started=started)
    if transfer_args.time_budget is not None:
        advice.plan["time_budget"] = float(transfer_args.time_budget)  # the plan file reruns the whole budgeted run
    advice.plan_path_hint = str(Path(training_args.output_dir) / "plan.yaml")
    say("--strategy auto:\n" + advice.summary())
    advice.write(training_args.output_dir)
    if advice.decision.job == "finetune":
        _apply_finetune_plan(advice.decision, data_args, training_args, transfer_args)
    return advice


def _apply_finetune_plan(decision, data_args, training_args, transfer_args) -> None:
    """Set the run's flags to the plan (the flags the plan sets replace any given on the command line)."""
    transfer_args.strategy = decision.strategy
    own_flags = get_strategy(decision.strategy).decision_flags  # partial: freeze, lp_ft: lp_epochs
    transfer_args.freeze = decision.freeze if "freeze" in own_flags else "none"
    transfer_args.lp_epochs = decision.lp_epochs
    transfer_args.layer_decay = decision.layer_decay
    transfer_args.backbone_lr_multiplier = decision.backbone_lr_multiplier
    training_args.learning_rate = decision.learning_rate
    training_args.num_train_epochs = float(decision.num_train_epochs)
    data_args.augmentation = decision.augmentation
    for flag in ("class_weighting", "sampler"):
        if getattr(decision, flag):
            setattr(transfer_args, flag, getattr(decision, flag))
    say(f"--strategy auto -> {decision.strategy}" + "".join(f" --{flag} {getattr(decision, flag)}" for flag in own_flags)
        + f" --learning_rate {decision.learning_rate:g} --backbone_lr_multiplier {decision.backbone_lr_multiplier:g}"
        f" --layer_decay {decision.layer_decay:g} --num_train_epochs {decision.num_train_epochs:g}"
        f" --augmentation {decision.augmentation} (these replace any given on the command line)")


def run_advised_probe(advice, model_args: ModelArguments, data_args: DataArguments, training_args) -> dict:
    """The plan is a linear probe: run the probe job (recipes/linear_probe.py) into the fine-tune's output folder."""
    from .probe import ProbeArguments, run_linear_probe

    decision = advice.decision
    probe_args = ProbeArguments(layers=decision.layers or "pooled", probe="logreg", export="auto",
                                output_dir=training_args.output_dir,
                                overwrite_output_dir=training_args.overwrite_output_dir, seed=training_args.seed)
    if decision.class_weighting:
        if hasattr(probe_args, "class_weighting"):
            probe_args.class_weighting = decision.class_weighting
        else:
            say(f"the plan asks for --class_weighting {decision.class_weighting}, which this version's probe does not "
                "have: probing without it")
    say(f"--strategy auto chose a linear probe on {decision.layers}: running the probe job (as recipes/linear_probe.py "
        f"{training_args.output_dir}/plan.yaml would) into {training_args.output_dir}; no Trainer run")
    results = run_linear_probe(model_args, dataclasses.replace(data_args), probe_args)
    results["strategy"] = "auto -> linear_probe"
    return results


__all__ = ["AdviseArguments", "advise_argument_types", "measure_backbone", "measure_candidates", "resolve_auto_strategy",
           "resolve_candidates", "run_advise", "run_advised_probe"]
