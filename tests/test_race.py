"""The race's rules: similarity as headroom, paired standard errors, the default when the noise cannot decide,
successive halving through Optuna's pruner interface."""

import dataclasses

import numpy as np
import optuna
import pytest

from hf_transfer.advisor import BackboneMeasurement, CostStats, DepthMeasure, SimilarityStats, SizeStats, Thresholds
from hf_transfer.advisor.race import (CORRECT_ATTR, candidate_plans, choose_winner, default_plan, make_pruner,
                                      paired_difference, survivors)
from hf_transfer.advisor.rules import decide, is_similar

BODY = 8


def measurement(curve, pooled, per_class, std=0.01):
    depths = [DepthMeasure(f"depth {d}", d, 64, curve[d], std, 0.1) for d in range(BODY)]
    depths.append(DepthMeasure("pooled", None, 1280, pooled, std, 0.3))
    size = SizeStats(sum(per_class), 300, len(per_class), per_class, [str(i) for i in range(len(per_class))])
    return BackboneMeasurement("embedded:efficientnet_lite0", size, SimilarityStats(depths, BODY, None, 1000, 3),
                               CostStats(5.0, 0.5, 32, 224), 1e-2, True)


def test_a_flat_curve_of_weak_probes_reads_as_dissimilar():
    """Issue #17's case: CV 0.76 at the stem to 0.84 at the top over a 0.69 majority class, the bottleneck level
    with the best depth. The old rule (bottleneck gap <= 1 point) called it similar and froze half the body."""
    curve = list(np.linspace(0.76, 0.84, BODY))
    flat_weak = measurement(curve, pooled=0.837, per_class=[1380, 620])
    similar, why = is_similar(flat_weak, Thresholds())
    assert not similar and "headroom" in why
    assert decide(flat_weak).scenario.endswith("dissimilar")
    # the same flat curve, strong: the features solve the task -> similar
    strong = measurement([c + 0.15 for c in curve], pooled=0.987, per_class=[1380, 620])
    assert is_similar(strong, Thresholds())[0]
    # strong, but the bottleneck falls behind the best depth beyond 2 SE -> dissimilar
    peaked = measurement([0.9] * (BODY - 1) + [0.99], pooled=0.95, per_class=[1000, 1000])
    assert not is_similar(peaked, Thresholds())[0]


def _pair(n, both, only_a, only_b):
    """Two correctness vectors over n images: both right on ``both``, a alone on ``only_a``, b alone on ``only_b``."""
    a, b = np.zeros(n, dtype=np.int8), np.zeros(n, dtype=np.int8)
    a[:both] = b[:both] = 1
    a[both:both + only_a] = 1
    b[both + only_a:both + only_a + only_b] = 1
    return a, b


def test_a_margin_below_two_standard_errors_falls_back_to_the_default():
    leader, default = _pair(300, 240, 8, 3)  # +5 images of 300: +1.7 points, SE of the paired difference ~1.1
    margin, se = paired_difference(leader, default)
    assert margin == pytest.approx(5 / 300) and 0 < margin < 2 * se
    verdict = choose_winner({"partial": leader, "full x0.1": default}, "full x0.1", z=2.0)
    assert verdict.leader == "partial" and verdict.winner == "full x0.1" and "robust default" in verdict.reason
    # the same leader, 20 images better with few discordant pairs: beyond 2 SE, it wins
    leader, default = _pair(300, 240, 21, 1)
    margin, se = paired_difference(leader, default)
    assert margin > 2 * se
    assert choose_winner({"partial": leader, "full x0.1": default}, "full x0.1", z=2.0).winner == "partial"
    # at x0.5 of the threshold (z = 1) the small margin would have fired: the threshold is what holds it back
    leader, default = _pair(300, 240, 8, 3)
    assert choose_winner({"partial": leader, "full x0.1": default}, "full x0.1", z=1.0).winner == "partial"


def test_a_race_that_filled_the_budget_crowns_its_leader_not_an_untrained_default():
    """Once the race has used the budget to its end, no plan trains further: the default within the noise of the
    leader would be a default trained on a fraction of the budget (dev half: mnist1k, digits_8x8), so the leader by
    held-out accuracy wins; with time left the noise still sends it back to the default."""
    leader, default = _pair(300, 240, 8, 3)
    plans = {"probe 10": leader, "full x0.1": default}
    assert choose_winner(plans, "full x0.1", z=2.0).winner == "full x0.1"
    verdict = choose_winner(plans, "full x0.1", z=2.0, fallback=False)
    assert verdict.winner == verdict.leader == "probe 10" and "filled the budget" in verdict.reason
    # the default leading stays the default either way
    assert choose_winner({"probe 10": default, "full x0.1": leader}, "full x0.1", z=2.0, fallback=False).winner == "full x0.1"


def test_halving_keeps_the_better_half_the_default_and_whatever_the_noise_cannot_separate():
    rng = np.random.default_rng(0)
    n = 400
    base = (rng.random(n) < 0.9).astype(np.int8)
    def worse(k):  # base with k right answers turned wrong
        out = base.copy()
        out[np.flatnonzero(out)[:k]] = 0
        return out
    correct = {"a": base, "b": worse(2), "c": worse(60), "d": worse(80), "default": worse(120)}
    # a, b within the noise of each other; c, d far behind; the default kept whatever it scored
    assert survivors(correct, "default", z=2.0, keep=2) == ["a", "b", "default"]
    # through Optuna: one trial per plan, a rung reported by all, then judged
    study = optuna.create_study(direction="maximize", pruner=make_pruner("default", 2.0))
    dist = {"plan": optuna.distributions.CategoricalDistribution(list(correct))}
    trials = {}
    for name, hits in correct.items():
        study.enqueue_trial({"plan": name})
        trial = study.ask(dist)
        assert trial.params["plan"] == name
        trial.set_user_attr(CORRECT_ATTR, hits.tolist())
        trial.report(float(hits.mean()), step=0)
        trials[name] = trial
    pruned = {name for name, trial in trials.items() if trial.should_prune()}
    assert pruned == {"c", "d"}


def test_a_probe_neither_drops_nor_is_dropped_by_a_short_fine_tune_rung():
    """A probe's score is final at rung 0, a fine-tune's after 5 steps is not: halving compares equal resources
    (mnist300: a 5-step fine-tune at 0.27 against a probe's 0.98 was dropped and the budget went unused)."""
    rng = np.random.default_rng(1)
    probe = (rng.random(300) < 0.98).astype(np.int8)
    correct = {"probe": probe, "ft_a": (rng.random(300) < 0.27).astype(np.int8),
               "ft_b": (rng.random(300) < 0.6).astype(np.int8), "probe_weak": (rng.random(300) < 0.1).astype(np.int8)}

    def pruned_with(probes):
        study = optuna.create_study(direction="maximize", pruner=make_pruner("probe", 2.0, probes=probes))
        dist = {"plan": optuna.distributions.CategoricalDistribution(list(correct))}
        trials = {}
        for name, hits in correct.items():
            study.enqueue_trial({"plan": name})
            trials[name] = study.ask(dist)
            trials[name].set_user_attr(CORRECT_ATTR, hits.tolist())
            trials[name].report(float(hits.mean()), step=0)
        return {name for name, trial in trials.items() if trial.should_prune()}

    # the fine-tunes are judged among themselves (ft_b beats ft_a beyond the noise); no probe is judged
    assert pruned_with(frozenset({"probe", "probe_weak"})) == {"ft_a"}
    # without the rule the probes are halved with the fine-tunes: the weak probe goes too
    assert pruned_with(frozenset()) == {"ft_a", "probe_weak"}


def test_candidates_are_three_to_five_plans_with_the_documented_default():
    t = Thresholds()
    curve = [0.5 + 0.05 * d for d in range(BODY)]
    big = measurement(curve, pooled=0.8, per_class=[150] * 10)  # 1,500 images
    plans = candidate_plans(big, t)
    assert 3 <= len(plans) <= 5 and plans[0].is_default and sum(p.is_default for p in plans) == 1
    assert (plans[0].strategy, plans[0].backbone_lr_multiplier) == ("full", 0.1)
    assert {p.job for p in plans} == {"probe", "finetune"}
    small = measurement(curve, pooled=0.8, per_class=[50] * 10)  # 500 images: the pooled probe is the default
    assert (default_plan(small, t).job, default_plan(small, t).layers) == ("probe", "pooled")


def _race_record(m, correct_by_rung, dropped_after_first=()):
    """An auto run's record (as advice.json / the suite keep it): the candidates, every rung's 0/1 per image."""
    names = [p.name for p in candidate_plans(m, Thresholds())]
    rungs = []
    for i, correct in enumerate(correct_by_rung):
        plans = {n: {"correct": "".join(map(str, c)), "dropped": i == 0 and n in dropped_after_first}
                 for n, c in correct.items()}
        rungs.append({"rung": i, "plans": plans, "filling_the_budget": False})
    return {"measurement": m.as_dict(), "candidates": names, "default": names[0], "rungs": rungs}


def test_a_recorded_race_replays_at_other_thresholds_without_training():
    """The sensitivity lines: the verdict re-taken from the recorded rungs. At the thresholds it ran with the replay
    gives the recorded winner; at half the decision z a small margin fires; where a changed threshold would keep a
    plan that the race dropped, the replay refuses (its later rungs were never trained)."""
    from hf_transfer.advisor.replay import replay, scaled

    curve = [0.5 + 0.05 * d for d in range(BODY)]
    m = measurement(curve, pooled=0.8, per_class=[150] * 10)  # 1,500 images: full x0.1 is the default
    names = [p.name for p in candidate_plans(m, Thresholds())]
    assert names[0] == "full x0.1" and {"partial depth:4", f"probe {BODY - 1}"} <= set(names)
    t = Thresholds()
    leader, default = _pair(300, 240, 8, 3)  # +1.7 points, within 2 SE, beyond 1 SE
    rung0 = {n: default for n in names}
    rung0["partial depth:4"] = leader
    record = _race_record(m, [rung0, {"full x0.1": default, "partial depth:4": leader, f"probe {BODY - 1}": default}])
    assert replay(record, t).winner == "full x0.1"
    assert replay(record, scaled(t, "decision_z", 0.5)).winner == "partial depth:4"
    # a race that filled the budget crowned its leader (no fallback): the flag, or in a suite record written before
    # the bench kept it, the verdict's reason
    assert replay({**record, "ran_out_of_time": True}, t).winner == "partial depth:4"
    verdict = choose_winner({"full x0.1": default, "partial depth:4": leader}, "full x0.1", 2.0, fallback=False)
    assert replay({**record, "verdict": dataclasses.asdict(verdict)}, t).winner == "partial depth:4"
    # a far worse fine-tune, dropped after rung 0; at z x2 it would stay within the noise of the leader
    worse = leader.copy()
    worse[np.flatnonzero(worse)[:12]] = 0
    rung0 = {n: default for n in names}
    rung0.update({"partial depth:4": leader, "full x0.1": leader, names[-1]: worse})
    record = _race_record(m, [rung0, {n: leader for n in names if n != names[-1]}], dropped_after_first={names[-1]})
    assert not names[-1].startswith("probe")
    assert replay(record, t).winner == "full x0.1"
    refused = replay(record, scaled(t, "decision_z", 2.0))
    assert refused.winner is None and "never trained" in refused.why


def fake_race(monkeypatch, tmp_path, accuracy: dict[str, float], step_seconds: dict[str, float],
              budget: float | None, keeps_weights: bool = False, run_steps: int | None = None):
    """The race's loop with the training faked (each rung sleeps its steps' time, scores are fixed): the outcome and
    the steps each fine-tune trained, rung by rung."""
    import dataclasses
    import time
    import types

    from hf_transfer.jobs import race as race_job
    from hf_transfer.jobs.race_training import Contender

    m = dataclasses.replace(measurement(list(np.linspace(0.6, 0.9, BODY)), 0.88, [300] * 4),
                            cost=CostStats(0.01, max(step_seconds.values()), 32, 224))
    n = 200
    trained: dict[str, list[int]] = {name: [] for name in step_seconds}
    horizons: dict[str, list[int]] = {name: [] for name in step_seconds}

    def right(acc):
        return (np.arange(n) < round(acc * n)).astype(np.int8)

    class FakeRace:
        def __init__(self, *args, **kwargs):
            self.holdout_labels = np.zeros(n)
            self.contenders = {}

        steps_done = race_job.RaceTrainer.steps_done

        def score_probes(self, plans):
            return {p.name: right(accuracy[p.name]) for p in plans}

        def estimated_step_seconds(self, plan):
            return step_seconds[plan.name]

        def train_rung(self, plan, steps, until=None, horizon=None):
            trained[plan.name].append(steps)
            horizons[plan.name].append(horizon)
            # a fine-tune winner's weights are saved for its real run (the save is faked); None: no weights kept
            kept = object() if keeps_weights else None
            contender = self.contenders.setdefault(plan.name, Contender(kept, warmup_steps=1))
            contender.steps_done += steps
            time.sleep(steps * step_seconds[plan.name])
            return right(accuracy[plan.name]), steps

    monkeypatch.setattr(race_job, "RaceTrainer", FakeRace)
    # a rung's overhead (guessed, and its floor once measured) is sized for real rungs of seconds
    monkeypatch.setattr(race_job, "RUNG_OVERHEAD_SECONDS", 0.1)
    monkeypatch.setattr(race_job, "MIN_RUNG_OVERHEAD_SECONDS", 0.05)
    monkeypatch.setattr(race_job, "greedy_soup", lambda race, finalists, correct: ({"ingredients": finalists, "accuracy": 0.0}, None))
    t = Thresholds(in_process_overhead_seconds=0.2)
    began = time.perf_counter()
    outcome = race_job.run_race(m, None, None, types.SimpleNamespace(seed=0), image_size=224,
                                deadline=None if budget is None else began + budget, output_dir=tmp_path, thresholds=t,
                                run_steps=run_steps)
    assert budget is None or time.perf_counter() - began < budget
    fake_race.horizons = horizons
    return outcome, trained


def test_a_probe_winner_s_final_run_is_reserved_twice_the_measured_rung_overhead_never_more_than_the_prior():
    """Before a rung has run, the prior (4 s); then two measured rung overheads (the fixed 4 s left every dev probe
    winner 5-6% of its budget unused at load 1), capped at the prior so a loaded machine reserves no less than before."""
    from hf_transfer.jobs.race import final_run_overhead

    t = Thresholds()
    assert final_run_overhead(t, None) == t.in_process_overhead_seconds == 4.0
    assert final_run_overhead(t, 1.0) == 2.0 and final_run_overhead(t, 1.5) == 3.0
    assert final_run_overhead(t, 3.0) == 4.0


def test_the_race_records_the_reserve_it_left_a_probe_winner(monkeypatch, tmp_path):
    outcome, _ = fake_race(monkeypatch, tmp_path, {"probe 7": 0.99, "full x0.1": 0.90, "partial depth:4": 0.91},
                           {"full x0.1": 0.002, "partial depth:4": 0.002}, budget=4.0)
    # the fake's prior is 0.2 s and its rung overhead floor 0.05 s: the measured reserve lies between 0.1 and 0.2
    assert outcome.winner.job == "probe" and 0.1 <= outcome.record.final_run_overhead_seconds < 0.2


def test_the_spare_time_trains_the_default_and_a_race_out_of_time_crowns_its_leader(monkeypatch, tmp_path):
    """While a probe leads beyond the noise, the time left goes to the default fine-tune alone (the plan the verdict
    falls back on; `partial` leads it, within the noise), and when the budget runs out the verdict takes the measured
    leader."""
    outcome, _ = fake_race(monkeypatch, tmp_path, {"probe 7": 0.99, "full x0.1": 0.90, "partial depth:4": 0.91},
                           {"full x0.1": 0.002, "partial depth:4": 0.002}, budget=4.0)
    filling = [r for r in outcome.record.rungs if r["filling_the_budget"]]
    assert filling, "a probe led beyond the noise: the race should have filled the budget"
    for r in filling:
        assert r["plans"]["full x0.1"]["steps"] > 0 and r["plans"]["partial depth:4"]["steps"] == 0
    assert outcome.record.ran_out_of_time and outcome.winner.name == "probe 7"


def test_the_spare_time_goes_to_a_fine_tune_that_beats_the_default_beyond_the_noise(monkeypatch, tmp_path):
    outcome, _ = fake_race(monkeypatch, tmp_path, {"probe 7": 0.95, "full x0.1": 0.5, "partial depth:4": 0.93},
                           {"full x0.1": 0.002, "partial depth:4": 0.002}, budget=4.0)
    filling = [r for r in outcome.record.rungs if r["filling_the_budget"]]
    assert filling and all(r["plans"]["full x0.1"]["steps"] == 0 and r["plans"]["partial depth:4"]["steps"] > 0
                           for r in filling)


def test_a_rung_gives_every_fine_tune_the_same_steps_whatever_its_step_time(monkeypatch, tmp_path):
    """Halving compares at equal resource: a default three times slower a step gets as many steps in a rung (equal
    time gave the slow default 43 steps to `partial`'s 106, and it fell behind at the first rung)."""
    _, trained = fake_race(monkeypatch, tmp_path, {"probe 7": 0.80, "full x0.1": 0.90, "partial depth:4": 0.89},
                           {"full x0.1": 0.006, "partial depth:4": 0.002}, budget=4.0)
    first = trained["full x0.1"][0], trained["partial depth:4"][0]
    assert first[0] >= 5 * 5 and abs(first[0] - first[1]) <= 0.25 * max(first), first


def test_a_fine_tune_s_rungs_are_stretches_of_one_schedule_that_its_real_run_continues(monkeypatch, tmp_path):
    """Each rung is told the plan's steps in all should it win (its rungs, then the budget left once the others'
    race is spent), so its rungs and its real run are one warm-up and one cosine; the winner's outcome says where
    its schedule stands (every step it trained in the race)."""
    monkeypatch.setattr("hf_transfer.saving.save_model_folder", lambda *a, **k: None)
    outcome, trained = fake_race(monkeypatch, tmp_path, {"probe 7": 0.80, "full x0.1": 0.90, "partial depth:4": 0.89},
                                 {"full x0.1": 0.004, "partial depth:4": 0.004}, budget=4.0, keeps_weights=True)
    assert outcome.winner.name == "full x0.1" and outcome.start_folder
    done = 0
    for steps, horizon in zip(trained["full x0.1"], fake_race.horizons["full x0.1"]):
        done += steps
        # beyond this rung's end (no rung anneals to zero), within what the whole budget holds at its step time
        assert done < horizon <= 4.0 / 0.004, (trained, fake_race.horizons)
    assert outcome.record.winner_schedule == {"offset": done, "warmup_steps": 1}


def test_without_a_budget_the_rungs_lead_into_the_real_run_s_planned_steps(monkeypatch, tmp_path):
    """No deadline: rungs of 20 then 40 steps, each told the plan's steps in all should it win (its race rungs, then
    the real run's planned steps), so the winner's real run continues one warm-up and cosine instead of warming up
    again after rungs that each annealed to zero."""
    from hf_transfer.jobs.race import unbudgeted_rung_steps

    monkeypatch.setattr("hf_transfer.saving.save_model_folder", lambda *a, **k: None)
    outcome, trained = fake_race(monkeypatch, tmp_path, {"probe 7": 0.80, "full x0.1": 0.90, "partial depth:4": 0.89},
                                 {"full x0.1": 0.0001, "partial depth:4": 0.0001}, budget=None, keeps_weights=True,
                                 run_steps=300)
    assert [unbudgeted_rung_steps(r) for r in range(3)] == [20, 40, 80]
    assert outcome.winner.name == "full x0.1" and trained["full x0.1"] == [20, 40]
    assert fake_race.horizons["full x0.1"] == [20 + 40 + 300] * 2  # the same end, seen from every rung
    assert outcome.record.winner_schedule == {"offset": 60, "warmup_steps": 1}
