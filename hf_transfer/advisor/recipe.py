"""A decision as a config file that `recipes/finetune.py` or `recipes/linear_probe.py` runs unchanged.

    python recipes/finetune.py outputs/advise-…/plan.yaml          # job: finetune
    python recipes/linear_probe.py outputs/advise-…/plan.yaml      # job: probe

The file holds only flags those recipes parse (the config file is read by the same strict parser: a key it does not
know is an error), so what the advisor measured is in the comments at the top and in advice.json, not in the keys.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

from ..strategies import get_strategy
from .rules import Decision

RECIPES = {"finetune": "hf-transfer finetune", "probe": "hf-transfer probe"}  # installed; recipes/ is a checkout's


def _given(args, skip: tuple[str, ...] = ()) -> dict:
    """The fields of a dataclass that differ from their defaults (what the user set), in declaration order."""
    out = {}
    for f in fields(args):
        if f.name in skip or not f.init:
            continue
        value = getattr(args, f.name)
        default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else None)
        if value is not None and value != default:
            out[f.name] = value
    return out


def plan_config(decision: Decision, *, backbone: str, image_size: int, data_args, output_dir: str | None = None,
                batch_size: int = 32, time_budget: float | None = None, seed: int | None = None) -> dict:
    """The flags of the chosen recipe, as a mapping (data flags: those the user gave the advisor)."""
    config: dict = {"model_name_or_path": backbone, "image_size": int(image_size)}
    given = _given(data_args, skip=("augmentation",))
    if not any(key in given for key in ("dataset_name", "train_dir")):
        from ..data import DEFAULT_DATASET

        config["dataset_name"] = DEFAULT_DATASET  # written out: the plan must not depend on a default that may change
    config.update(given)
    if decision.job == "probe":
        config.update({"layers": str(decision.layers or "pooled"), "probe": "logreg", "export": "auto"})
        if decision.class_weighting:
            config["class_weighting"] = decision.class_weighting
    else:
        config.update({"strategy": decision.strategy, "learning_rate": decision.learning_rate,
                       "backbone_lr_multiplier": decision.backbone_lr_multiplier, "layer_decay": decision.layer_decay,
                       "num_train_epochs": decision.num_train_epochs, "per_device_train_batch_size": batch_size,
                       "augmentation": decision.augmentation})
        for flag in get_strategy(decision.strategy).decision_flags:  # partial: freeze, lp_ft: lp_epochs
            config[flag] = getattr(decision, flag)
        if time_budget is not None:
            config["time_budget"] = float(time_budget)
        if decision.class_weighting:
            config["class_weighting"] = decision.class_weighting
        if decision.sampler:
            config["sampler"] = decision.sampler
    if seed is not None and seed != 42:
        config["seed"] = seed
    if output_dir:
        config["output_dir"] = str(output_dir)
    return config


def write_plan_yaml(path: str | Path, decision: Decision, config: dict, header: list[str],
                    shown_path: str | None = None) -> Path:
    """plan.yaml: comments (the scenario and numbers), then the flags. ``shown_path``: where the file will be read
    from, for the "run it" line (it may be written into a staging folder first)."""
    import yaml

    path = Path(path)
    recipe = RECIPES[decision.job]
    lines = [f"# {line}" for line in header]
    lines += [f"# run it: {recipe} {shown_path or path}", ""]
    path.write_text("\n".join(lines) + "\n" + yaml.safe_dump(config, sort_keys=False, default_flow_style=False))
    return path


__all__ = ["RECIPES", "plan_config", "write_plan_yaml"]
