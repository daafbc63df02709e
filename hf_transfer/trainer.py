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
* Resume: the phase is a pure function of the epoch (restored from ``trainer_state.json``); each checkpoint holds
  ``transfer_plan.json`` and resuming with a different plan is a `TransferError`.
"""

from __future__ import annotations

import math
import os

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .errors import TransferError
from .plan import PLAN_FILE, TransferConfig, TransferPlan, default_learning_rate
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
    """Applies the plan's phase at train begin and at each epoch; prints the table when the phase changes."""

    def __init__(self, trainer: "TransferTrainer"):
        self.trainer = trainer
        self.applied_epoch_phase: frozenset | None = None

    def apply(self, state, reason: str) -> None:
        trainer, plan = self.trainer, self.trainer.plan
        epoch = current_epoch(state)
        trainable = plan.apply_freeze(trainer.model, epoch)
        trainer.batchnorm_policy.set(plan.frozen_batchnorm(trainer.model, epoch))
        phase = frozenset(trainable)
        if phase != self.applied_epoch_phase:
            self.applied_epoch_phase = phase
            count = sum(p.numel() for n, p in trainer.model.named_parameters() if n in trainable)
            say(f"{reason}: {len(trainable)} parameter tensors ({count / 1e6:.3f}M values) train at epoch {epoch}\n"
                + plan.table(epoch))

    def on_train_begin(self, args, state, control, **kwargs):
        self.applied_epoch_phase = None
        self.apply(state, "transfer plan")

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.apply(state, "transfer plan changed")

    def on_train_end(self, args, state, control, **kwargs):
        # DDP broadcasts buffers from rank 0 at the start of each forward, so after the last step every rank holds
        # BatchNorm statistics of its own last batch: finish with rank 0's, as the next forward would.
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            for buffer in self.trainer.model.buffers():
                torch.distributed.broadcast(buffer.data, src=0)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            if os.path.isdir(folder):
                self.trainer.plan.save(folder, self.trainer.model)


class TransferTrainer(Trainer):
    """`Trainer` + `TransferPlan`: parameter groups with real lrs, staged unfreezing, BatchNorm policy, resume, DDP."""

    def __init__(self, model=None, args=None, *trainer_args, plan: TransferPlan | None = None,
                 transfer_config: TransferConfig | None = None, **kwargs):
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
        self.plan = plan
        if args.learning_rate is None:
            args.learning_rate = plan.config.learning_rate  # the plan's groups carry the real rates
        if args.ddp_find_unused_parameters is None and len(plan.change_epochs()) > 1:
            # Parameters that have not unfrozen yet get no gradient: DDP must not wait for them.
            args.ddp_find_unused_parameters = True
        plan.apply_freeze(model, None)  # everything that ever trains is visible to DDP when it wraps the model
        self.batchnorm_policy = BatchNormPolicy(model)
        self.batchnorm_policy.set(plan.frozen_batchnorm(model, 0))
        super().__init__(model, args, *trainer_args, **kwargs)
        self.add_callback(TransferPlanCallback(self))

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = model or self.model
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            optimizer_kwargs = {k: v for k, v in optimizer_kwargs.items() if k not in ("params", "model", "optimizer_dict")}
            self.optimizer = optimizer_cls(self.plan.optimizer_groups(model), **optimizer_kwargs)
        return self.optimizer

    def train(self, resume_from_checkpoint=None, **kwargs):
        if resume_from_checkpoint:
            folder = resume_from_checkpoint
            if isinstance(folder, bool):
                folder = get_last_checkpoint(self.args.output_dir)
            if folder and os.path.isdir(folder):
                if not os.path.isfile(os.path.join(folder, PLAN_FILE)):
                    raise TransferError(f"checkpoint {folder!r} has no {PLAN_FILE}; resume it with the plain Trainer or start afresh")
                diffs = self.plan.differences(TransferPlan.load(folder))
                if diffs:
                    raise TransferError(f"the transfer plan differs from the checkpoint's ({'; '.join(diffs)}); "
                                        "resume with the same flags or start a new output_dir")
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
