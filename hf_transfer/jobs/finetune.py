"""The fine-tuning job behind `recipes/finetune.py` and `hf-transfer finetune`: data -> backbone -> Trainer -> folder."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..arguments import DataArguments, ModelArguments, TransferArguments
from ..backbones import adapter_for
from ..engines import check_engine, detect_engine
from ..errors import TransferError
from ..hub import push_after_training, run_summary, save_run_files, take_push_request, write_model_card
from ..metrics import ClassificationMetrics
from ..record import RunRecord
from ..runtime import configure_cpu_threads, is_main_process, quiet_metrics, say
from ..checkpoints import resolve_resume  # noqa: F401 (imported from here too)
from ..saving import COMPLETION_MARKER, prepare_output_dir, resolve_output_dir, staged_output, trained_weights, write_json
from ..strategies import REGISTRY, get_strategy, needs_advisor
from ..streaming import split_size
from ..transforms import resolve_augmentation
from .common import prepare

if TYPE_CHECKING:
    from ..training_args import TransferTrainingArguments

def run_finetune(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TransferTrainingArguments,
    transfer_args: TransferArguments | None = None,
) -> dict[str, float]:
    """Fine-tune and write ``output_dir``: config.json, model.safetensors, preprocessor, transfer_plan.json, then
    all_results.json last (the completion marker)."""
    from transformers import set_seed

    from ..plan import TransferPlan, default_learning_rate
    from ..trainer import TransferTrainer

    from ..budget import run_started

    start = run_started(time.perf_counter())  # a command line's budget counts from the process's start
    transfer_args = transfer_args or TransferArguments()
    advice = None
    if data_args.streaming:  # streaming.py: the flags that need the dataset's length are refused here
        from ..streaming import streaming_refusal

        if refusal := streaming_refusal(data_args, training_args, transfer_args):
            raise TransferError(refusal)
        training_args.accelerator_config.dispatch_batches = False  # each process reads and decodes its own share
    if needs_advisor(transfer_args.strategy):  # auto: jobs/advise.py measures, decides, fills the flags; a probe plan
        from .advise import resolve_auto_strategy, run_advised_probe  # runs the probe job

        advice = resolve_auto_strategy(model_args, data_args, training_args, transfer_args, start)
        if advice.decision.job == "probe":
            return run_advised_probe(advice, model_args, data_args, training_args)
    if model_args.no_pretrained and transfer_args.strategy in REGISTRY:
        transfer_args.strategy = get_strategy(transfer_args.strategy).with_random_weights().name
    # Bad flags, an impossible schedule, a bad checkpoint path or an occupied output folder fail here, before any
    # data or model is loaded.
    config = transfer_args.to_config(training_args)
    config.validate()
    strategy = config.strategy_object
    if transfer_args.time_budget is not None and transfer_args.time_budget <= 0:
        raise TransferError(f"--time_budget {transfer_args.time_budget:g} must be a positive number of seconds")
    if not training_args.max_steps or training_args.max_steps <= 0:
        config.check_run_length(training_args.num_train_epochs)
    engine = detect_engine(training_args)
    check_engine(engine, config)  # an engine x plan combination that would train another model than the plan says
    push_to = take_push_request(training_args)  # hub/push.py: Trainer must not create the repo; we push at the end
    resolve_output_dir(training_args, "finetune", model_args, data_args)
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    if is_main_process():
        prepare_output_dir(training_args.output_dir, overwrite=training_args.overwrite_output_dir,
                           resuming=bool(training_args.resume_from_checkpoint))
    configure_cpu_threads()
    set_seed(training_args.seed)
    # `auto` depends on the run's length: resolve it here, where the epochs are known, not inside prepare().
    data_args = dataclasses.replace(
        data_args, augmentation=resolve_augmentation(data_args.augmentation, training_args.num_train_epochs))
    pretrained = None if strategy.loads_pretrained else False
    data, model, splits, image_size = prepare(model_args, data_args, training_args, "finetune", pretrained=pretrained)
    if transfer_args.head_init_from:
        from ..probes import init_head_from_probe

        init_head_from_probe(model, transfer_args.head_init_from)
        say(f"head initialized from the linear probe in {transfer_args.head_init_from}")
    if training_args.learning_rate is None:
        training_args.learning_rate = default_learning_rate(model)
        say(f"--learning_rate not given: {training_args.learning_rate:g} for the head (the default for "
            f"{'BatchNorm CNNs' if training_args.learning_rate > 1e-3 else 'this backbone family'})")
    config = dataclasses.replace(config, learning_rate=training_args.learning_rate)  # the head's rate, now known
    model = strategy.prepare_model(model, config, source=model_args.model_name_or_path)  # LoRA: peft wraps the model
    plan = TransferPlan.build(model, config)
    plan.reinitialize(model)
    say(
        f"{model_args.model_name_or_path} ({type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params)"
        f" on {data.source}: {split_size(splits['train'])} train / {split_size(splits['validation'])} validation images,"
        f" {len(data.labels)} classes, {image_size} px, augmentation {data_args.augmentation!r}"
    )
    for note in data.notes:
        say(note)
    say(f"engine: {engine.describe()}")
    adapter = adapter_for(model)
    # DeepSpeed broadcasts each parameter viewed as bytes, which a channels_last weight refuses (seen on 2 CPU
    # processes: "self.stride(-1) must be 1 to view BFloat16 as Byte"): its parameters stay contiguous
    channels_last = adapter.prefers_channels_last() and engine.kind != "deepspeed"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Decode + resize once when the data fits in memory; batches come normalized in the model's memory format.
    from ..fastdata import prepare_splits

    splits, collator, note = prepare_splits(data, splits, adapter.data_config(), image_size=image_size,
                                            augmentation=data_args.augmentation, channels_last=channels_last)
    say(note)
    from ..fastdata import resolve_loader_workers

    if workers_note := resolve_loader_workers(training_args, splits):  # decoding per step: worker processes
        say(workers_note)

    trainer = TransferTrainer(
        model=model,
        args=training_args,
        plan=plan,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        compute_metrics=ClassificationMetrics(labels=data.labels),
        data_collator=collator,
    )
    quiet_metrics(trainer)
    if advice is not None:  # --strategy auto: the race winner keeps its optimizer state
        from .advise import continue_from_race

        continue_from_race(advice, trainer)
    if transfer_args.time_budget:  # budget.py: a deadline; the schedule is re-planned from the measured step time
        from ..budget import attach_deadline

        budget = attach_deadline(trainer, transfer_args.time_budget, start,
                                 final_evaluations=1 + len(splits.get("test", ())) / max(1, len(splits["validation"])))
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = {f"train_{k}" if not k.startswith("train") else k: v for k, v in train_result.metrics.items()}
    if transfer_args.time_budget:
        metrics["stopped_by_time_budget"] = budget.stopped_at_step is not None
        metrics.update(budget.summary())  # planned against used: time_budget_* (used seconds added at the end)
    # The trained model is written before evaluation: a failing validation or test split must not cost the training.
    trained, weights = trained_weights(trainer)  # every process: ZeRO-3 and FSDP gather the sharded weights
    if trainer.is_world_process_zero():
        with staged_output(training_args.output_dir) as staging:
            strategy.save_model(trained, staging, image_size=image_size, weights=weights,
                                source=model_args.model_name_or_path, adapter_only=transfer_args.lora_adapter_only)
            plan.save(staging, trained)
            data.write_bad_images(staging)  # what --on_bad_image skip left out, if anything
    validation = trainer.predict(splits["validation"], metric_key_prefix="eval")  # predictions: the confusion matrix
    metrics.update(validation.metrics)
    if "test" in splits:
        metrics.update(trainer.evaluate(eval_dataset=splits["test"], metric_key_prefix="test"))
    metrics["total_seconds"] = round(time.perf_counter() - start, 2)
    if transfer_args.time_budget:
        metrics["time_budget_used_seconds"] = metrics["total_seconds"]
    metrics["skipped_bad_images"] = len(data.bad_images)
    metrics.update(run_summary(model_args.model_name_or_path, data.source, image_size,
                               {k: v for k, v in splits.items() if split_size(v) != "streamed"}))
    metrics.update(trainer.imbalance_summary())  # class weights / sampler: the card and later readers see them
    record = RunRecord.from_results(metrics)  # record.py: all_results.json is its serialization
    record.engine = None if engine.kind == "single" else engine.describe()
    results = record.to_results()
    if advice is not None and trainer.is_world_process_zero():  # advice.json: planned against used, final scores
        from .advise import record_final_run

        record_final_run(advice, results, training_args.output_dir)

    if trainer.is_world_process_zero():
        # hub/run_files.py: {train,eval,test}_results.json, trainer_state.json, training_args.json, the card's figures
        save_run_files(trainer, results, validation)
        write_json(Path(training_args.output_dir) / COMPLETION_MARKER, results)  # last: the folder is complete
        write_model_card(training_args.output_dir, repo_id=push_to)  # README.md, read back from the finished folder
        lowest = record.lowest_recall("eval")
        say(f"eval accuracy {results.get('eval_accuracy', float('nan')):.4f}, macro-F1 {results.get('eval_macro_f1', float('nan')):.4f}"
            + (f", lowest class recall {lowest[1]:.4f} ({lowest[0]})" if lowest is not None else "")
            + f"; model written to {training_args.output_dir}")
        if push_to:
            push_after_training(training_args.output_dir, push_to, training_args)
    return results

