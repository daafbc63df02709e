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
