"""A run that continues another (`hf_transfer.continuation`): the race's next rung and the winner's real run keep
the AdamW moments and follow one warm-up and one cosine, checked on the schedules alone and through a real Trainer."""

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.optimization import get_cosine_schedule_with_warmup

from hf_transfer.budget import set_schedule_horizon
from hf_transfer.continuation import ContinueSchedule, RestoreOptimizer, continue_schedule


def stepped_rates(scheduler, steps: int) -> list[float]:
    """The learning rate at each of ``steps`` steps of ``scheduler`` (its optimizer's peak rate 1)."""
    rates = []
    for _ in range(steps):
        rates.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def cosine(steps: int, warmup: int):
    """What a run's Trainer builds: a fresh cosine with warm-up over its own steps."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=steps)


def cosine_rates(steps: int, warmup: int) -> list[float]:
    """The learning rate at each step of one cosine with warm-up, peak 1."""
    return stepped_rates(cosine(steps, warmup), steps)


def test_the_race_winner_keeps_its_optimizer_state_and_a_mismatch_starts_fresh(capsys):
    """RestoreOptimizer loads the race's AdamW moments once the real run's optimizer exists (Trainer's
    on_train_begin); an optimizer with other parameter groups starts fresh and says so."""
    def adam(*shapes):
        params = [torch.nn.Parameter(torch.ones(s)) for s in shapes]
        return params, torch.optim.AdamW(params, lr=0.1)

    params, raced = adam(3, 2)
    for p in params:
        p.grad = torch.full_like(p, 0.5)
    raced.step()
    params, fresh = adam(3, 2)
    RestoreOptimizer(raced.state_dict(), "test").on_train_begin(None, None, None, optimizer=fresh)
    moments = fresh.state_dict()["state"]
    assert set(moments) == {0, 1} and torch.equal(moments[0]["exp_avg"], torch.full((3,), 0.05))
    assert float(moments[1]["step"]) == 1.0
    _, other = adam(3)  # one group of one tensor: does not fit
    RestoreOptimizer(raced.state_dict(), "test").on_train_begin(None, None, None, optimizer=other)
    assert other.state_dict()["state"] == {} and "starts fresh" in capsys.readouterr().out


def test_a_continued_schedule_is_one_warm_up_and_one_cosine_across_runs():
    """Three runs (two race rungs of 30 and 50 steps, then the real run whose end the deadline moves) follow the
    learning rate of one cosine over all 200 steps: no second warm-up, no restart at the peak."""
    def run(offset, steps, horizon, moved_to=None):
        scheduler = cosine(steps, max(1, steps // 20))
        assert continue_schedule(scheduler, offset=offset, warmup_steps=10, horizon=horizon)
        if moved_to is not None:
            assert set_schedule_horizon(scheduler, moved_to)
        return stepped_rates(scheduler, steps)

    expected = cosine_rates(200, 10)
    pieces = run(0, 30, 200) + run(30, 50, 170) + run(80, 120, 300, moved_to=120)
    assert pieces == pytest.approx(expected, abs=1e-12)
    assert pieces[30] == pytest.approx(expected[30]) and pieces[30] > 0.9  # the second rung starts where the first stopped
    constant = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0),
                                                 lambda step: 1.0)
    assert not continue_schedule(constant, offset=5, warmup_steps=1)


class Regression(torch.nn.Module):
    """The least a Trainer trains: one weight, a squared error."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, labels):
        return {"loss": ((self.w * x - labels) ** 2).mean()}


class RecordRates(TrainerCallback):
    def __init__(self):
        self.rates = []

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.rates.append(optimizer.param_groups[0]["lr"])


def train(tmp_path, steps: int, schedule: str, *callbacks) -> list[float]:
    """``steps`` steps of a real transformers Trainer (its own AdamW and ``schedule``, warm-up 10%): the rate at each."""
    data = [{"x": torch.tensor([float(i % 5)]), "labels": torch.tensor([2.0 * (i % 5)])} for i in range(64)]
    rates = RecordRates()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, learning_rate=1.0, lr_scheduler_type=schedule,
                             warmup_steps=0.1, per_device_train_batch_size=4, report_to="none", save_strategy="no",
                             disable_tqdm=True, use_cpu=True, logging_steps=1000)
    Trainer(model=Regression(), args=args, train_dataset=data, callbacks=[*callbacks, rates]).train()
    return rates.rates


def test_through_a_real_trainer_a_continued_run_is_the_rest_of_one_cosine(tmp_path):
    """The Trainer builds a fresh warm-up and cosine over its own 20 steps; ContinueSchedule makes them steps 30-49 of
    one cosine over 200 steps with 10 of warm-up (the rung after a 30-step rung, ``horizon`` its 170 steps to go)."""
    expected = cosine_rates(200, 10)
    alone = train(tmp_path / "alone", 20, "cosine")
    assert alone[0] == 0.0 and max(alone) == pytest.approx(1.0, abs=0.02)  # its own warm-up: what a rung did before
    continued = train(tmp_path / "continued", 20, "cosine",
                      ContinueSchedule(offset=30, warmup_steps=10, horizon=170, what="test"))
    assert continued == pytest.approx(expected[30:50], abs=1e-9)


def test_a_schedule_without_a_horizon_says_it_restarts_and_keeps_its_rate(tmp_path, capsys):
    rates = train(tmp_path, 10, "constant", ContinueSchedule(offset=30, warmup_steps=10, what="race full x0.1"))
    assert rates == [1.0] * 10
    assert capsys.readouterr().out.count(
        "race full x0.1: the constant schedule has no horizon; it restarts instead of continuing") == 1
