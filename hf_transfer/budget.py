"""`--time_budget`: a deadline, not a cap. The run is planned to end, evaluated and saved, at 95-100% of the budget.

The one place that turns seconds into steps (the advisor's plan, the race's rungs and the fine-tune all call it):

* `steps_that_fit`: how many optimizer steps fit in some seconds, given the step time, the evaluation at each epoch
  end and the reserve for the final evaluation and save;
* `epochs_that_fit`: the same question asked before training, from measured costs (the advisor's plan);
* `DeadlineCallback`: the fine-tune's side. A pre-training estimate of the step time is often off by 2x on a shared
  machine (issue #17: planned at 342 s an epoch, ran at 134 s, 55% of the budget unused), so after the first real
  steps it re-plans the total from the *measured* step time, moves the learning-rate schedule's horizon there
  (warm-up and cosine rescaled, `set_schedule_horizon`), and re-plans again at each epoch end, when the evaluation's
  real cost is known. It stops training at the planned step, Trainer's own way (``control.should_training_stop``),
  and as a safety net earlier when the next step would cross the deadline less the reserve.

What counts: the process's wall time, from its start to its exit. A command-line entry point (recipes/finetune.py,
`hf-transfer finetune`) calls `charge_from_process_start`, so the interpreter's start and the imports (5-40 s on a
shared 2-core machine, uncounted before: 45-120 s budgets overran by ~30%) are charged too; in a library call (a
notebook, a test) the budget counts from the job's own start.

The Trainer decides its epoch loop from ``max_steps`` before the first step, so `attach_deadline` gives it a ceiling
(``ceiling_factor`` times the initial plan) and the callback's planned total, not the ceiling, ends the run.
"""

from __future__ import annotations

import math
import time
from functools import partial
from typing import Callable

from transformers import TrainerCallback

from .runtime import say

# The save's share of the reserve when the weights' write could not be timed (a sharded engine's placeholders).
SAVE_SECONDS = 5.0
# Beside the weights: config, processor, plan, run files, figures, card and the interpreter's exit (its garbage-
# collection walk skipped). 0.2-1 s on the suite's runs, about 2 s on a contended machine; the flat 5 s kept before
# left 4-5 s of a 45 s budget unused (lfw_faces: 89%).
SAVE_OVERHEAD_SECONDS = 2.0
_charge_from_process_start = False


def charge_from_process_start() -> None:
    """For command-line entry points only: the budget's clock starts when the process started, not the job."""
    global _charge_from_process_start
    _charge_from_process_start = True


def run_started(job_started: float) -> float:
    """The `time.perf_counter()` value the budget counts from: the process's start (`charge_from_process_start`),
    else ``job_started``."""
    if not _charge_from_process_start:
        return job_started
    import psutil

    age = time.time() - psutil.Process().create_time()
    return min(job_started, time.perf_counter() - age)


CEILING_FACTOR = 8  # the re-plan may lengthen the run at least this many times the initial estimate
REPLAN_EVERY = 10  # steps between re-plans (besides the first, after warm-up, and each epoch end)


def budget_reserve(budget_seconds: float, eval_seconds: float | None = None, final_evaluations: float = 1.0,
                   save_seconds: float = SAVE_SECONDS) -> float:
    """Seconds kept back from the training loop for the final evaluation(s) and the save: measured evaluation time
    times the evaluations still to run, plus the save, when known; else a tenth of the budget (at most 30 s)."""
    if eval_seconds is not None:
        return eval_seconds * final_evaluations + save_seconds
    return min(30.0, 0.1 * budget_seconds)


def estimate_save_seconds(model) -> float:
    """What writing the trained model costs here: its weights written once with safetensors (the writer the save
    uses, to the temporary directory's disk) and timed, twice that for a busy disk, plus `SAVE_OVERHEAD_SECONDS`.
    A 1 GB ViT on a network disk needs far more than a flat constant, a 13 MB CNN far less. `SAVE_SECONDS` where
    the weights are not all here (ZeRO-3, FSDP: empty placeholders) or the write fails."""
    import tempfile

    from safetensors.torch import save_file

    try:
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
        if not tensors or any(t.numel() == 0 for t in tensors.values()):
            return SAVE_SECONDS
        with tempfile.TemporaryDirectory() as tmp:  # the tensors are detached already
            began = time.perf_counter()
            save_file(tensors, f"{tmp}/weights.safetensors")
            took = time.perf_counter() - began
    except (OSError, RuntimeError, ValueError):
        return SAVE_SECONDS
    return SAVE_OVERHEAD_SECONDS + 2.0 * took


def steps_that_fit(seconds: float, *, step_seconds: float, steps_done: int = 0, steps_per_epoch: int | None = None,
                   eval_seconds: float = 0.0) -> int:
    """The total step count T >= steps_done whose remaining steps, plus one evaluation at each epoch end they reach
    (a run stopped mid-epoch is evaluated too), fit in ``seconds``."""
    if step_seconds <= 0:
        raise ValueError("step_seconds must be positive")

    def cost(total: int) -> float:
        evals = 0
        if steps_per_epoch and eval_seconds:
            evals = math.ceil(total / steps_per_epoch) - steps_done // steps_per_epoch if total > steps_done else 0
        return (total - steps_done) * step_seconds + evals * eval_seconds

    per_step = step_seconds + (eval_seconds / steps_per_epoch if steps_per_epoch else 0.0)
    total = steps_done + max(0, int(seconds // per_step)) + 1
    while total > steps_done and cost(total) > seconds:
        total -= 1
    return total


def epochs_that_fit(seconds: float, *, epoch_seconds: float, overhead_seconds: float = 0.0) -> float:
    """Epochs (fractional) of ``epoch_seconds`` (training + its evaluation) that fit, after a fixed overhead."""
    return max(0.0, (seconds - overhead_seconds) / max(epoch_seconds, 1e-9))


def set_schedule_horizon(scheduler, total_steps: int) -> bool:
    """Move a transformers schedule (cosine, linear, ... with warm-up: a `LambdaLR` of `functools.partial`s with
    ``num_training_steps``) to end at ``total_steps``, rescaling its warm-up in proportion. False when the schedule
    has no horizon to move (constant): then nothing changes."""
    scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler wraps the LambdaLR
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if not lambdas:
        return False
    moved = []
    for f in lambdas:
        if not (isinstance(f, partial) and "num_training_steps" in f.keywords):
            return False
        kw = dict(f.keywords)
        old = max(1, int(kw["num_training_steps"]))
        if "num_warmup_steps" in kw:
            kw["num_warmup_steps"] = int(round(kw["num_warmup_steps"] * total_steps / old))
        kw["num_training_steps"] = int(total_steps)
        moved.append(partial(f.func, *f.args, **kw))
    set_schedule_lambdas(scheduler, moved)
    return True


def set_schedule_lambdas(scheduler, lambdas) -> None:
    """New lambdas for a `LambdaLR`, and the optimizer's rates from them at once (the scheduler would set them only
    at its next step: the current step would run at the old schedule's rate)."""
    scheduler.lr_lambdas = lambdas
    for group, base, rate in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, lambdas):
        group["lr"] = base * rate(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


class DeadlineCallback(TrainerCallback):
    """End the training loop so that the run, its final evaluation and save included, ends at the deadline.

    ``deadline``: a ``clock()`` value; ``planned_steps``: the initial estimate (the run's own epochs); ``reserve``:
    seconds for the final evaluation and save, until an evaluation has been timed; ``final_evaluations``: how many
    validation-sized evaluations follow training (validation, plus the test split's share). ``clock`` is injectable
    for tests.
    """

    def __init__(self, deadline: float, *, planned_steps: int, steps_per_epoch: int, budget_seconds: float | None = None,
                 reserve: float | None = None, final_evaluations: float = 1.0, warmup_steps: int = 3,
                 eval_batches: float = 0.0, save_seconds: float = SAVE_SECONDS,
                 clock: Callable[[], float] = time.perf_counter):
        self.deadline = deadline
        self.save_seconds = save_seconds
        self.budget_seconds = budget_seconds
        self.planned_steps = self.initial_steps = int(planned_steps)
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.reserve = reserve if reserve is not None else budget_reserve(budget_seconds or 0.0)
        self.final_evaluations = final_evaluations
        # Until an evaluation is timed: one costs about half a training step per batch (a forward without the
        # backward; measured 0.4-0.6 on the suite's runs), not zero.
        self.eval_batches = eval_batches
        self.warmup_steps = warmup_steps
        self.replan_every = REPLAN_EVERY
        self.clock = clock
        self.stopped_at_step: int | None = None  # the safety net stopped the run before the planned total
        self.replans: list[dict] = []
        self._step_times: list[float] = []
        self._step_began: float | None = None
        self._last_step_end: float | None = None
        self._eval_seconds: float | None = None
        self._eval_began: float | None = None
        self._ceiling: int | None = None
        self._scheduler = None

    # ------------------------------------------------------------------ measurement
    @property
    def step_seconds(self) -> float | None:
        if not self._step_times:
            return None
        recent = sorted(self._step_times[-20:])
        return recent[len(recent) // 2]  # the median: one slow step (a busy neighbour) does not re-plan the run

    @property
    def eval_seconds(self) -> float | None:
        """One evaluation: measured once one has run, else estimated from the step time (None: unknown)."""
        if self._eval_seconds is not None:
            return self._eval_seconds
        if self.eval_batches and self.step_seconds is not None:
            return 0.5 * self.step_seconds * self.eval_batches
        return None

    def _next_step_forecast(self) -> float:
        """The safety net's forecast of the next step: the second slowest of the last five. A lone slow step (the
        first one's allocations; a neighbour's burst stalling spinning threads, 10x for a step) is no forecast: it
        stopped mnist300's 60 s run at 83% of its budget; two in five are."""
        recent = sorted(self._step_times[-5:])
        return recent[-2] if len(recent) >= 2 else (recent[-1] if recent else 0.0)

    def current_reserve(self) -> float:
        """The final evaluation(s) and save: from the evaluation's time once known, else the initial reserve."""
        if self.eval_seconds is None:
            return self.reserve
        return max(budget_reserve(0.0, self.eval_seconds, self.final_evaluations, self.save_seconds),
                   self.reserve if self._eval_seconds is None else 0.0)

    def replan(self, global_step: int, steps_bound_to_run: int = 0, evaluation_follows: bool = False) -> int:
        """Re-plan the total from the measured times; ``steps_bound_to_run``: steps that run whatever the plan says
        (an epoch that has begun runs its first step before any stop is read), so the planned total counts them;
        ``evaluation_follows``: at an epoch's last step, its evaluation comes before any further step."""
        now = self.clock()
        eval_seconds = self.eval_seconds or 0.0
        pending = eval_seconds if evaluation_follows else 0.0
        total = steps_that_fit(self.deadline - self.current_reserve() - pending - now, step_seconds=self.step_seconds, steps_done=global_step,
                               steps_per_epoch=self.steps_per_epoch, eval_seconds=eval_seconds)
        if self._ceiling is not None and total > self._ceiling:
            total = self._ceiling
        total = max(total, global_step + steps_bound_to_run)
        if total != self.planned_steps:
            set_schedule_horizon(self._scheduler, total) if self._scheduler is not None else None
        self.replans.append({"at_step": global_step, "total_steps": total, "step_seconds": round(self.step_seconds, 4),
                             "eval_seconds": None if self._eval_seconds is None else round(self._eval_seconds, 3),
                             "seconds_left": round(self.deadline - now, 2)})
        self.planned_steps = total
        return total

    # ------------------------------------------------------------------ Trainer events
    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        self._ceiling = state.max_steps or None
        self._scheduler = lr_scheduler
        if lr_scheduler is not None and not set_schedule_horizon(lr_scheduler, self.planned_steps):
            say(f"--time_budget: the {args.lr_scheduler_type} schedule has no horizon to move; steps are re-planned, "
                "the learning rate is not")

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_began = self.clock()

    def on_evaluate(self, args, state, control, **kwargs):
        if self._eval_began is not None:
            took = self.clock() - self._eval_began
            self._eval_seconds = took if self._eval_seconds is None else max(self._eval_seconds, took)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._eval_began = self.clock()  # Trainer evaluates right after this event (eval_strategy epoch)

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self._eval_began is not None and state.global_step >= self.warmup_steps and self._step_times:
            if self._eval_seconds is None:  # no evaluation event: count the epoch end's whole pause instead
                self._eval_seconds = self.clock() - self._eval_began
            self.replan(state.global_step, steps_bound_to_run=1)
        self._eval_began = None

    def on_step_end(self, args, state, control, **kwargs):
        now = self.clock()
        if self._step_began is not None:
            self._step_times.append(now - self._step_began)
        since = state.global_step - (self.replans[-1]["at_step"] if self.replans else 0)
        periodic = since >= self.replan_every and state.global_step % self.steps_per_epoch != 0  # an epoch's last
        # step is followed by its evaluation, which the epoch-begin re-plan counts
        if state.global_step == self.warmup_steps or (self.replans and periodic):
            # and every REPLAN_EVERY steps: a run shorter than an epoch has no epoch end to re-plan at, and its
            # first steps are slow (allocations, cold caches): the embedded default's auto run, planned from 3 steps,
            # stopped at 81% of its 300 s
            self.replan(state.global_step)
        if control.should_training_stop:
            return control
        if state.global_step >= self.planned_steps and self.replans and self.replans[-1]["at_step"] != state.global_step:
            # confirmed from the latest step times before it ends the run: a plan made from 3 slow first steps
            # (a neighbour's spinning threads) ended a 120 s run at 28% of its budget,
            # before the next periodic re-plan came
            self.replan(state.global_step, evaluation_follows=state.global_step % self.steps_per_epoch == 0)
        if state.global_step >= self.planned_steps:
            control.should_training_stop = True
        elif now + self._next_step_forecast() > self.deadline - self.current_reserve():
            control.should_training_stop = True
            self.stopped_at_step = state.global_step
            say(f"time budget{f' of {self.budget_seconds:g}s' if self.budget_seconds else ''} reached at step "
                f"{state.global_step} of {self.planned_steps} planned (epoch {state.epoch or 0:.2f}): training stops "
                f"here; the model is evaluated and saved as it is (last re-plan: {self.replans[-1] if self.replans else None})")
        return control

    def summary(self) -> dict:
        """Planned against used, as flat numbers (all_results.json, advice.json); the re-plans are in ``replans``."""
        return {"time_budget_seconds": self.budget_seconds, "time_budget_initial_steps": self.initial_steps,
                "time_budget_planned_steps": self.planned_steps, "time_budget_replans": len(self.replans),
                "stopped_by_time_budget": self.stopped_at_step is not None}


class StopAt(TrainerCallback):
    """Ends a short run (the race's rung) before the step that would pass a clock time (`time.perf_counter`): it
    cannot overrun its share of the budget when the steps slow down (mnist300 at 60 s: a rung planned from 5-step
    timings ran 35% longer and the run ended at 106% of its budget)."""

    def __init__(self, until: float, clock: Callable[[], float] = time.perf_counter):
        self.until, self.clock, self._began = until, clock, None

    def on_step_begin(self, args, state, control, **kwargs):
        self._began = self.clock()

    def on_step_end(self, args, state, control, **kwargs):
        now = self.clock()
        if self._began is not None and now + (now - self._began) > self.until:
            control.should_training_stop = True


def attach_deadline(trainer, budget_seconds: float, started: float, *, final_evaluations: float = 1.0) -> DeadlineCallback:
    """Give ``trainer`` a deadline ``budget_seconds`` after ``started`` (`time.perf_counter()`): its run length
    (--num_train_epochs / --max_steps) becomes the first estimate, re-planned from the measured step time."""
    args = trainer.args
    batch = args.per_device_train_batch_size * max(1, args.world_size) * max(1, args.gradient_accumulation_steps)
    n_train = len(trainer.train_dataset)
    steps_per_epoch = max(1, n_train // batch if args.dataloader_drop_last else math.ceil(n_train / batch))
    planned = args.max_steps if args.max_steps and args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    # The epoch loop's bound (the callback's total ends the run): room for the re-plan to lengthen a short first
    # estimate (1 epoch of a small set is a few steps) up to 10 ms a step over the whole budget.
    args.max_steps = max(max(1, planned) * CEILING_FACTOR, int(budget_seconds / 0.01))
    evaluates = args.eval_strategy not in ("no", None) and trainer.eval_dataset is not None
    eval_batches = math.ceil(len(trainer.eval_dataset) / max(1, args.per_device_eval_batch_size)) if evaluates else 0
    callback = DeadlineCallback(started + budget_seconds, planned_steps=max(1, planned), steps_per_epoch=steps_per_epoch,
                                budget_seconds=budget_seconds, final_evaluations=final_evaluations,
                                eval_batches=eval_batches, save_seconds=estimate_save_seconds(trainer.model))
    trainer.add_callback(callback)
    return callback


__all__ = ["CEILING_FACTOR", "DeadlineCallback", "StopAt", "attach_deadline", "budget_reserve", "charge_from_process_start",
           "epochs_that_fit", "estimate_save_seconds", "run_started", "set_schedule_horizon", "set_schedule_lambdas",
           "steps_that_fit"]
