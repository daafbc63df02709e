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
* Imbalance: `imbalance.ImbalanceCorrection` (weighted loss, balanced sampler). Engine quirks (the ZeRO weight-decay
  hold, the 16-bit restore): `engines.py`. Resume (each checkpoint holds ``transfer_plan.json``; resuming with a
  different plan is a `TransferError`; the phase is a pure function of the restored epoch): `checkpoints.py`.
"""

from __future__ import annotations

import dataclasses
import math
import os

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .backbones.resume import load_checkpoint_weights
from .checkpoints import RESUME_LATEST, check_resumable, checkpoint_problem, checkpoint_to_resume, latest_checkpoint  # noqa: F401
from .engines import (check_engine, detect_engine, hold_pending_groups, keep_batchnorm_float32,
                      needs_float32_batchnorm, parameter_count, plan_named_parameters, untrained_weights)
from .batchnorm import BatchNormPolicy  # noqa: F401 (public here too)
from .errors import TransferError
from .imbalance import ImbalanceCorrection
from .optimizers import group_learning_rates, log_head_rate_first, optimizer_for, plan_optimizer  # noqa: F401 (public here too)
from .plan import TransferConfig, TransferPlan, default_learning_rate
from .runtime import say


def current_epoch(state) -> int:
    """The whole epoch the loop is in (state.epoch is fractional mid-epoch and None before training)."""
    return int(math.floor((state.epoch or 0.0) + 1e-6))


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
            count = sum(parameter_count(p) for n, p in plan_named_parameters(model) if n in trainable)
            say(f"{reason}: {len(trainable)} parameter tensors ({count / 1e6:.3f}M values) train at epoch {epoch}\n"
                + plan.table(epoch))

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.prepare(model)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self.applied_epoch_phase = None
        if optimizer is not None and not any("name" in g for g in optimizer.param_groups):
            say("the optimizer was not built from the transfer plan: its freeze applies, its learning rates do not "
                "(use TransferTrainer, or optimizers=(plan_optimizer(plan, args, model), None))")
        elif optimizer is not None:
            log_head_rate_first(lr_scheduler, optimizer)
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


class TransferTrainer(ImbalanceCorrection, Trainer):
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
                transfer_config = TransferConfig(weight_decay=args.weight_decay)
            if transfer_config.learning_rate is None:
                # The head's rate: TransferConfig's, else TrainingArguments', else the family default.
                transfer_config = dataclasses.replace(transfer_config, learning_rate=default_learning_rate(model)
                                                      if args.learning_rate is None else args.learning_rate)
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
        self.untrained_weights = untrained_weights(plan, model) if self.engine.trains_16_bit_copies else {}
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
        self.setup_imbalance_correction(plan.config, class_weights)

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
        resume_from_checkpoint = checkpoint_to_resume(resume_from_checkpoint, self.args.output_dir, self.plan, self.model)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # every tensor under the model's own names, whatever transformers renames (backbones/resume.py)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or not load_checkpoint_weights(model or self.model, resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _run_length(self) -> tuple[float, str]:
        """(epochs this run trains, how they were counted) from num_train_epochs or max_steps."""
        if self.args.max_steps is None or self.args.max_steps <= 0 or not hasattr(self.train_dataset, "__len__"):
            return float(self.args.num_train_epochs), ""
        batch = self.args.per_device_train_batch_size * max(1, self.args.world_size)
        batches = len(self.train_dataset) // batch if self.args.dataloader_drop_last else math.ceil(len(self.train_dataset) / batch)
        steps_per_epoch = max(1, batches // max(1, self.args.gradient_accumulation_steps))
        return self.args.max_steps / steps_per_epoch, f" (--max_steps {self.args.max_steps} at {steps_per_epoch} steps per epoch)"
