"""The optimizer over a `TransferPlan`'s parameter groups, and the learning rates a run logs.

Trainer's own optimizer has two groups (decay / no decay) at one rate; the plan needs its groups, each with its real
``lr``. Optimizers that Trainer builds from the model itself cannot take them and are refused in one line.
"""

from __future__ import annotations

import re

from transformers import Trainer

from .errors import TransferError


def plan_optimizer(plan: TransferPlan, args, model):
    """The optimizer ``args.optim`` names, over the plan's parameter groups with their real learning rates."""
    optimizer_cls, optimizer_kwargs = optimizer_for(args, model)
    return optimizer_cls(plan.optimizer_groups(model), **optimizer_kwargs)



# Optimizers that Trainer builds from the model itself (their own parameter groups, or a fused backward): they
# cannot take the plan's groups, and stripping their extra arguments would silently train something else.
MODEL_BUILT_OPTIMIZERS = re.compile(r"^(galore_|apollo_|lomo$|adalomo$)|layerwise")


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


def log_head_rate_first(lr_scheduler, optimizer) -> None:
    """Trainer logs ``lr_scheduler.get_last_lr()[0]`` as `learning_rate`: the first group's (the stem's, 10x+ below the
    head's). Make this scheduler report the head's rate first, so any Trainer logs the head's. Its stepping never calls
    get_last_lr, the groups keep their order, and its state_dict is unchanged (checkpoints stay as they were)."""
    names = [str(g.get("name", "")) for g in optimizer.param_groups]
    if lr_scheduler is None or "head" not in names or isinstance(lr_scheduler, _HeadRateFirst):
        return
    base = type(lr_scheduler)
    lr_scheduler.__class__ = type(f"HeadRateFirst{base.__name__}", (_HeadRateFirst, base), {})


class _HeadRateFirst:
    def get_last_lr(self):
        rates = list(super().get_last_lr())
        names = [str(g.get("name", "")) for g in self.optimizer.param_groups]
        head = names.index("head")
        return [rates[head], *rates[:head], *rates[head + 1:]]
