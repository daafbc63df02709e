"""Nothing lost: a fine-tune killed with SIGKILL mid-run resumes from its latest complete checkpoint and ends exactly
where an uninterrupted run ends; the same command twice gives the same model and metrics."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_recipe_in_process

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "finetune.py"
# Three epochs of 8 steps with gradual unfreezing (a new depth group every epoch) and a checkpoint every 4 steps.
RUN = ["--dataset_name", "embedded:digits", "--image_size", "32", "--max_train_samples", "128", "--max_eval_samples", "64",
       "--num_train_epochs", "3", "--gradual_unfreeze_epochs", "1", "--per_device_train_batch_size", "16",
       "--save_steps", "4", "--save_strategy", "steps", "--augmentation", "none", "--seed", "3", "--logging_steps", "4"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "HF_TRANSFER_NUM_THREADS": "1"}


def finetune(out, *extra, threads="1"):
    """In this process (the kill needs a process of its own; the rest does not pay a fresh interpreter's imports)."""
    return run_recipe_in_process("finetune.py", *RUN, "--output_dir", out, *extra, env={"HF_TRANSFER_NUM_THREADS": threads})


def weights(folder):
    from safetensors.torch import load_file

    return load_file(Path(folder) / "model.safetensors")


def eval_metrics(folder):
    results = json.loads((Path(folder) / "all_results.json").read_text())
    return {k: v for k, v in results.items() if k.startswith("eval_") and "runtime" not in k and "per_second" not in k}


def kill_when(out, checkpoint, process, timeout=300):
    """SIGKILL ``process`` as soon as ``checkpoint`` is complete (its transfer_plan.json is the last file written)."""
    deadline = time.monotonic() + timeout
    while not (out / checkpoint / "transfer_plan.json").exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the run never reached " + checkpoint
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    reference = finetune(tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]

    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(RECIPE), *RUN, "--output_dir", str(out)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=ENV)
    kill_when(out, "checkpoint-12", process)  # mid-epoch 1, the second unfreezing phase
    assert not (out / "all_results.json").exists() and not (out / "model.safetensors").exists()
    # A later checkpoint the kill interrupted (weights but no trainer state / plan) must be skipped, not resumed.
    half = out / "checkpoint-100"
    half.mkdir(exist_ok=True)
    (half / "model.safetensors").write_bytes(b"half-written")

    again = finetune(out)  # the folder holds a killed run: refused without an explicit choice
    assert again.returncode == 2 and "holds a previous run" in again.stderr

    resumed = finetune(out, "--resume_from_checkpoint", "True")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "skipping incomplete checkpoint" in resumed.stdout and "resuming from" in resumed.stdout
    resumed_from = resumed.stdout.split("resuming from ")[1].split()[0]
    assert Path(resumed_from).name in {"checkpoint-12", "checkpoint-16", "checkpoint-20"}

    expected, got = weights(tmp_path / "reference"), weights(out)
    assert expected.keys() == got.keys()
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []
    assert eval_metrics(out) == eval_metrics(tmp_path / "reference")


@pytest.mark.slow
def test_same_command_twice_gives_identical_model_and_metrics(tmp_path):
    """Two threads (where reduction order could differ), one epoch of full fine-tuning; one run in a fresh process and
    one in this process, so nothing process-local (hash seeds, import order) can make them agree by accident."""
    args = [*RUN, "--num_train_epochs", "1", "--gradual_unfreeze_epochs", "0"]
    first = subprocess.run([sys.executable, str(RECIPE), *args, "--output_dir", str(tmp_path / "a")], capture_output=True,
                           text=True, env={**ENV, "HF_TRANSFER_NUM_THREADS": "2"}, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_recipe_in_process("finetune.py", *args, "--output_dir", tmp_path / "b", env={"HF_TRANSFER_NUM_THREADS": "2"})
    assert second.returncode == 0, second.stderr[-3000:]
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert eval_metrics(tmp_path / "a") == eval_metrics(tmp_path / "b")


@pytest.fixture(scope="module")
def tiny_vit_folder(tmp_path_factory):
    """A transformers 5 ViT: its files keep the old key names (encoder.layer.N.attention.attention.query) while the
    model in memory has the new ones (vit.layers.N.attention.q_proj)."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vit") / "vit"
    ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3,
                                        num_attention_heads=2, intermediate_size=64, num_labels=3)).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_transformers_vit_resumes_to_the_uninterrupted_result(tmp_path, tiny_vit_folder):
    """A checkpoint of a renamed-keys model resumes every tensor: the result equals an uninterrupted run's, bit for bit.
    The interruption is simulated by removing what the run wrote after checkpoint-8 (the kill itself is tested above)."""
    import shutil

    args = ["--model_name_or_path", tiny_vit_folder, "--num_train_epochs", "2", "--gradual_unfreeze_epochs", "0"]
    out = tmp_path / "run"
    reference = finetune(out, *args)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected, expected_metrics = weights(out), eval_metrics(out)
    for path in out.iterdir():
        if path.name != "checkpoint-8":
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    resumed = finetune(out, *args, "--resume_from_checkpoint", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "missing keys" not in resumed.stdout + resumed.stderr
    got = weights(out)
    assert expected.keys() == got.keys()
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []
    assert eval_metrics(out) == expected_metrics


def test_a_checkpoint_that_does_not_fit_the_model_is_refused(tmp_path, tiny_vit_folder):
    """Weights that would leave missing or unexpected keys: one line, before any step."""
    from hf_transfer import TransferError
    from hf_transfer.backbones import load_backbone
    from hf_transfer.backbones.resume import load_checkpoint_weights
    from safetensors.torch import save_file

    model = load_backbone(str(tiny_vit_folder), labels=["a", "b", "c"])
    model.save_pretrained(tmp_path / "ok")
    assert load_checkpoint_weights(model, tmp_path / "ok") is True  # renamed on disk, loaded under the model's names
    state = weights(tmp_path / "ok")
    state.pop(next(k for k in state if "query" in k))
    state["extra.weight"] = torch.zeros(1)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    save_file(state, tmp_path / "bad" / "model.safetensors")
    with pytest.raises(TransferError, match="missing 1 .*unexpected 1") as info:
        load_checkpoint_weights(model, tmp_path / "bad")
    assert "\n" not in str(info.value)
