"""`--time_budget`: a fine-tune that ends, evaluated and saved, within a number of seconds.

Two parts. The advisor sizes a plan's epochs to the budget from measured step times (`advisor.rules`), so the run
normally ends on its own with its full schedule. `TimeBudgetCallback` is the safety net for everything else (a busy
machine, a fixed strategy given a budget): when the next step would cross the deadline it stops training cleanly,
Trainer's own way (``control.should_training_stop``); the job then saves and evaluates as after any run, and
``all_results.json`` records that the budget stopped it. The deadline keeps back a reserve for that last
evaluation and the save.
"""

from __future__ import annotations

import time

from transformers import TrainerCallback

from .runtime import say


class TimeBudgetCallback(TrainerCallback):
    """Stop training when the next step would end after ``deadline`` (a `time.perf_counter()` value)."""

    def __init__(self, deadline: float, budget_seconds: float | None = None):
        self.deadline = deadline
        self.budget_seconds = budget_seconds
        self.stopped_at_step: int | None = None
        self._last = None
        self._longest_step = 0.0

    @classmethod
    def from_budget(cls, budget_seconds: float, started: float, reserve_seconds: float) -> "TimeBudgetCallback":
        """``started``: `time.perf_counter()` when the run began (loading counts against the budget)."""
        return cls(started + budget_seconds - reserve_seconds, budget_seconds)

    def on_step_begin(self, args, state, control, **kwargs):
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self._last is not None:
            self._longest_step = max(self._longest_step, now - self._last)
        if now + self._longest_step > self.deadline and not control.should_training_stop:
            control.should_training_stop = True
            self.stopped_at_step = state.global_step
            say(f"time budget{f' of {self.budget_seconds:g}s' if self.budget_seconds else ''} reached at step "
                f"{state.global_step} of {state.max_steps} (epoch {state.epoch or 0:.2f}): training stops here; the "
                "model is evaluated and saved as it is")
        return control


def budget_reserve(budget_seconds: float, n_validation: int = 0, forward_ms_per_image: float | None = None) -> float:
    """Seconds kept back from the training loop for the final evaluation and the save: the measured evaluation time
    plus 5 s when known, else a tenth of the budget (at most 30 s)."""
    if forward_ms_per_image is not None:
        return forward_ms_per_image * n_validation / 1000 + 5.0
    return min(30.0, 0.1 * budget_seconds)


__all__ = ["TimeBudgetCallback", "budget_reserve"]
