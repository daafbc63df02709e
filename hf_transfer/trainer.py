"""TransferTrainer: a `transformers.Trainer` that applies a `TransferPlan`.

Switching from plain Trainer is one argument: ``TransferTrainer(model=..., args=..., plan=plan, ...)`` (or
``transfer_config=TransferConfig(...)`` to build the plan from the model).

How it stays correct:

* Optimizer: created once with every parameter that trains at any point, in the plan's fixed groups, each with
  its real ``lr``. A not-yet-unfrozen parameter has ``requires_grad=False``, so its grad stays None and torch's
  (fused) AdamW skips it: no state, no decay, no update. The scheduler scales each group's own initial lr, so
  warm-up and decay stay consistent through unfreezing, and a resumed optimizer sees the same groups.
* DDP: parameters frozen when DDP wraps the model would never be synchronized after unfreezing. So every
  parameter that ever trains has ``requires_grad=True`` when the model is wrapped, and the current phase's freeze
  is applied in ``on_train_begin`` (after ``accelerator.prepare``); ``ddp_find_unused_parameters`` is turned on
  when something unfreezes later.
* BatchNorm: a forward pre-hook on the model sets the plan's frozen BatchNorm modules to eval() whenever the model
  is in training mode, so ``model.train()`` (called by Trainer every step) cannot update their statistics.
* Imbalance (`imbalance.py`): the plan's ``class_weighting="balanced"`` makes `compute_loss` a class-weighted
  cross-entropy (weights from the train split's class counts, or ``class_weights=``); ``sampler="balanced"`` makes
  `_get_train_sampler` a seeded class-balanced draw, the same on every process, which accelerate shards by batch.
* Resume: the phase is a pure function of the epoch (restored from ``trainer_state.json``); each checkpoint holds
  ``transfer_plan.json`` and resuming with a different plan is a `TransferError`.
"""

from __future__ import annotations

import json
import math
import os
import re

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .errors import TransferError
from .engines import check_engine, detect_engine, keep_batchnorm_float32, needs_float32_batchnorm
from .plan import PLAN_FILE, TransferConfig, TransferPlan, default_learning_rate, plan_named_parameters
from .runtime import say


def current_epoch(state) -> int:
    """The whole epoch the loop is in (state.epoch is fractional mid-epoch and None before training)."""
    return int(math.floor((state.epoch or 0.0) + 1e-6))


class BatchNormPolicy:
    """Keeps chosen BatchNorm modules in eval mode while the model trains (a pre-hook on the model root)."""

    def __init__(self, model: torch.nn.Module):
        self.modules: list[torch.nn.Module] = []
        self.handle = model.register_forward_pre_hook(self._hook)

    def set(self, modules: list[torch.nn.Module]) -> None:
        self.modules = list(modules)

    def _hook(self, model, args):
        if model.training:
            for module in self.modules:
                module.eval()

    def remove(self) -> None:
        self.handle.remove()


class TransferPlanCallback(TrainerCallback):
    """Applies a `TransferPlan` inside any `Trainer`: the freeze of each phase, the BatchNorm policy, the plan saved
    in each checkpoint. The model comes from the callback arguments, so ``Trainer(..., callbacks=[
    TransferPlanCallback(plan)])`` works with any Trainer subclass. The plan's learning rates need its parameter
    groups in the optimizer: `TransferTrainer` builds them; elsewhere pass ``optimizers=(plan_optimizer(plan, args,
    model), None)``, or the callback says the rates are not applied.
    """

    def __init__(self, plan: TransferPlan):
        self.plan = plan
        self.batchnorm_policy: BatchNormPolicy | None = None
        self.applied_epoch_phase: frozenset | None = None

    def prepare(self, model) -> None:
        """Before DDP wraps the model: everything that ever trains is visible; the BatchNorm hook is in place."""
        if self.batchnorm_policy is None:
            self.plan.apply_freeze(model, None)
            self.batchnorm_policy = BatchNormPolicy(model)
            self.batchnorm_policy.set(self.plan.frozen_batchnorm(model, 0))

    def apply(self, model, state, reason: str, optimizer=None) -> None:
        plan = self.plan
        self.prepare(model)
        epoch = current_epoch(state)
        trainable = plan.apply_freeze(model, epoch)
        self.batchnorm_policy.set(plan.frozen_batchnorm(model, epoch))
        if optimizer is not None:
            hold_pending_groups(optimizer, epoch)
        phase = frozenset(trainable)
        if phase != self.applied_epoch_phase:
            self.applied_epoch_phase = phase
            # ds_numel: a DeepSpeed ZeRO-3 parameter holds only its shard
            count = sum(getattr(p, "ds_numel", p.numel()) for n, p in plan_named_parameters(model) if n in trainable)
            say(f"{reason}: {len(trainable)} parameter tensors ({count / 1e6:.3f}M values) train at epoch {epoch}\n"
                + plan.table(epoch))

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.prepare(model)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.applied_epoch_phase = None
        if optimizer is not None and not any("name" in g for g in optimizer.param_groups):
            say("the optimizer was not built from the transfer plan: its freeze applies, its learning rates do not "
                "(use TransferTrainer, or optimizers=(plan_optimizer(plan, args, model), None))")
        self.apply(model, state, "transfer plan", optimizer)

    def on_epoch_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.apply(model, state, "transfer plan changed", optimizer)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        # DDP broadcasts buffers from rank 0 at the start of each forward, so after the last step every rank holds
        # BatchNorm statistics of its own last batch: finish with rank 0's, as the next forward would.
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer.data, src=0)

    def on_save(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            if os.path.isdir(folder):
                self.plan.save(folder, model)


def hold_pending_groups(optimizer, epoch: int) -> None:
    """Keep parameters that have not unfrozen yet exactly as they are, even where an engine gives them a gradient.

    One process, DDP and FSDP leave their gradient None, so the optimizer skips them. DeepSpeed ZeRO-1/2 fills
    missing gradients with zeros: AdamW would still decay those weights and count steps for them, so their group's
    weight decay is held at 0 until its epoch (zero gradients then move nothing), and its optimizer state is dropped
    when it starts to train (fresh moments and step count, as if it had just joined). The hold is a key of the group,
    so it is saved in checkpoints and a resumed run releases it the same way.
    """
    state = optimizer.state
    for group in optimizer.param_groups:
        start = group.get("trains_from_epoch")
        if start is None:
            continue
        if start > epoch and "held_weight_decay" not in group:
            group["held_weight_decay"], group["weight_decay"] = group["weight_decay"], 0.0
        elif start <= epoch and "held_weight_decay" in group:
            group["weight_decay"] = group.pop("held_weight_decay")
            for param in group["params"]:
                state.pop(param, None)


def untrained_weights(plan: TransferPlan, model) -> dict[str, torch.Tensor]:
    """CPU copies of the parameters the plan never trains and of the BatchNorm statistics it never updates."""
    never = {n for g in plan.groups if g.frozen for n in g.params}
    frozen_bn = set(plan.frozen_batchnorm_names(model))
    never |= {n for n, _ in model.named_buffers() if n.rpartition(".")[0] in frozen_bn}
    return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items() if name in never}


def plan_optimizer(plan: TransferPlan, args, model):
    """The optimizer ``args.optim`` names, over the plan's parameter groups with their real learning rates."""
    optimizer_cls, optimizer_kwargs = optimizer_for(args, model)
    return optimizer_cls(plan.optimizer_groups(model), **optimizer_kwargs)


class TransferTrainer(Trainer):
    """`Trainer` + `TransferPlan`: parameter groups with real lrs, staged unfreezing, BatchNorm policy, resume, DDP."""

    def __init__(self, model=None, args=None, *trainer_args, plan: TransferPlan | None = None,
                 transfer_config: TransferConfig | None = None, class_weights=None, **kwargs):
        if model is None:
            raise TransferError("TransferTrainer needs a model (model_init is not supported)")
        if (kwargs.get("optimizers") or (None, None))[0] is not None or kwargs.get("optimizer_cls_and_kwargs"):
            raise TransferError("TransferTrainer builds its optimizer from the plan; choose it with args.optim / "
                                "args.optim_args instead of optimizers= or optimizer_cls_and_kwargs=")
        if args is None:
            raise TransferError("TransferTrainer needs args=TrainingArguments(...) (the plan reads its learning rate)")
        if plan is None:
            if transfer_config is None:
                transfer_config = TransferConfig(learning_rate=args.learning_rate or default_learning_rate(model),
                                                 weight_decay=args.weight_decay)
            plan = TransferPlan.build(model, transfer_config)
            plan.reinitialize(model)
        optimizer_for(args, model)  # an optimizer that cannot take the plan's groups fails here, not after loading data
        self.engine = detect_engine(args)
        check_engine(self.engine, plan.config)  # engine x plan combinations that would train another model
        if needs_float32_batchnorm(self.engine):  # 16-bit BatchNorm weights beside float32 statistics fail
            keep_batchnorm_float32(model)
        # The dtype the weights had before an engine took them (DeepSpeed keeps 16-bit copies): saved weights get it
        # back, and what never trains (frozen layers, frozen BatchNorm statistics) gets back its exact values.
        self.weights_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        sixteen_bit = self.engine.kind == "deepspeed" and self.engine.mixed_precision in ("bf16", "fp16")
        self.untrained_weights = untrained_weights(plan, model) if sixteen_bit else {}
        self.plan = plan
        if args.learning_rate is None:
            args.learning_rate = plan.config.learning_rate  # the plan's groups carry the real rates
        if args.ddp_find_unused_parameters is None:
            # Parameters that have not unfrozen yet get no gradient: DDP must not wait for them. A fixed plan has
            # none, and Trainer's default (True for a PreTrainedModel) would walk the autograd graph every step.
            args.ddp_find_unused_parameters = len(plan.change_epochs()) > 1
        self.plan_callback = TransferPlanCallback(plan)
        self.plan_callback.prepare(model)  # everything that ever trains is visible to DDP when it wraps the model
        super().__init__(model, args, *trainer_args, **kwargs)
        self.add_callback(self.plan_callback)
        self.class_weights, self.class_counts = self._imbalance_correction(class_weights)

    def _imbalance_correction(self, class_weights):
        """(loss weights or None, train images per class or None) for the plan's --class_weighting / --sampler."""
        from .imbalance import balanced_class_weights, class_counts, describe_balance, train_label_ids

        config = self.plan.config
        if class_weights is None and config.class_weighting == "none" and config.sampler == "random":
            return None, None
        if class_weights is not None and config.sampler == "balanced":
            raise TransferError("class_weights and --sampler balanced both correct for imbalance; pick one")
        if config.sampler == "balanced" and self.args.train_sampling_strategy != "random":
            raise TransferError(f"--sampler balanced replaces the training order; drop --train_sampling_strategy "
                                f"{self.args.train_sampling_strategy}")
        num_classes = int(self.model.config.num_labels)
        counts = None
        if self.train_dataset is not None and (class_weights is None or config.sampler == "balanced"):
            counts = class_counts(train_label_ids(self.train_dataset), num_classes)
        weights = None
        if class_weights is not None:
            weights = torch.as_tensor(class_weights, dtype=torch.float32).reshape(-1)
            if len(weights) != num_classes:
                raise TransferError(f"class_weights has {len(weights)} values for a model with {num_classes} classes")
        elif config.class_weighting == "balanced":
            if counts is None:
                raise TransferError("--class_weighting balanced needs a train_dataset to count the classes in")
            weights = balanced_class_weights(counts)
        if weights is not None:
            self.loss_is_scaled_for_ga = False  # a per-batch mean: Trainer divides it by the accumulation steps
        if counts is not None:
            labels = [str(self.model.config.id2label.get(k, k)) for k in range(num_classes)]
            say(describe_balance(counts, labels, weights, config.sampler))
        return weights, counts

    def imbalance_summary(self) -> dict:
        """What all_results.json and the model card record about the imbalance correction (empty when none)."""
        config = self.plan.config
        if self.class_weights is None and config.sampler == "random":
            return {}
        id2label = self.model.config.id2label
        name = lambda k: str(id2label.get(k, k))  # noqa: E731
        weighting = "none" if self.class_weights is None else (
            "custom" if config.class_weighting == "none" else config.class_weighting)  # custom: class_weights= given
        summary = {"class_weighting": weighting, "sampler": config.sampler}
        if self.class_counts is not None:
            summary["train_class_counts"] = {name(k): int(n) for k, n in enumerate(self.class_counts)}
        if self.class_weights is not None:
            summary["class_weights"] = {name(k): round(float(w), 6) for k, w in enumerate(self.class_weights)}
        return summary

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.class_weights is None or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        from .imbalance import weighted_cross_entropy

        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        loss = weighted_cross_entropy(logits, labels, self.class_weights, self.args.label_smoothing_factor)
        if not isinstance(outputs, dict):
            outputs = (loss, *outputs)  # as with labels: prediction_step reads the logits after the loss
        return (loss, outputs) if return_outputs else loss

    def _get_train_sampler(self, train_dataset=None):
        if self.plan.config.sampler != "balanced":
            return super()._get_train_sampler(train_dataset)
        from .imbalance import BalancedClassSampler, train_label_ids

        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        # Same draw on every process (seed + epoch); accelerate shards the batches between processes.
        return BalancedClassSampler(train_label_ids(dataset), len(dataset), seed=seed)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            self.optimizer = plan_optimizer(self.plan, self.args, model or self.model)
        return self.optimizer

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        # Trainer logs the first parameter group's rate (the stem's, 10x+ below the head's). Report the head's as
        # `learning_rate` and every named group's as `learning_rate/<group>`, so every tracker sees the real rates.
        if "learning_rate" in logs and self.optimizer is not None:
            logs.update(group_learning_rates(self.optimizer))
        super().log(logs, *args, **kwargs)

    def train(self, resume_from_checkpoint=None, **kwargs):
        note = self.plan.check_schedule(*self._run_length())
        if note:
            say(note)
        if resume_from_checkpoint:
            if isinstance(resume_from_checkpoint, bool) or str(resume_from_checkpoint).lower() in RESUME_LATEST:
                resume_from_checkpoint = latest_checkpoint(self.args.output_dir)
                if resume_from_checkpoint is None:
                    say(f"no complete checkpoint in {self.args.output_dir}: training from the start")
            if resume_from_checkpoint:
                check_resumable(resume_from_checkpoint, self.plan, self.model)
                say(f"resuming from {resume_from_checkpoint}")
        return super().train(resume_from_checkpoint=resume_from_checkpoint or None, **kwargs)

    def _run_length(self) -> tuple[float, str]:
        """(epochs this run trains, how they were counted) from num_train_epochs or max_steps."""
        if self.args.max_steps is None or self.args.max_steps <= 0 or self.train_dataset is None:
            return float(self.args.num_train_epochs), ""
        batch = self.args.per_device_train_batch_size * max(1, self.args.world_size)
        batches = len(self.train_dataset) // batch if self.args.dataloader_drop_last else math.ceil(len(self.train_dataset) / batch)
        steps_per_epoch = max(1, batches // max(1, self.args.gradient_accumulation_steps))
        return self.args.max_steps / steps_per_epoch, f" (--max_steps {self.args.max_steps} at {steps_per_epoch} steps per epoch)"


# Optimizers that Trainer builds from the model itself (their own parameter groups, or a fused backward): they
# cannot take the plan's groups, and stripping their extra arguments would silently train something else.
MODEL_BUILT_OPTIMIZERS = re.compile(r"^(galore_|apollo_|lomo$|adalomo$)|layerwise")
RESUME_LATEST = ("true", "auto", "latest")


def optimizer_for(args, model) -> tuple[type, dict]:
    """The optimizer class and its settings for ``args.optim``, refusing those that need the model itself."""
    name = str(getattr(args.optim, "value", args.optim))
    if MODEL_BUILT_OPTIMIZERS.search(name):
        raise TransferError(f"--optim {name} builds its own parameter groups from the model, which would override the "
                            "transfer plan's frozen layers and learning rates; use adamw_torch_fused, adamw_torch, sgd "
                            "or adafactor (or drop hf_transfer's plan and use the plain Trainer)")
    try:
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    except ImportError as err:
        raise TransferError(f"--optim {name}: {str(err).splitlines()[0]}") from None
    unexpected = sorted(set(optimizer_kwargs) & {"params", "model", "optimizer_dict"})
    if unexpected:
        raise TransferError(f"--optim {name} needs {', '.join(unexpected)} from the model, which the transfer plan "
                            "cannot provide; use adamw_torch_fused, adamw_torch, sgd or adafactor")
    return optimizer_cls, optimizer_kwargs


def group_learning_rates(optimizer) -> dict[str, float]:
    """The head's rate as ``learning_rate``, the pretrained groups' as ``learning_rate/backbone`` when they share one
    rate, else one ``learning_rate/<group>`` each (layer decay, multipliers)."""
    rates: dict[str, float] = {}
    for group in optimizer.param_groups:
        rates.setdefault(str(group.get("name", "group")).split("/no_decay")[0], float(group["lr"]))
    logs = {"learning_rate": rates.pop("head")} if "head" in rates else {}
    if len(set(rates.values())) == 1:
        logs["learning_rate/backbone"] = next(iter(rates.values()))
    else:
        logs.update({f"learning_rate/{name}": lr for name, lr in rates.items()})
    return logs


def checkpoint_problem(folder: str) -> str | None:
    """Why ``folder`` is not a complete TransferTrainer checkpoint (None when it is).

    Trainer writes the weights, optimizer and RNG state, then trainer_state.json; TransferTrainer adds
    transfer_plan.json last (on_save). A run killed while saving leaves a checkpoint without them.
    """
    if not os.path.isdir(folder):
        return "no such folder"
    present = set(os.listdir(folder))
    if not present & {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors"}:
        return "no model weights"
    for required in ("trainer_state.json", PLAN_FILE):
        if required not in present:
            return f"no {required} (a save that did not finish)"
    return None


def latest_checkpoint(output_dir: str) -> str | None:
    """The newest complete ``checkpoint-N`` in ``output_dir`` (half-written ones, e.g. from a killed run, skipped)."""
    if not os.path.isdir(output_dir):
        return None
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    numbered = sorted(((int(m.group(1)), name) for name in os.listdir(output_dir) if (m := pattern.match(name))), reverse=True)
    for _, name in numbered:
        folder = os.path.join(output_dir, name)
        if checkpoint_problem(folder) is None:
            return folder
        say(f"skipping incomplete checkpoint {folder} ({checkpoint_problem(folder)})")
    return None


def check_resumable(folder: str, plan: TransferPlan, model) -> None:
    """A checkpoint resumes only into the same plan, labels and input size: anything else trains a different model."""
    problem = checkpoint_problem(folder)
    if problem:
        raise TransferError(f"cannot resume from {folder!r}: {problem}; pass another checkpoint, "
                            "--resume_from_checkpoint True for the latest complete one, or start afresh")
    diffs = plan.differences(TransferPlan.load(folder))
    config_file = os.path.join(folder, "config.json")
    if os.path.isfile(config_file):
        with open(config_file) as handle:
            saved = json.load(handle)
        mine = model.config.to_dict()
        for key, what in (("id2label", "labels"), ("label_names", "labels"), ("image_size", "image size")):
            if key in saved and key in mine and _normalized(saved[key]) != _normalized(mine[key]):
                diffs.append(f"{what}: {_short(saved[key])} -> {_short(mine[key])}")
        saved_size = (saved.get("pretrained_cfg") or {}).get("input_size")
        my_size = (mine.get("pretrained_cfg") or {}).get("input_size")
        if saved_size and my_size and list(saved_size) != list(my_size):
            diffs.append(f"input size: {saved_size[-1]} px -> {my_size[-1]} px")
    if diffs:
        raise TransferError(f"the checkpoint {folder!r} was trained differently ({'; '.join(diffs)}); resume with the "
                            "same data, flags and --image_size, or start a new --output_dir")


def _normalized(value):
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return value


def _short(value, limit: int = 60) -> str:
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
    text = ", ".join(map(str, items))
    return text if len(text) <= limit else text[:limit] + "…"
