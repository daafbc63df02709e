"""recipes/finetune.py with transfer flags: frozen weights and BatchNorm statistics stay pretrained, bit for bit."""

import json

import pytest
import torch
from conftest import run_recipe_in_process



def run_recipe(*args):
    return run_recipe_in_process("finetune.py", *args, env={"HF_TRANSFER_NUM_THREADS": "1"})


@pytest.mark.slow
def test_fraction_freeze_keeps_pretrained_weights_and_bn_statistics(tmp_path):
    out = tmp_path / "run"
    result = run_recipe("--freeze", "fraction:0.5", "--layer_decay", "0.8", "--max_train_samples", "128",
                        "--max_eval_samples", "32", "--image_size", "64", "--eval_strategy", "no", "--output_dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TransferPlan" in result.stdout
    plan = json.loads((out / "transfer_plan.json").read_text())
    frozen = {n for g in plan["groups"] if g["frozen"] for n in g["params"]}
    trained = {n for g in plan["groups"] if not g["frozen"] for n in g["params"]}
    assert frozen and trained and not frozen & trained
    assert all(g["trains_from_epoch"] == 0 for g in plan["groups"] if not g["frozen"])

    from safetensors.torch import load_file

    from hf_transfer import load_backbone

    saved = {f"timm_model.{k}": v for k, v in load_file(out / "model.safetensors").items()}  # timm's own names
    pretrained = load_backbone("embedded:efficientnet_lite0").state_dict()
    for name in frozen:
        assert torch.equal(saved[name], pretrained[name]), name
    frozen_bn = plan["frozen_batchnorm_modules"]
    assert frozen_bn and all(f"{m}.weight" in frozen for m in frozen_bn)
    for module in frozen_bn:
        for buffer in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(saved[f"{module}.{buffer}"], pretrained[f"{module}.{buffer}"]), f"{module}.{buffer}"
    # and the trained part did move
    assert any(not torch.equal(saved[n], pretrained[n]) for n in trained if n in pretrained and "classifier" not in n)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--strategy", "nonsense"], "--strategy"),
        (["--freeze", "regex:no_such_layer"], "matches no parameter"),
        (["--head_init_from", "somewhere"], "is not an exported probe"),
    ],
)
def test_bad_transfer_flags_exit_2(args, message):
    result = run_recipe("--dataset_name", "embedded:lfw", "--max_train_samples", "16", "--image_size", "32", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "finetune: error:" in result.stderr and message in result.stderr


@pytest.mark.slow
def test_lp_ft_starts_from_an_exported_probe_head(tmp_path):
    """LP-FT hand-off: linear_probe.py exports a pooled probe; finetune.py --head_init_from starts from its head."""
    from safetensors.torch import load_file

    data = ["--dataset_name", "embedded:lfw", "--image_size", "32", "--max_train_samples", "60", "--max_eval_samples", "20"]
    probe_dir, tuned_dir = tmp_path / "probe", tmp_path / "tuned"
    probe = run_recipe_in_process("linear_probe.py", *data, "--layers", "pooled", "--probe", "logreg", "--cv_folds", "2",
                                  "--output_dir", probe_dir, env={"HF_TRANSFER_CACHE": tmp_path / "cache"})
    assert probe.returncode == 0, probe.stderr[-3000:]
    # A vanishing learning rate: whatever the run saves is the head it started from.
    tuned = run_recipe(*data, "--strategy", "lp_ft", "--head_init_from", probe_dir, "--learning_rate", "1e-12",
                       "--eval_strategy", "no", "--output_dir", tuned_dir)
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    assert "head initialized from the linear probe" in tuned.stdout
    probe_head, tuned_head = load_file(probe_dir / "model.safetensors"), load_file(tuned_dir / "model.safetensors")
    for name in ("classifier.weight", "classifier.bias"):  # the fine-tuned folder keeps timm's own weight names
        torch.testing.assert_close(tuned_head[name], probe_head[f"timm_model.{name}"].float(), atol=1e-6, rtol=0)
    plan = json.loads((tuned_dir / "transfer_plan.json").read_text())
    assert plan["config"]["strategy"] == "lp_ft" and plan["config"]["head_init_from"] == str(probe_dir)
