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
from ..runtime import configure_cpu_threads, is_main_process, say
from ..saving import (COMPLETION_MARKER, prepare_output_dir, resolve_output_dir, save_model_folder, staged_output,
                      trained_weights, write_json)
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

    start = time.perf_counter()
    transfer_args = transfer_args or TransferArguments()
    if transfer_args.strategy == "auto":  # jobs/advise.py: measure, decide, fill the flags; a probe plan runs the probe job
        from .advise import resolve_auto_strategy, run_advised_probe

        advice = resolve_auto_strategy(model_args, data_args, training_args, transfer_args, start)
        if advice.decision.job == "probe":
            return run_advised_probe(advice, model_args, data_args, training_args)
    if model_args.no_pretrained and transfer_args.strategy == "full":
        transfer_args.strategy = "scratch"  # random weights: nothing is pretrained, so no backbone lr multiplier
    if model_args.no_pretrained and transfer_args.strategy == "lora":
        raise TransferError("--strategy lora adapts pretrained weights, but --no_pretrained gives random ones; drop "
                            "--no_pretrained, or train from scratch with --strategy scratch")
    # Bad flags, an impossible schedule, a bad checkpoint path or an occupied output folder fail here, before any
    # data or model is loaded.
    config = transfer_args.to_config(training_args)
    config.validate()
    if transfer_args.time_budget is not None and transfer_args.time_budget <= 0:
        raise TransferError(f"--time_budget {transfer_args.time_budget:g} must be a positive number of seconds")
    if not training_args.max_steps or training_args.max_steps <= 0:
        config.check_run_length(training_args.num_train_epochs)
    engine = detect_engine(training_args)
    check_engine(engine, config)  # an engine x plan combination that would train another model than the plan says
    push_to = take_push_request(training_args)  # hub.py: Trainer must not create the repo; we push at the end
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
    pretrained = False if transfer_args.strategy == "scratch" else None
    data, model, splits, image_size = prepare(model_args, data_args, training_args, "finetune", pretrained=pretrained)
    if transfer_args.head_init_from:
        from ..probes import init_head_from_probe

        init_head_from_probe(model, transfer_args.head_init_from)
        say(f"head initialized from the linear probe in {transfer_args.head_init_from}")
    if training_args.learning_rate is None:
        training_args.learning_rate = default_learning_rate(model)
        say(f"--learning_rate not given: {training_args.learning_rate:g} for the head (the default for "
            f"{'BatchNorm CNNs' if training_args.learning_rate > 1e-3 else 'this backbone family'})")
    if transfer_args.strategy == "lora":  # peft wraps the model; the plan below reads peft's names
        from ..lora import wrap_with_lora

        model = wrap_with_lora(model, transfer_args.to_config(training_args), source=model_args.model_name_or_path)
    plan = TransferPlan.build(model, transfer_args.to_config(training_args))
    plan.reinitialize(model)
    say(
        f"{model_args.model_name_or_path} ({type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params)"
        f" on {data.source}: {len(splits['train'])} train / {len(splits['validation'])} validation images,"
        f" {len(data.labels)} classes, {image_size} px, augmentation {data_args.augmentation!r}"
    )
    for note in data.notes:
        say(note)
    say(f"engine: {engine.describe()}")
    adapter = adapter_for(model)
    channels_last = adapter.prefers_channels_last()
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
    if transfer_args.time_budget:  # budget.py: stop cleanly before the deadline, keeping time to evaluate and save
        from ..budget import TimeBudgetCallback, budget_reserve

        budget = TimeBudgetCallback.from_budget(transfer_args.time_budget, start, budget_reserve(transfer_args.time_budget))
        trainer.add_callback(budget)
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = {f"train_{k}" if not k.startswith("train") else k: v for k, v in train_result.metrics.items()}
    if transfer_args.time_budget:
        metrics["stopped_by_time_budget"] = budget.stopped_at_step is not None
    # The trained model is written before evaluation: a failing validation or test split must not cost the training.
    trained, weights = trained_weights(trainer)  # every process: ZeRO-3 and FSDP gather the sharded weights
    if trainer.is_world_process_zero():
        with staged_output(training_args.output_dir) as staging:
            if transfer_args.strategy == "lora":  # adapter/ + the merged model (lora.py)
                from ..lora import save_lora_output

                save_lora_output(trained, staging, image_size=image_size, merge=not transfer_args.lora_adapter_only,
                                 source=model_args.model_name_or_path)
            else:
                save_model_folder(trained, staging, image_size=image_size, timm_layout=True, state_dict=weights)  # timm loads it too
            plan.save(staging, trained)
            data.write_bad_images(staging)  # what --on_bad_image skip left out, if anything
    validation = trainer.predict(splits["validation"], metric_key_prefix="eval")  # predictions: the confusion matrix
    metrics.update(validation.metrics)
    if "test" in splits:
        metrics.update(trainer.evaluate(eval_dataset=splits["test"], metric_key_prefix="test"))
    metrics["total_seconds"] = round(time.perf_counter() - start, 2)
    metrics["skipped_bad_images"] = len(data.bad_images)
    metrics.update(run_summary(model_args.model_name_or_path, data.source, image_size, splits))
    metrics.update(trainer.imbalance_summary())  # class weights / sampler: the card and later readers see them

    if trainer.is_world_process_zero():
        # hub.py: {train,eval,test}_results.json, trainer_state.json, training_args.json, the card's figures
        save_run_files(trainer, metrics, validation)
        write_json(Path(training_args.output_dir) / COMPLETION_MARKER, metrics)  # last: the folder is complete
        write_model_card(training_args.output_dir, repo_id=push_to)  # README.md, read back from the finished folder
        recalls = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("eval_recall/")}
        lowest = min(recalls, key=recalls.get) if recalls else None
        say(f"eval accuracy {metrics.get('eval_accuracy', float('nan')):.4f}, macro-F1 {metrics.get('eval_macro_f1', float('nan')):.4f}"
            + (f", lowest class recall {recalls[lowest]:.4f} ({lowest})" if lowest is not None else "")
            + f"; model written to {training_args.output_dir}")
        if push_to:
            push_after_training(training_args.output_dir, push_to, training_args)
    return metrics


def resolve_resume(flag: str | bool | None, output_dir: str) -> str | None:
    """--resume_from_checkpoint: True/auto -> the latest complete checkpoint of ``output_dir`` (None: start fresh,
    with a note); a path must be a complete checkpoint, checked before anything is loaded."""
    from ..trainer import RESUME_LATEST, checkpoint_problem, latest_checkpoint

    if flag is None or flag is False or str(flag).strip().lower() in ("", "false", "no", "none"):
        return None
    if flag is True or str(flag).strip().lower() in RESUME_LATEST:
        found = latest_checkpoint(output_dir)
        if found is None:
            say(f"--resume_from_checkpoint {flag}: no complete checkpoint in {output_dir}; training from the start")
        return found
    problem = checkpoint_problem(str(flag))
    if problem:
        raise TransferError(f"--resume_from_checkpoint {flag!r} is not a checkpoint ({problem}); pass a checkpoint-N "
                            "folder, or True for the latest complete one in --output_dir")
    return str(flag)
