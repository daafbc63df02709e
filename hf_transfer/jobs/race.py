"""The race behind `recipes/finetune.py --strategy auto`: the candidate plans trained briefly on the user's own
training split, scored on a held-out part of it, halved rung by rung; the winner's weights start the real run.

The rules (which plans, how a rung is judged, who wins) are `hf_transfer.advisor.race`; this job runs them: how many
rungs, how many steps each, when the race stops, and what the winner's real run starts from. `race_training.py`
trains and scores the candidates, with the fine-tune job's own pieces (`TransferPlan`, `TransferTrainer`, the
prepared image store) and the probe job's (`compute_features`, a logistic regression), on the same decoded images,
in one process: the rungs are seconds long, so loading the data and the backbone once per rung would eat the race.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from ..advisor.race import (CORRECT_ATTR, CandidatePlan, RaceRecord, candidate_plans, choose_winner, fill_plan,
                            make_pruner)
from ..advisor.rules import Thresholds
from ..budget import StopAt, steps_that_fit
from ..continuation import ContinueSchedule, RestoreOptimizer
from ..runtime import say
from .race_training import RaceTrainer
from .soup import greedy_soup

MIN_RUNG_STEPS = 5
RUNG_OVERHEAD_SECONDS = 3.0  # a fine-tune rung beyond its steps (trainer set-up, the held-out prediction): first guess
MIN_RUNG_OVERHEAD_SECONDS = 1.0  # ... and the least it is taken to be once measured
# The probe's final run beyond its forward pass (load, fits, report, export), in rung overheads: on dev textures at
# load 1 it took 1.6 s against rung overheads of 0.3 s (taken as the 1 s floor); the fixed 4 s it replaces left
# every probe winner 5-6% of its budget unused.
FINAL_RUN_OVERHEADS = 2.0


@dataclasses.dataclass
class RaceOutcome:
    winner: CandidatePlan
    record: RaceRecord
    start_folder: str | None  # the fine-tuned weights the real run continues from (None: a probe, or from scratch)
    optimizer_state: dict | None = None  # the winner's AdamW moments at its last rung (None: a probe, or a soup)


def affordable(plans: list[CandidatePlan], m, race_seconds: float, t: Thresholds, probe_images: int) -> list[CandidatePlan]:
    """The plans whose first rung fits the race's time: the probes' forward pass first, then each fine-tune's
    MIN_RUNG_STEPS steps and set-up (one rung: while a probe leads, the fill rungs train it on; asking for two left
    mnist300 at 60 s with no fine-tune in the race and 40% of the budget unused). When the default fine-tune does
    not fit, the pooled probe is the default."""
    # the held-out images always; the race train too when the measurement's cached subsample is all of it
    images = min(t.holdout_max_images, m.size.n_train) + (m.size.n_train if m.size.n_train <= probe_images + t.holdout_max_images else 0)
    probe_cost = m.cost.forward_ms_per_image * images / 1000
    left = race_seconds - (probe_cost if any(p.job == "probe" for p in plans) else 0.0)
    kept = []
    for plan in sorted(plans, key=lambda p: not p.is_default):  # the default is paid for first
        if plan.job == "finetune":
            cost = MIN_RUNG_STEPS * m.cost.step_seconds(plan.trainable_share) + RUNG_OVERHEAD_SECONDS
            if cost > left:
                say(f"race: {plan.name} left out: its shortest rung (~{cost:.0f}s) does not fit the {race_seconds:.0f}s "
                    "the budget leaves")
                continue
            left -= cost
        kept.append(plan)
    if not any(p.is_default for p in kept):
        fallback = CandidatePlan("probe pooled", "probe", "linear_probe", "the default when the budget fits no "
                                 "fine-tune: a linear probe on the pooled bottleneck", layers="pooled",
                                 backbone_lr_multiplier=0.0, is_default=True)
        kept = [fallback] + [p for p in kept if p.name != fallback.name]
    return kept


def final_run_overhead(t: Thresholds, rung_overhead: float | None) -> float:
    """A probe winner's final run beyond its forward pass (loading, the fits, the report, saving):
    ``FINAL_RUN_OVERHEADS`` of the race's measured rung overhead once a rung has run (it slows with the machine as
    they do), never more than the prior ``in_process_overhead_seconds``."""
    return t.in_process_overhead_seconds if rung_overhead is None else min(
        t.in_process_overhead_seconds, FINAL_RUN_OVERHEADS * rung_overhead)


def final_probe_seconds(m, t: Thresholds, rung_overhead: float | None = None) -> float:
    """The probe job's final run when time is short: on the measurement's subsample (features cached), one forward
    over validation and a test split of about its size, and `final_run_overhead` (`run_advised_probe` sizes the
    probe's training images to the time actually left)."""
    return m.cost.forward_ms_per_image * 2 * m.size.n_validation / 1000 + final_run_overhead(t, rung_overhead)


def unbudgeted_rung_steps(rung: int) -> int:  # a fine-tune's steps in a rung of a race without a budget: 20, 40, ..
    return MIN_RUNG_STEPS * 4 * 2 ** rung


def run_race(measurement, data, model_args, training_args, *, image_size: int, deadline: float | None,
             output_dir: str | Path, thresholds: Thresholds | None = None, probe_images: int = 1000,
             cache=None, run_steps: int | None = None) -> RaceOutcome:
    """Race the candidate plans; ``deadline`` (`time.perf_counter()`, None: no budget) bounds the race to
    ``race_share`` of the time left; without one, ``run_steps`` is the steps of a fine-tune winner's real run (its
    rungs are stretches of one warm-up and cosine that the run continues, as the budget's are)."""
    import optuna

    t = thresholds or Thresholds()
    began = time.perf_counter()
    output_dir = Path(output_dir)
    plans = candidate_plans(measurement, t)
    race_seconds = None if deadline is None else t.race_share * max(0.0, deadline - began)
    if race_seconds is not None:  # a fine-tune races if its first rung fits the time left: while a probe leads the
        # race takes the budget (filling it), and a fine-tune winner keeps its race weights
        plans = affordable(plans, measurement, deadline - began - final_probe_seconds(measurement, t), t, probe_images)
    by_name = {p.name: p for p in plans}
    default = next(p.name for p in plans if p.is_default)
    say(f"race: {len(plans)} candidate plans ({', '.join(plans_names := [p.name for p in plans])}); default "
        f"{default!r}" + (f"; {race_seconds:.0f}s for the race" if race_seconds is not None else ""))
    race = RaceTrainer(measurement, data, model_args, training_args, image_size, t, output_dir, probe_images, cache)
    record = RaceRecord([p.as_dict() for p in plans], holdout_images=len(race.holdout_labels))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=make_pruner(default, t.decision_z, probes=frozenset(
                                    p.name for p in plans if p.job == "probe")),
                                sampler=optuna.samplers.RandomSampler(seed=training_args.seed))
    dist = {"plan": optuna.distributions.CategoricalDistribution(plans_names)}
    trials = {}
    for name in plans_names:
        study.enqueue_trial({"plan": name})
        trials[name] = study.ask(dist)
    finetunes = [p.name for p in plans if p.job == "finetune"]
    n_rungs = max(1, math.ceil(math.log2(max(1, len(finetunes))))) + 1 if finetunes else 1
    race_end = None if race_seconds is None else began + race_seconds
    alive = list(plans_names)
    correct: dict[str, np.ndarray] = {}
    probe_began = time.perf_counter()
    correct.update(race.score_probes([by_name[n] for n in alive if by_name[n].job == "probe"]))
    probe_seconds = time.perf_counter() - probe_began
    overhead = RUNG_OVERHEAD_SECONDS  # re-measured after each rung
    measured_overhead = None  # ... None until a rung has run
    last_steps: dict[str, int] = {}
    rung = 0
    while True:
        rung_began = time.perf_counter()
        live_finetunes = [n for n in alive if by_name[n].job == "finetune"]
        if not live_finetunes or (rung > 0 and race_end is None and rung >= n_rungs):
            break
        if rung < n_rungs:
            if race_end is None:
                steps_for = {n: unbudgeted_rung_steps(rung) for n in live_finetunes}
            else:
                # every fine-tune trains the same steps in a rung (halving compares plans at equal resource; equal
                # time gave a default three times slower a step 43 steps to `partial`'s 106, and it fell behind)
                rung_seconds = (race_end - rung_began) / (n_rungs - rung) - overhead * len(live_finetunes)
                rung_steps = int(rung_seconds / sum(race.estimated_step_seconds(by_name[n]) for n in live_finetunes))
                if rung > 0 and rung_steps < MIN_RUNG_STEPS:  # out of race time: judge on the last complete rung
                    say(f"race: no time for rung {rung} ({rung_seconds:.0f}s); judged on rung {rung - 1}")
                    rung = n_rungs
                    continue
                steps_for = {n: max(MIN_RUNG_STEPS, rung_steps) for n in live_finetunes}
        else:
            # Filling the budget: while a probe leads, one fine-tune (`fill_plan`: the default, unless another
            # beats it) trains on, its steps doubling (successive halving's growing resource), until the time left
            # is the probe's final run; a fine-tune that catches up stops the race, and the real run continues it.
            if deadline is None:
                break
            leader = choose_winner({n: correct[n] for n in alive}, default, t.decision_z).winner
            if by_name[leader].job != "probe":
                break
            live_finetunes = [fill_plan({n: correct[n] for n in live_finetunes}, default, t.decision_z)]
            left = deadline - rung_began - final_probe_seconds(measurement, t, measured_overhead)
            per_plan = left - overhead
            fits = {n: steps_that_fit(per_plan, step_seconds=race.estimated_step_seconds(by_name[n]))
                    for n in live_finetunes}
            # doubling, until what the doubled rung would leave is too short for another: then all of it (a rest
            # left unused is budget lost: 75% used at 300 s before)
            steps_for = {n: fits[n] if fits[n] <= 4 * last_steps.get(n, MIN_RUNG_STEPS)
                         else 2 * last_steps.get(n, MIN_RUNG_STEPS) for n in live_finetunes}
            if min(steps_for.values()) < MIN_RUNG_STEPS:
                record.ran_out_of_time = True
                break
        rung_row = {}
        hard_end = None if deadline is None else deadline - final_probe_seconds(measurement, t, measured_overhead)
        for i, name in enumerate(alive):
            plan = by_name[name]
            started = time.perf_counter()
            steps = 0
            if plan.job == "finetune" and name not in steps_for:
                pass  # filling the budget: not the plan that trains on, it keeps its last rung's score
            elif plan.job == "finetune":
                left_here = [n for n in alive[i:] if n in steps_for]
                # never into the final run's time: at most this plan's share (by its step time) of what is left
                def share_of(names):  # this plan's share of the time of ``names``' steps (equal steps each)
                    return race.estimated_step_seconds(plan) / sum(race.estimated_step_seconds(by_name[n]) for n in names)

                until = None if hard_end is None else started + (hard_end - started) * share_of(left_here) - overhead
                horizon = None
                if deadline is None and run_steps is not None:  # its rungs, then the real run's planned epochs
                    horizon = race.steps_done(name) + sum(map(unbudgeted_rung_steps, range(rung, n_rungs))) + run_steps
                elif deadline is not None:  # its steps in all should it win: those done, then what fits of the time
                    # left once the others' share of the race is spent (none while filling the budget); the real
                    # run re-plans its end from its own steps, this places the rungs on one cosine
                    others = max(0.0, race_end - started) * (1 - share_of(steps_for)) if rung < n_rungs else 0.0
                    left = max(0.0, deadline - started - others - t.in_process_overhead_seconds)
                    horizon = race.steps_done(name) + steps_that_fit(
                        left, step_seconds=race.estimated_step_seconds(plan))
                correct[name], steps = race.train_rung(plan, steps_for[name], until=until, horizon=horizon)
                last_steps[name] = steps
                overhead = measured_overhead = max(MIN_RUNG_OVERHEAD_SECONDS, (time.perf_counter() - started)
                                                   - steps * race.estimated_step_seconds(plan))
            acc = float(correct[name].mean())
            trials[name].set_user_attr(CORRECT_ATTR, correct[name].tolist())
            trials[name].report(acc, step=rung)
            rung_row[name] = {"steps": steps, "accuracy": round(acc, 4),
                              "se": round(float(np.sqrt(acc * (1 - acc) / len(correct[name]))), 4),
                              "seconds": round(time.perf_counter() - started if steps else
                                               (probe_seconds if rung == 0 else 0.0), 1), "dropped": False,
                              # 0/1 per held-out image: the race can be replayed at other thresholds (bench_suite.py)
                              "correct": "".join(map(str, correct[name].tolist()))}
        if rung < n_rungs - 1:
            dropped = [name for name in alive if trials[name].should_prune()]  # all judged, then told
            for name in dropped:
                study.tell(trials[name], state=optuna.trial.TrialState.PRUNED)
                rung_row[name]["dropped"] = True
                alive.remove(name)
        record.rungs.append({"rung": rung, "seconds": round(time.perf_counter() - rung_began, 1), "plans": rung_row,
                             "filling_the_budget": rung >= n_rungs})
        say(f"race rung {rung}: " + ", ".join(f"{n} {r['accuracy']:.3f}{' (dropped)' if r['dropped'] else ''}"
                                             f" [{r['steps']} steps]" for n, r in rung_row.items()))
        rung += 1
    final = {n: correct[n] for n in alive}
    verdict = choose_winner(final, default, t.decision_z, fallback=not record.ran_out_of_time)
    record.verdict = dataclasses.asdict(verdict)
    record.final_correct = {n: correct[n].tolist() for n in alive}
    for name in alive:
        study.tell(trials[name], float(correct[name].mean()))
    say(f"race verdict: {verdict.reason}")
    winner = by_name[verdict.winner]
    trained = race.contenders.get(winner.name)  # None: a probe won, or a fine-tune that never trained a rung
    start_model, optimizer_state = (trained.model, trained.optimizer_state) if trained else (None, None)
    finalists = [n for n in alive if by_name[n].job == "finetune"]
    if len(finalists) >= 2:
        soup_record, soup = greedy_soup(race, finalists, correct)
        winner_acc = float(correct[winner.name].mean())
        soup_record["kept"] = bool(soup is not None and winner.job == "finetune" and soup[1].mean() > winner_acc)
        soup_record["versus"] = winner.name
        if soup_record["kept"]:
            start_model, optimizer_state = soup[0], None  # averaged weights: no one plan's moments fit them
        record.soup = soup_record
        say(f"model soup of {', '.join(soup_record['ingredients'])}: {soup_record['accuracy']:.3f} on the held-out "
            f"images against {winner_acc:.3f} for {winner.name}: " + ("kept" if soup_record["kept"] else "not kept"))
    start_folder = None
    if winner.job == "finetune" and start_model is not None:
        from ..saving import save_model_folder

        start_folder = str(output_dir / "race" / "start")
        save_model_folder(start_model, start_folder, image_size=image_size)
    record.seconds = round(time.perf_counter() - began, 1)
    if deadline is not None:  # what a probe winner's final run may take beyond its forward (`run_advised_probe`)
        record.final_run_overhead_seconds = round(final_run_overhead(t, measured_overhead), 2)
    if start_folder and trained.warmup_steps is not None:
        record.winner_schedule = {"offset": trained.steps_done, "warmup_steps": trained.warmup_steps}
    return RaceOutcome(winner, record, start_folder, optimizer_state if start_folder else None)


__all__ = ["RaceOutcome", "run_race", "unbudgeted_rung_steps"]
