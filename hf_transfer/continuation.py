"""A training run that continues an earlier one: the race's next rung of a plan, and the race winner's real run.

Each is a fresh `transformers.Trainer`, which builds a fresh AdamW and a fresh schedule; left alone, every rung would
start its moments at zero and warm up again to the peak rate. Two callbacks make the runs one:

* `RestoreOptimizer` loads the earlier run's AdamW moments once the Trainer has built its optimizer;
* `ContinueSchedule` (`continue_schedule`) makes the fresh schedule step ``offset + s`` of one warm-up and one
  cosine, whose end `budget.set_schedule_horizon` may still move (the deadline's re-plan).
"""

from __future__ import annotations

from functools import partial

from transformers import TrainerCallback

from .budget import set_schedule_lambdas
from .runtime import say


class RestoreOptimizer(TrainerCallback):
    """A `TrainerCallback` that loads an optimizer state once the Trainer has built its optimizer (on_train_begin):
    a plan that trains again (the race's next rung, the winner's real run) keeps its AdamW moments instead of
    starting them from zero. The same plan builds the same parameter groups in the same order; where they differ
    anyway, the optimizer starts fresh and says so."""

    def __init__(self, state: dict, what: str):
        self.state, self.what = state, what

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is None:
            return
        try:
            optimizer.load_state_dict(self.state)
        except (ValueError, KeyError, RuntimeError) as err:  # groups or shapes differ: fresh moments, said once
            say(f"{self.what}: the race's optimizer state does not fit this optimizer ({err}); it starts fresh")


def _continued_lambda(step: int, *, schedule, offset: int, warmup: int, num_training_steps: int, **kwargs) -> float:
    """``schedule`` at step ``offset + step`` of one run whose warm-up is ``warmup`` steps and which ends
    ``num_training_steps`` after this run began (the keyword `set_schedule_horizon` moves)."""
    return schedule(offset + step, num_warmup_steps=warmup, num_training_steps=offset + num_training_steps, **kwargs)


def continue_schedule(scheduler, *, offset: int, warmup_steps: int, horizon: int | None = None) -> bool:
    """Make a fresh transformers schedule the continuation of an earlier one: its step ``s`` becomes step
    ``offset + s`` of a single schedule with ``warmup_steps`` of warm-up, ending ``horizon`` steps from here (None:
    where this run's schedule ends; `set_schedule_horizon` moves it later). The optimizer's rates are set to the
    continued schedule's now. False when the schedule has no horizon."""
    inner = getattr(scheduler, "scheduler", scheduler)
    lambdas = getattr(inner, "lr_lambdas", None)
    if not lambdas or not all(isinstance(f, partial) and "num_training_steps" in f.keywords for f in lambdas):
        return False
    moved = []
    for f in lambdas:
        kw = dict(f.keywords)
        local = int(horizon if horizon is not None else kw["num_training_steps"])
        kw.pop("num_warmup_steps", None)
        kw.pop("num_training_steps")
        moved.append(partial(_continued_lambda, schedule=f.func, offset=int(offset), warmup=int(warmup_steps),
                             num_training_steps=local, **kw))
    set_schedule_lambdas(inner, moved)
    return True


class ContinueSchedule(TrainerCallback):
    """A `TrainerCallback` that turns the Trainer's fresh schedule into the continuation of a plan's earlier training
    (`continue_schedule`): the race's rungs and the winner's real run are one warm-up and one cosine, not a restart
    at the peak rate each time. Added after `RestoreOptimizer` (whose loaded state carries the old rates)."""

    def __init__(self, *, offset: int, warmup_steps: int, horizon: int | None = None, what: str = "the run"):
        self.offset, self.warmup_steps, self.horizon, self.what = offset, warmup_steps, horizon, what

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        if lr_scheduler is not None and not continue_schedule(lr_scheduler, offset=self.offset,
                                                              warmup_steps=self.warmup_steps, horizon=self.horizon):
            kind = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)  # an enum in TrainingArguments
            say(f"{self.what}: the {kind} schedule has no horizon; it restarts instead of continuing")


__all__ = ["ContinueSchedule", "RestoreOptimizer", "continue_schedule"]
