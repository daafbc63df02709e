"""The advise job behind `recipes/advise.py`, `hf-transfer advise` and `recipes/finetune.py --strategy auto`:
data -> each candidate backbone measured on a subsample -> ranking -> decision -> plan.yaml, advice.md/.json/.png."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import ClassVar
from pathlib import Path

from ..arguments import DataArguments, ModelArguments
from ..errors import TransferError
from ..runtime import configure_cpu_threads, progress, say
from ..saving import mark_default_output_dir, resolve_output_dir
from ..strategies import get_strategy

AUTO = "auto"


@dataclass
class AdviseArguments:
    UNREAD_FLAGS: ClassVar[dict[str, str]] = {
        "augmentation": "the advisor chooses the augmentation and writes it into plan.yaml",
        "no_pretrained": "the advisor measures pretrained features (to train from scratch: hf-transfer finetune --strategy scratch)"}

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
    stages = progress(total=3, desc=f"advisor: {name}", unit="stage")  # load, measure per depth, time a step
    stages.set_postfix_str("loading the backbone")
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
    stages.update()
    stages.set_postfix_str("probing every depth")
    similarity, cached = measure_similarity(model, prepared, layers, layer_map, cache=cache, transform_key=transform_key,
                                            image_size=image_size, cv_folds=settings.cv_folds, seed=settings.seed,
                                            batch_size=settings.batch_size, timing=timing, channels_last=channels_last)
    forward_ms = timing["forward_ms_per_image"]
    stages.update()
    stages.set_postfix_str("timing a training step")
    step_seconds = time_train_step(model, prepared, batch_size=settings.per_device_train_batch_size,
                                   channels_last=channels_last)
    stages.update()
    stages.close()
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
                            "(drop it, or use hf-transfer finetune --strategy scratch)")
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
        f"plan with: {advice.recipe} {output_dir / 'plan.yaml'}")
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
    if transfer_args.time_budget is not None:  # the measurement is part of the budget: size it to the budget
        from ..advisor import Thresholds

        per_second = Thresholds().measure_images_per_budget_second
        settings.max_probe_images = int(min(settings.max_probe_images, max(100, per_second * transfer_args.time_budget)))
    data, measurements = measure_candidates(model_args, data_args, settings, [model_args.model_name_or_path])
    measured_at = time.perf_counter()
    remaining = None
    if transfer_args.time_budget is not None:
        remaining = transfer_args.time_budget - (measured_at - started)
    advice = build_advice(measurements, data_args, data_source=data.source, output_dir=training_args.output_dir,
                          time_budget=remaining, batch_size=training_args.per_device_train_batch_size,
                          seed=training_args.seed, started=started)
    # The measurements only propose; the race decides on the user's own training split (jobs/race.py).
    from .race import run_race

    deadline = started + transfer_args.time_budget if transfer_args.time_budget is not None else None
    from ..features import FeatureCache

    run_steps = None  # without a budget, a fine-tune winner's real run is known in advance: its rungs lead into it
    if deadline is None:
        run_steps = math.ceil(_unbudgeted_epochs(advice.decision, advice.thresholds)
                              * _steps_per_epoch(measurements[0], training_args))
    outcome = run_race(measurements[0], data, model_args, training_args, image_size=measurements[0].cost.image_size,
                       deadline=deadline, output_dir=training_args.output_dir, thresholds=advice.thresholds,
                       probe_images=settings.max_probe_images, cache=FeatureCache(settings.feature_cache_dir),
                       run_steps=run_steps)
    _adopt_race_winner(advice, outcome, measurements[0], data_args, training_args, deadline)
    if transfer_args.time_budget is not None:
        advice.plan["time_budget"] = float(transfer_args.time_budget)  # the plan file reruns the whole budgeted run
        advice.budget = {"budget_seconds": float(transfer_args.time_budget),
                         "measurement_seconds": round(measured_at - started, 1), "race_seconds": outcome.record.seconds,
                         "left_for_the_run_seconds": round(deadline - time.perf_counter(), 1),
                         "used": "all_results.json: time_budget_used_seconds (the whole run, measurement and race "
                                 "included)"}
    advice.plan_path_hint = str(Path(training_args.output_dir) / "plan.yaml")
    advice.deadline, advice.started = deadline, started
    say("--strategy auto:\n" + advice.summary())
    advice.write(training_args.output_dir)
    if advice.decision.job == "finetune":
        _apply_finetune_plan(advice.decision, data_args, training_args, transfer_args)
        if outcome.start_folder:  # the winner continues from its race weights, AdamW moments and schedule
            say(f"--strategy auto: the run continues from the race winner's weights ({outcome.start_folder})"
                + (" and optimizer state" if outcome.optimizer_state is not None else ""))
            model_args.model_name_or_path = outcome.start_folder
            advice.start_optimizer = outcome.optimizer_state
            advice.start_schedule = outcome.record.winner_schedule
    return advice


def _adopt_race_winner(advice, outcome, measurement, data_args, training_args, deadline: float | None) -> None:
    """The race's winner becomes the decision and the plan (the prior decision's reasons stay, the verdict added)."""
    from ..advisor import plan_config

    d, w, t = advice.decision, outcome.winner, advice.thresholds
    advice.race = outcome.record.as_dict()
    d.reasons.append(f"race: {outcome.record.verdict['reason']}")
    d.strategy, d.freeze, d.layer_decay, d.lp_epochs = w.strategy, w.freeze, w.layer_decay, w.lp_epochs
    d.backbone_lr_multiplier = w.backbone_lr_multiplier
    if w.job == "probe":
        d.job, d.layers, d.learning_rate, d.num_train_epochs, d.augmentation = "probe", w.layers, None, None, "none"
    else:
        d.job, d.layers, d.learning_rate = "finetune", None, measurement.default_learning_rate
        epochs = _unbudgeted_epochs(d, t)
        if deadline is not None:  # the first estimate; the run re-plans it from its own measured steps (budget.py)
            left = deadline - time.perf_counter() - t.in_process_overhead_seconds
            epoch_seconds = measurement.cost.step_seconds(w.trainable_share) * _steps_per_epoch(measurement, training_args)
            epochs = max(1.0, round(left / max(1e-6, epoch_seconds), 2))
        d.num_train_epochs = epochs
        d.augmentation = "gentle" if epochs >= t.augmentation_from_epochs else "none"
    advice.plan = plan_config(d, backbone=measurement.backbone, image_size=measurement.cost.image_size,
                              data_args=data_args, output_dir=training_args.output_dir,
                              batch_size=training_args.per_device_train_batch_size,
                              time_budget=None, seed=training_args.seed)


def _unbudgeted_epochs(decision, t) -> float:
    """A fine-tune winner's epochs without a time budget: the rules' (a probe decision has none: the least a
    fine-tune is given)."""
    return float(decision.num_train_epochs or t.min_epochs)


def _steps_per_epoch(measurement, training_args) -> int:
    return math.ceil(measurement.size.n_train / max(1, training_args.per_device_train_batch_size))


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


def continue_from_race(advice, trainer) -> None:
    """The real run of a fine-tune winner keeps the race's AdamW moments (loaded once its optimizer exists) and goes
    on along its schedule: no second warm-up, the cosine from where the race left it to the run's re-planned end."""
    if advice.start_optimizer is not None:
        from ..continuation import RestoreOptimizer

        trainer.add_callback(RestoreOptimizer(advice.start_optimizer, "--strategy auto"))
    if advice.start_schedule is not None:
        from ..continuation import ContinueSchedule

        trainer.add_callback(ContinueSchedule(offset=advice.start_schedule["offset"], what="--strategy auto",
                                              warmup_steps=advice.start_schedule["warmup_steps"]))


def record_final_run(advice, results: dict, output_dir) -> None:
    """advice.json again once the chosen plan has run: planned against used seconds, and the winner's final scores
    (the race's held-out estimate beside them)."""
    from ..saving import write_json

    if advice.budget is not None:
        advice.budget["used_seconds"] = results.get("time_budget_used_seconds")
        for key in ("time_budget_initial_steps", "time_budget_planned_steps", "stopped_by_time_budget"):
            if key in results:
                advice.budget[key.replace("time_budget_", "")] = results[key]
    verdict = (advice.race or {}).get("verdict") or {}
    advice.final_run = {"plan": verdict.get("winner"), "strategy": results.get("strategy", advice.decision.strategy),
                        **{k: results[k] for k in ("eval_accuracy", "eval_macro_f1", "test_accuracy",
                                                   "test_macro_f1", "total_seconds") if k in results}}
    write_json(Path(output_dir) / "advice.json", advice.as_dict())


def run_advised_probe(advice, model_args: ModelArguments, data_args: DataArguments, training_args) -> dict:
    """The plan is a linear probe: run the probe job (recipes/linear_probe.py) into the fine-tune's output folder."""
    from .probe import ProbeArguments, run_linear_probe

    decision = advice.decision
    if advice.deadline is not None:  # the probe's forward pass over train must fit what the race left
        m = advice.chosen
        # what the race left this run beyond its forward pass (a race under a deadline always records it)
        left = advice.deadline - time.perf_counter() - advice.race["final_run_overhead_seconds"]
        fits = int(left * 1000 / max(1e-3, m.cost.forward_ms_per_image)) - 2 * m.size.n_validation
        if fits < m.size.n_train:
            # the measurement's own subsample size (and seed) at least: its features are in the cache already
            n = max(min(m.size.n_train, m.similarity.images), fits)
            say(f"--time_budget: {max(0, int(left))}s left fit the probe's forward pass over about {max(0, fits)} "
                f"training images: the probe trains on a stratified {n} of {m.size.n_train}")
            data_args = dataclasses.replace(data_args, max_train_samples=n)
    probe_args = ProbeArguments(layers=decision.layers or "pooled", probe="logreg", export="auto",
                                output_dir=training_args.output_dir,
                                overwrite_output_dir=training_args.overwrite_output_dir, seed=training_args.seed)
    if decision.class_weighting:
        if hasattr(probe_args, "class_weighting"):
            probe_args.class_weighting = decision.class_weighting
        else:
            say(f"the plan asks for --class_weighting {decision.class_weighting}, which this version's probe does not "
                "have: probing without it")
    say(f"--strategy auto chose a linear probe on {decision.layers}: running the probe job (as hf-transfer probe "
        f"{training_args.output_dir}/plan.yaml would) into {training_args.output_dir}; no Trainer run")
    results = run_linear_probe(model_args, dataclasses.replace(data_args), probe_args)
    results["strategy"] = "auto -> linear_probe"
    if advice.deadline is not None:  # planned against used, as a budgeted fine-tune records it
        from ..saving import COMPLETION_MARKER, write_json

        results["time_budget_seconds"] = advice.budget["budget_seconds"]
        results["time_budget_used_seconds"] = round(time.perf_counter() - advice.started, 2)
        record_final_run(advice, results, training_args.output_dir)
        write_json(Path(training_args.output_dir) / COMPLETION_MARKER, results)
    return results


__all__ = ["AdviseArguments", "advise_argument_types", "continue_from_race", "measure_backbone", "measure_candidates",
           "record_final_run", "resolve_auto_strategy", "resolve_candidates", "run_advise", "run_advised_probe"]
