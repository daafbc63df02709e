"""The strategy advisor: its rules on constructed measurements, LogME, the BatchNorm shift, the plan files, and
end-to-end runs of `recipes/advise.py` and `recipes/finetune.py --strategy auto` on a tiny model and real digits."""

import functools
import json
import math
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from hf_transfer.advisor import (
    BackboneMeasurement,
    CostStats,
    DepthMeasure,
    SimilarityStats,
    SizeStats,
    Thresholds,
    batchnorm_shift,
    decide,
    gaussian_kl,
    logme,
    plan_config,
    rank_backbones,
    write_plan_yaml,
)
from hf_transfer.arguments import DataArguments, finetune_argument_types, parse_args
from hf_transfer.errors import TransferError
from hf_transfer.jobs.probe import probe_argument_types

BODY = 16  # depth groups in the constructed backbones' body


# ------------------------------------------------------------------------------------------- constructed inputs
def measured(n_train=200, classes=10, curve=None, pooled=0.9, per_class=None, concat=None, step_seconds=0.5,
             n_validation=100, name="embedded:efficientnet_lite0") -> BackboneMeasurement:
    """A measurement built by hand: ``curve`` maps depth -> probe CV accuracy (others 0.5 below the pooled one)."""
    curve = curve or {}
    per_class = per_class or [n_train // classes] * classes
    depths = [DepthMeasure(f"depth {d} (blocks.{d})", d, 64, curve.get(d, pooled - 0.05), 0.01, 0.1 + d / 100, 0.2)
              for d in range(BODY)]
    depths.append(DepthMeasure("pooled", None, 1280, pooled, 0.01, 0.3))
    sim = SimilarityStats(depths, BODY, concat, min(n_train, 1000), 3)
    size = SizeStats(sum(per_class), n_validation, len(per_class), per_class, [str(i) for i in range(len(per_class))])
    return BackboneMeasurement(name, size, sim, CostStats(5.0, step_seconds, 32, 96), 1e-2, True)


def test_tiny_set_close_to_the_features_gets_a_probe_on_the_pooled_bottleneck():
    d = decide(measured(n_train=200, pooled=0.95, curve={12: 0.945}))
    assert (d.scenario, d.job, d.strategy, d.layers) == ("small_similar", "probe", "linear_probe", "pooled")
    assert d.class_weighting is None and d.sampler is None
    assert any("200 training images < 1000" in r for r in d.reasons)


def test_tiny_dissimilar_set_gets_a_probe_on_the_earlier_peak():
    d = decide(measured(n_train=300, pooled=0.80, curve={5: 0.86, 9: 0.84}))
    assert (d.scenario, d.job, d.layers) == ("small_dissimilar", "probe", "5")
    assert any("falls 0.060 behind depth 5" in r for r in d.reasons)
    # a gap inside the threshold is noise: the bottleneck stays the choice
    d = decide(measured(n_train=300, pooled=0.85, curve={5: 0.855}))
    assert (d.scenario, d.layers) == ("small_similar", "pooled")


def test_concatenated_depths_are_chosen_only_when_they_beat_the_best_single_one():
    gain = Thresholds().concat_min_gain
    concat = {"layers": "5+9+pooled", "probe_cv": 0.86 + gain, "dim": 1400}
    assert decide(measured(pooled=0.80, curve={5: 0.86}, concat=concat)).layers == "5+9+pooled"
    concat = {"layers": "5+9+pooled", "probe_cv": 0.86 + gain / 2, "dim": 1400}
    assert decide(measured(pooled=0.80, curve={5: 0.86}, concat=concat)).layers == "5"


def test_large_sets_are_fine_tuned_with_nothing_frozen():
    similar = decide(measured(n_train=20_000, pooled=0.9, step_seconds=0.05))
    assert (similar.scenario, similar.job, similar.freeze) == ("large_similar", "finetune", "none")
    assert (similar.strategy, similar.lp_epochs, similar.num_train_epochs) == ("lp_ft", 1, 3)
    assert similar.layer_decay == Thresholds().similar_layer_decay and similar.augmentation == "gentle"
    dissimilar = decide(measured(n_train=20_000, pooled=0.80, curve={6: 0.9}, step_seconds=0.05))
    assert (dissimilar.scenario, dissimilar.strategy, dissimilar.freeze, dissimilar.layer_decay) == \
        ("large_dissimilar", "full", "none", 1.0)
    assert dissimilar.learning_rate == 1e-2 and dissimilar.backbone_lr_multiplier == 0.1


def test_epochs_follow_the_data_then_the_time_budget():
    from hf_transfer.advisor.rules import epoch_seconds

    t = Thresholds()
    # 5,000 images at batch 32: 157 steps an epoch -> 4 epochs for the ~600-step target; 1,500 -> at most 10
    assert decide(measured(n_train=5000, pooled=0.9, step_seconds=0.05)).num_train_epochs == 4
    assert decide(measured(n_train=1500, classes=3, pooled=0.9, step_seconds=0.05)).num_train_epochs == 10
    # a budget that fits two epochs cuts the plan to two: too short for LP-FT's head-only epoch, or augmentation
    m = measured(n_train=20_000, pooled=0.9, step_seconds=0.05)
    per_epoch = epoch_seconds(m, 1.0, 32)
    d = decide(m, time_budget=t.fixed_overhead_seconds + 2.5 * per_epoch)
    assert (d.strategy, d.num_train_epochs, d.augmentation) == ("full", 2, "none") and "time budget" in d.reasons[-1]
    # one that fits under one epoch falls back to the probe on the features already measured
    d = decide(m, time_budget=t.fixed_overhead_seconds + 0.5 * per_epoch)
    assert (d.job, d.strategy, d.layers) == ("probe", "linear_probe", "pooled")
    # so does one whose epochs hold too few steps: 3 epochs of 1,500 images are 141 steps, 2 are 94
    m = measured(n_train=1500, classes=3, pooled=0.9, step_seconds=0.05)
    per_epoch = epoch_seconds(m, 0.5, 32)
    assert decide(m, time_budget=t.fixed_overhead_seconds + 3.2 * per_epoch).num_train_epochs == 3
    assert decide(m, time_budget=t.fixed_overhead_seconds + 2.2 * per_epoch).job == "probe"


def test_medium_sets_freeze_half_or_up_to_the_peak_when_dissimilar():
    d = decide(measured(n_train=3000, pooled=0.9))
    assert (d.scenario, d.size_band, d.strategy, d.freeze) == ("large_similar", "medium", "partial", "fraction:0.5")
    d = decide(measured(n_train=3000, pooled=0.8, curve={3: 0.9}))
    assert (d.scenario, d.strategy, d.freeze) == ("large_dissimilar", "partial", "depth:3")
    d = decide(measured(n_train=3000, pooled=0.8, curve={12: 0.9}))  # a late peak: still at most half
    assert d.freeze == "fraction:0.5"
    # few images in the median class make a set small whatever its total
    d = decide(measured(n_train=3000, classes=300, pooled=0.9))
    assert d.job == "probe" and "median class" in d.reasons[0]


def test_imbalanced_classes_get_class_weighting_or_balanced_sampling():
    skewed = [400, 400, 400, 100]  # 4:1
    assert decide(measured(per_class=skewed, pooled=0.9)).class_weighting == "balanced"  # a probe
    d = decide(measured(per_class=[2000, 2000, 500], pooled=0.9))
    assert (d.job, d.class_weighting, d.sampler) == ("finetune", "balanced", None)
    d = decide(measured(per_class=[3000, 2000, 150], pooled=0.9))  # 20:1
    assert (d.job, d.class_weighting, d.sampler) == ("finetune", None, "balanced")
    assert decide(measured(per_class=[400, 400, 300], pooled=0.9)).class_weighting is None


def test_scratch_only_for_huge_sets_whose_features_barely_beat_chance():
    d = decide(measured(n_train=200_000, classes=10, pooled=0.12, curve={2: 0.2}, step_seconds=0.01))
    assert d.strategy == "scratch" and d.backbone_lr_multiplier == 1.0
    assert decide(measured(n_train=200_000, pooled=0.6, curve={2: 0.7}, step_seconds=0.01)).strategy == "full"


def _plans():
    """One decision of every kind the rules produce."""
    cases = {
        "probe_pooled": measured(pooled=0.95),
        "probe_depth": measured(pooled=0.8, curve={5: 0.9}),
        "probe_concat": measured(pooled=0.8, curve={5: 0.9}, concat={"layers": "5+9+pooled", "probe_cv": 0.95, "dim": 9}),
        "probe_weighted": measured(per_class=[400, 400, 400, 100], pooled=0.9),
        "partial_half": measured(n_train=3000, pooled=0.9),
        "partial_depth": measured(n_train=3000, pooled=0.8, curve={3: 0.9}),
        "lp_ft": measured(n_train=20_000, pooled=0.9, step_seconds=0.01),
        "full": measured(n_train=20_000, pooled=0.8, curve={6: 0.9}, step_seconds=0.05),
        "scratch": measured(n_train=200_000, pooled=0.12, curve={2: 0.2}, step_seconds=0.01),
        "sampler": measured(per_class=[3000, 2000, 150], pooled=0.9),
    }
    return {name: decide(m) for name, m in cases.items()}


def test_the_recipes_parse_every_plan_the_rules_produce(tmp_path):
    plans = _plans()
    assert plans["lp_ft"].strategy == "lp_ft" and plans["scratch"].strategy == "scratch"
    data_args = DataArguments(dataset_name="embedded:digits", max_train_samples=300)
    for name, decision in plans.items():
        config = plan_config(decision, backbone="embedded:efficientnet_lite0", image_size=64, data_args=data_args,
                             output_dir=str(tmp_path / name), time_budget=120)
        path = write_plan_yaml(tmp_path / f"{name}.yaml", decision, config, ["a header line"])
        assert yaml.safe_load(path.read_text())["model_name_or_path"] == "embedded:efficientnet_lite0"
        if decision.job == "probe":
            model_args, parsed_data, probe_args = parse_args(probe_argument_types(), [str(path)])
            assert probe_args.layers == decision.layers  # concatenations (`5+9+pooled`) too
            assert probe_args.class_weighting == (decision.class_weighting or "none")
            assert parsed_data.max_train_samples == 300 and model_args.image_size == 64
        else:
            model_args, parsed_data, training_args, transfer_args = parse_args(finetune_argument_types(), [str(path)])
            assert (transfer_args.strategy, transfer_args.freeze, transfer_args.lp_epochs) == \
                (decision.strategy, decision.freeze, decision.lp_epochs)
            assert (training_args.learning_rate, training_args.num_train_epochs, transfer_args.layer_decay) == \
                (decision.learning_rate, decision.num_train_epochs, decision.layer_decay)
            assert transfer_args.time_budget == 120 and parsed_data.augmentation == decision.augmentation
            assert (transfer_args.class_weighting, transfer_args.sampler) == \
                (decision.class_weighting or "none", decision.sampler or "random")
            config_ = transfer_args.to_config(training_args)
            config_.validate()
            config_.check_run_length(training_args.num_train_epochs)


# ---------------------------------------------------------------------------------------------------- LogME
def _evidence(F, y, alpha, beta):
    """The evidence of Bayesian linear regression written out with explicit matrices (the paper's equation)."""
    n, D = F.shape
    A = alpha * np.eye(D) + beta * F.T @ F
    m = beta * np.linalg.solve(A, F.T @ y)
    return (n / 2 * np.log(beta) + D / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi) - beta / 2 * np.sum((F @ m - y) ** 2)
            - alpha / 2 * m @ m - np.linalg.slogdet(A)[1] / 2)


@pytest.mark.parametrize("n,D", [(60, 8), (12, 30)])
def test_logme_is_the_maximum_evidence_per_sample(n, D):
    """The known answer: LogME is max over (alpha, beta) of the evidence / n, averaged over the one-hot classes; a
    numerical optimizer on the explicit formula finds the same value (fewer images than features too)."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    F = rng.normal(size=(n, D))
    y = (F[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)
    best = []
    for k in (0, 1):
        target = (y == k).astype(float)
        found = minimize(lambda p: -_evidence(F, target, *np.exp(p)), [0.0, 0.0], method="Nelder-Mead",
                         options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 2000})
        best.append(-found.fun / n)
    assert logme(F, y) == pytest.approx(np.mean(best), abs=1e-5)


def test_logme_prefers_features_that_determine_the_labels_and_ignores_rotation_and_scale():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 400)
    informative = np.hstack([np.eye(5)[y] * 3 + 0.5 * rng.normal(size=(400, 5)), rng.normal(size=(400, 20))])
    noise = rng.normal(size=(400, 25))
    assert logme(informative, y) > logme(noise, y) + 0.5
    rotation, _ = np.linalg.qr(rng.normal(size=(25, 25)))
    assert logme(informative @ rotation, y) == pytest.approx(logme(informative, y), abs=1e-8)
    assert logme(informative * 37.0, y) == pytest.approx(logme(informative, y), abs=1e-8)
    with pytest.raises(ValueError):
        logme(noise, y[:10])


# --------------------------------------------------------------------------------------------- BatchNorm shift
class _Batches:
    """The slice interface `iter_batches` reads: {"pixel_values", "labels"}."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, s):
        return {"pixel_values": self.x[s], "labels": [0] * len(self.x[s])}


def test_batchnorm_shift_is_zero_at_the_running_statistics_and_grows_with_a_shift():
    from hf_transfer.backbones import load_backbone_with_adapter

    assert float(gaussian_kl(torch.ones(3), torch.full((3,), 2.0), torch.ones(3), torch.full((3,), 2.0))) == pytest.approx(0, abs=1e-12)
    # one running standard deviation of mean shift in every channel: KL = 1/2
    assert float(gaussian_kl(torch.ones(4), torch.full((4,), 4.0), torch.full((4,), 3.0), torch.full((4,), 4.0), eps=0)) == pytest.approx(0.5)

    torch.manual_seed(0)
    model, adapter = load_backbone_with_adapter("test_resnet", labels=["a", "b"], pretrained=False)
    layer_map = adapter.layer_map()
    data = _Batches(torch.randn(48, 3, 32, 32) * 2 + 0.5)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    # Set each BatchNorm's running statistics to the data's, in forward order (each one changes what the next sees).
    model.eval()
    for norm in norms:
        seen = {}

        def keep(module, args):
            seen["x"] = args[0].detach().double()

        handle = norm.register_forward_pre_hook(keep)
        with torch.no_grad():
            model(pixel_values=data.x)
        handle.remove()
        x = seen["x"]
        norm.running_mean.copy_(x.mean((0, 2, 3)))
        norm.running_var.copy_(x.var((0, 2, 3), unbiased=False))
    shifts = batchnorm_shift(model, data, layer_map, batch_size=48)
    assert set(shifts) == {layer_map.depth_of(n) for n, _ in model.named_parameters() if n.endswith("bn1.weight") or ".bn" in n}
    assert max(shifts.values()) < 1e-4
    last = norms[-1]
    last.running_mean += last.running_var.sqrt() * 2  # two standard deviations off: KL 2 in that layer
    shifted = batchnorm_shift(model, data, layer_map, batch_size=48)
    depth = layer_map.depth_of(next(n for n, p in model.named_parameters() if p is last.weight))
    assert shifted[depth] > 0.5 and all(v < 1e-4 for k, v in shifted.items() if k != depth)


def test_ranking_puts_the_best_probe_first_and_breaks_ties_by_logme():
    a = measured(pooled=0.90, name="a")
    b = measured(pooled=0.95, name="b")
    c = measured(pooled=0.951, name="c")  # a tie with b on probe accuracy...
    for d in c.similarity.depths:
        d.logme = d.logme + 1  # ...with a higher LogME
    assert [m.backbone for m in rank_backbones([a, b, c])] == ["c", "b", "a"]


# --------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory):
    """test_resnet (BatchNorm, random weights) saved as a folder, so that it loads as a 'pretrained' backbone."""
    from hf_transfer.backbones import load_backbone_with_adapter
    from hf_transfer.saving import save_model_folder

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_backbone")
    model, _ = load_backbone_with_adapter("test_resnet", labels=["a", "b"], pretrained=False)
    save_model_folder(model, folder)
    return str(folder)


DATA = ["--dataset_name", "embedded:digits", "--max_train_samples", "150", "--max_eval_samples", "50", "--image_size", "32"]


@pytest.fixture(scope="module")
def advised(tiny_pretrained, tmp_path_factory):
    from hf_transfer.jobs.advise import advise_argument_types, run_advise

    root = tmp_path_factory.mktemp("advise")
    args = parse_args(advise_argument_types(), ["--model_name_or_path", tiny_pretrained, *DATA, "--max_probe_images", "100",
                                                "--cv_folds", "2", "--output_dir", str(root / "advice"),
                                                "--feature_cache_dir", str(root / "cache")])
    advice = run_advise(*args)
    return advice, root


def test_advise_writes_a_plan_report_and_plot(advised, capsys):
    advice, root = advised
    folder = root / "advice"
    assert {p.name for p in folder.iterdir()} == {"plan.yaml", "advice.md", "advice.json", "advice.png"}
    payload = json.loads((folder / "advice.json").read_text())
    assert payload["decision"]["job"] == "probe" and payload["decision"]["size_band"] == "small"  # 150 images
    size = payload["measurements"][0]["size"]
    assert (size["n_train"], size["n_classes"], size["n_validation"]) == (150, 10, 50)
    depths = payload["measurements"][0]["similarity"]["depths"]
    assert [d["name"] for d in depths][-1] == "pooled" and len(depths) >= 4
    assert all(0 <= d["probe_cv"] <= 1 and np.isfinite(d["logme"]) for d in depths)
    assert all(d["bn_shift"] is not None for d in depths[:-1])  # a BatchNorm network: a shift at every depth
    plan = yaml.safe_load((folder / "plan.yaml").read_text())
    assert plan["layers"] == payload["decision"]["layers"] and plan["output_dir"] == str(folder / "run")
    markdown = (folder / "advice.md").read_text()
    assert "## Scenario" in markdown and "## Plan" in markdown and plan["layers"] in markdown
    assert (folder / "advice.png").read_bytes()[:4] == b"\x89PNG"


def test_the_advised_probe_plan_runs_unchanged(advised):
    from hf_transfer.jobs.probe import run_linear_probe

    advice, root = advised
    results = run_linear_probe(*parse_args(probe_argument_types(), [str(root / "advice" / "plan.yaml")]))
    layer = advice.decision.layers
    # The probe recipe exports exactly the layer the advice chose: pooled, one depth, or a concatenation of depths.
    expected = "pooled" if layer == "pooled" else f"concat {layer}" if "+" in layer else f"depth {layer} "
    assert results["exported"]["layer"].startswith(expected), (results["exported"]["layer"], layer)
    assert (root / "advice" / "run" / "all_results.json").is_file()


def test_a_second_advice_into_the_folder_is_refused(advised, tiny_pretrained):
    from hf_transfer.jobs.advise import advise_argument_types, run_advise

    _, root = advised
    with pytest.raises(TransferError, match="holds a previous advice"):
        run_advise(*parse_args(advise_argument_types(), ["--model_name_or_path", tiny_pretrained, *DATA,
                                                         "--output_dir", str(root / "advice")]))
    with pytest.raises(TransferError, match="too few"):
        run_advise(*parse_args(advise_argument_types(), ["--model_name_or_path", tiny_pretrained, *DATA,
                                                         "--max_probe_images", "5", "--output_dir", str(root / "x")]))


def test_strategy_auto_races_the_candidates_and_runs_the_winner(tiny_pretrained, tmp_path, monkeypatch):
    """The race trains each candidate on train less a held-out part, scores it there, and the run is the winner's:
    its flags in transfer_plan.json (a fine-tune, continued from its race weights) or the probe job's export."""
    from hf_transfer.advisor import advice as advice_module
    from hf_transfer.jobs.finetune import run_finetune

    # 150 images: with the default's threshold lowered the default is the full fine-tune, and every kind races
    monkeypatch.setattr(advice_module, "Thresholds", functools.partial(Thresholds, default_finetune_min_images=100,
                                                                       max_epochs=1))
    monkeypatch.setenv("HF_TRANSFER_CACHE", str(tmp_path / "cache"))
    from hf_transfer.trainer import TransferTrainer

    first_batches = {}  # per race plan folder: the labels of each rung's first batch
    plain_loader = TransferTrainer.get_train_dataloader

    def spied_loader(self):
        loader = plain_loader(self)
        if "/race/" in self.args.output_dir:
            first_batches.setdefault(self.args.output_dir, []).append(next(iter(loader))["labels"].tolist())
        return loader

    monkeypatch.setattr(TransferTrainer, "get_train_dataloader", spied_loader)
    out = tmp_path / "auto"
    metrics = run_finetune(*parse_args(finetune_argument_types(), [
        "--model_name_or_path", tiny_pretrained, *DATA, "--strategy", "auto",
        "--output_dir", str(out), "--report_to", "none", "--disable_tqdm", "True"]))
    advice = json.loads((out / "advice.json").read_text())
    race = advice["race"]
    names = [c["name"] for c in race["candidates"]]
    assert 3 <= len(names) <= 5 and names[0] == "full x0.1" and race["candidates"][0]["is_default"]
    assert {c["job"] for c in race["candidates"]} == {"probe", "finetune"}
    first = race["rungs"][0]["plans"]
    assert set(first) == set(names)  # every candidate ran the first rung
    # every rung draws its own data order (one seed replayed the first rung's batches), the same for every plan
    rungs = [batches for batches in first_batches.values() if len(batches) > 1]
    assert rungs and all(batches[0] != batches[1] for batches in rungs)
    assert len({str(batches[0]) for batches in first_batches.values()}) == 1
    n_holdout = race["holdout_images"]
    assert n_holdout >= 20 and all(len(v) == n_holdout for v in race["final_correct"].values())
    winner = race["verdict"]["winner"]
    assert winner in race["final_correct"] and advice["decision"]["reasons"][-1].startswith("race: ")
    plan = next(c for c in race["candidates"] if c["name"] == winner)
    if plan["job"] == "finetune":
        saved = json.loads((out / "transfer_plan.json").read_text())["config"]
        assert saved["strategy"] == plan["strategy"] == advice["decision"]["strategy"]
        assert (out / "race" / "start" / "config.json").is_file()  # the race weights it continued from
    else:
        assert metrics["strategy"] == "auto -> linear_probe" and advice["decision"]["layers"] == plan["layers"]
    markdown = (out / "advice.md").read_text()
    assert "## The race" in markdown and f"**Winner: {winner}.**" in markdown
    assert (out / "all_results.json").is_file()
    # advice.json rewritten once the winner's run ended: its final scores beside the race's
    assert advice["final_run"]["plan"] == winner
    assert advice["final_run"]["eval_accuracy"] == pytest.approx(metrics["eval_accuracy"])


@pytest.mark.parametrize("budget", [10.0, None], ids=["budget", "no_budget"])
def test_the_race_and_the_winner_s_real_run_are_one_schedule_through_real_trainers(
        tiny_pretrained, tmp_path, monkeypatch, budget):
    """A race on real Trainers (probes left out, so a fine-tune wins): each of the winner's rungs starts where its
    last one stopped on one warm-up and cosine, the real run starts there too (its fresh Trainer's schedule would
    start a warm-up at 0; continued, it runs mid-cosine); under a budget the whole job ends within it, and without
    one every rung's cosine ends at the real run's last step."""
    from hf_transfer import continuation
    from hf_transfer.advisor import advice as advice_module
    from hf_transfer.advisor.race import candidate_plans
    from hf_transfer.jobs import race as race_job
    from hf_transfer.jobs.finetune import run_finetune

    monkeypatch.setattr(advice_module, "Thresholds", functools.partial(Thresholds, default_finetune_min_images=100))
    monkeypatch.setattr(race_job, "candidate_plans",
                        lambda m, t: [p for p in candidate_plans(m, t) if p.job == "finetune"])
    monkeypatch.setenv("HF_TRANSFER_CACHE", str(tmp_path / "cache"))
    continued = []  # (what, offset, warm-up, steps to the schedule's end, the first group's rate over its base)
    plain = continuation.ContinueSchedule.on_train_begin

    def spied(self, args, state, control, lr_scheduler=None, **kwargs):
        inner = getattr(lr_scheduler, "scheduler", lr_scheduler)
        plain(self, args, state, control, lr_scheduler=lr_scheduler, **kwargs)
        continued.append((self.what, self.offset, self.warmup_steps, inner.lr_lambdas[0].keywords["num_training_steps"],
                          inner.optimizer.param_groups[0]["lr"] / inner.base_lrs[0]))

    monkeypatch.setattr(continuation.ContinueSchedule, "on_train_begin", spied)
    out = tmp_path / "auto"
    metrics = run_finetune(*parse_args(finetune_argument_types(), [
        "--model_name_or_path", tiny_pretrained, *DATA, "--strategy", "auto", "--output_dir", str(out),
        "--report_to", "none", "--disable_tqdm", "True", *(["--time_budget", str(budget)] if budget else [])]))
    advice = json.loads((out / "advice.json").read_text())
    winner = advice["race"]["verdict"]["winner"]
    steps = [r["plans"][winner]["steps"] for r in advice["race"]["rungs"] if winner in r["plans"]]
    rungs = [c for c in continued if c[0] == f"race {winner}"]
    assert [c[1] for c in rungs] == [sum(steps[:i]) for i in range(len(rungs))]  # each rung goes on from the last
    assert len({c[2] for c in rungs}) == 1  # one warm-up, fixed at the first rung
    real = [c for c in continued if c[0] == "--strategy auto"]
    assert len(real) == 1 and real[0][1] == sum(steps) == advice["race"]["winner_schedule"]["offset"] > rungs[0][2]
    assert real[0][2] == rungs[0][2] == advice["race"]["winner_schedule"]["warmup_steps"]
    # the real run's first step is step `offset` of one cosine (its fresh schedule would start a warm-up at 0)
    offset, warmup, to_end, rate = real[0][1:]
    assert rate == pytest.approx(0.5 * (1 + math.cos(math.pi * (offset - warmup) / (offset + to_end - warmup))))
    assert 0.0 < rate < 1.0
    if budget:
        assert metrics["time_budget_used_seconds"] <= budget
    else:  # the end each rung was told is where the real run's cosine ends: its last step
        state = json.loads((out / "trainer_state.json").read_text())
        assert {c[1] + c[3] for c in rungs} == {offset + to_end} == {offset + state["global_step"]}


def test_bad_advisor_requests_are_one_line_errors(tmp_path, capsys):
    from hf_transfer.cli import main
    from hf_transfer.jobs.finetune import run_finetune

    with pytest.raises(SystemExit) as exit_info:  # `hf-transfer advise`: the same job, the same one-line errors
        main(["advise", "--no_pretrained", "--output_dir", str(tmp_path / "a")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "hf-transfer advise: error: --no_pretrained does not apply here: the advisor measures pretrained features "
        "(to train from scratch: hf-transfer finetune --strategy scratch)"]
    with pytest.raises(TransferError, match="resume with the plan's flags"):
        run_finetune(*parse_args(finetune_argument_types(), ["--strategy", "auto", "--resume_from_checkpoint", "True",
                                                             "--output_dir", str(tmp_path / "b")]))
    with pytest.raises(TransferError, match="positive number of seconds"):
        run_finetune(*parse_args(finetune_argument_types(), ["--strategy", "auto", "--time_budget", "-5",
                                                             "--output_dir", str(tmp_path / "c")]))
    with pytest.raises(TransferError, match="positive number of seconds"):  # any strategy, before loading
        run_finetune(*parse_args(finetune_argument_types(), ["--time_budget", "0", "--output_dir", str(tmp_path / "d")]))
    assert not any((tmp_path / name).exists() for name in "bcd")
