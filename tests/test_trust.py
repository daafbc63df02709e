"""Common mistakes become one-line errors, and nothing is silently wrong: schedules that cannot happen, input sizes
the network cannot take, output folders that would mix runs, checkpoints from another run, stale cache hits,
misleading learning-rate logs and optimizers that would bypass the plan."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_transfer import TransferError, load_backbone, load_image_classification_data
from hf_transfer.plan import TransferConfig, TransferPlan
from hf_transfer.saving import prepare_output_dir, staged_output
from hf_transfer.trainer import TransferTrainer, latest_checkpoint
from conftest import run_recipe_in_process



def run_recipe(*args, env_extra=None):
    return run_recipe_in_process("finetune.py", *args, env=env_extra)


def one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("finetune: error:"), last
    for fragment in fragments:
        assert fragment in last, last
    return last


# ------------------------------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("config, epochs, message", [
    (TransferConfig(strategy="lp_ft", lp_epochs=2), 1, "--lp_epochs 2"),
    (TransferConfig(strategy="lp_ft", lp_epochs=1), 1, "--lp_epochs 1"),
    (TransferConfig(gradual_unfreeze_epochs=5), 1, "--gradual_unfreeze_epochs 5"),
    (TransferConfig(gradual_unfreeze_epochs=2), 2, "at epoch 2"),
])
def test_schedules_that_never_reach_the_body_are_refused(config, epochs, message):
    with pytest.raises(TransferError, match="pretrained layers would never train") as info:
        config.check_run_length(epochs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_schedules_that_reach_the_body_pass_and_partial_reach_is_reported():
    TransferConfig(strategy="lp_ft", lp_epochs=1).check_run_length(1.5)  # the fractional second epoch still runs
    TransferConfig(strategy="linear_probe").check_run_length(1)
    model = load_backbone("test_resnet", labels=["a", "b"], pretrained=False)
    plan = TransferPlan.build(model, TransferConfig(gradual_unfreeze_epochs=1))
    note = plan.check_schedule(3)
    assert "stay frozen" in note and f"{len(plan.depth_names)} epochs would unfreeze all" in note  # body groups + 1
    assert plan.check_schedule(len(plan.depth_names)) is None


def test_max_steps_schedule_is_checked_by_the_trainer(random_images, tiny_training_args):
    """Library use: TransferTrainer counts epochs from max_steps (2 steps per epoch here) before training."""
    model = load_backbone("test_resnet", labels=["a", "b"], pretrained=False)
    plan = TransferPlan.build(model, TransferConfig(strategy="lp_ft", lp_epochs=2))
    trainer = TransferTrainer(model=model, plan=plan, train_dataset=random_images(n=16, size=32),
                              args=tiny_training_args(max_steps=3))
    with pytest.raises(TransferError, match=r"--max_steps 3 at 2 steps per epoch"):
        trainer.train()


def test_recipe_refuses_an_impossible_schedule_before_loading(tmp_path):
    result = run_recipe("--strategy", "lp_ft", "--lp_epochs", "2", "--num_train_epochs", "1", "--output_dir", tmp_path / "o")
    one_line_error(result, "--lp_epochs 2", "the run has 1 epoch(s)")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ input size
def test_input_below_the_total_stride_is_refused():
    from hf_transfer.resolution import check_input_size

    model = load_backbone("embedded:efficientnet_lite0", labels=["a", "b"])
    with pytest.raises(TransferError, match="below the backbone's total stride 32"):
        check_input_size(model, 7)
    check_input_size(model, 32)


def test_input_the_forward_rejects_is_refused():
    from hf_transfer.resolution import check_input_size

    model = load_backbone("test_vit", labels=["a", "b"], pretrained=False)  # patch 16: sizes must divide by 16
    with pytest.raises(TransferError, match="cannot take 97 px inputs .*divisible by patch size"):
        check_input_size(model, 97)
    check_input_size(model, 96)


# --------------------------------------------------------------------------------------------- output folders
def _previous_run(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "all_results.json", "preprocessor_config.json"):
        (folder / name).write_text("{}")
    (folder / "checkpoint-8").mkdir()
    (folder / "notes.txt").write_text("the user's own file")


def test_a_folder_with_a_previous_run_is_refused_or_replaced(tmp_path):
    folder = tmp_path / "out"
    _previous_run(folder)
    with pytest.raises(TransferError, match="holds a previous run .*--overwrite_output_dir"):
        prepare_output_dir(folder)
    prepare_output_dir(folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]  # stale model, processor and checkpoints gone


def test_resuming_keeps_checkpoints_but_drops_the_completion_marker(tmp_path):
    folder = tmp_path / "out"
    _previous_run(folder)
    prepare_output_dir(folder, resuming=True)
    assert (folder / "checkpoint-8").is_dir() and not (folder / "all_results.json").exists()


def test_staging_is_private_and_the_marker_goes_first(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "all_results.json").write_text("{\"old\": 1}")
    with staged_output(folder) as first, staged_output(folder) as second:
        assert first != second and first.parent == second.parent == folder
        (first / "model.safetensors").write_text("new")
        (first / "all_results.json").write_text("{\"new\": 1}")
    assert json.loads((folder / "all_results.json").read_text()) == {"new": 1}
    assert not list(folder.glob(".staging*"))
    with pytest.raises(RuntimeError):
        with staged_output(folder) as staging:
            (staging / "all_results.json").write_text("{}")
            raise RuntimeError("crash while saving")
    assert not (folder / "all_results.json").exists() or json.loads((folder / "all_results.json").read_text()) == {"new": 1}


def test_second_run_into_a_finished_folder_is_refused(tmp_path):
    _previous_run(tmp_path / "done")
    result = run_recipe("--output_dir", tmp_path / "done")
    one_line_error(result, "holds a previous run", "--overwrite_output_dir")


# ---------------------------------------------------------------------------------------------------- resume
def test_resume_true_without_checkpoints_starts_fresh_and_bad_paths_fail_early(tmp_path, capsys):
    from hf_transfer.jobs.finetune import resolve_resume

    assert resolve_resume("True", str(tmp_path)) is None
    assert "training from the start" in capsys.readouterr().out
    assert resolve_resume("auto", str(tmp_path / "missing")) is None
    assert resolve_resume("False", str(tmp_path)) is None
    with pytest.raises(TransferError, match="is not a checkpoint"):
        resolve_resume(str(tmp_path / "checkpoint-3"), str(tmp_path))


def test_recipe_refuses_a_bad_checkpoint_path_before_loading(tmp_path):
    result = run_recipe("--resume_from_checkpoint", tmp_path / "nope", "--output_dir", tmp_path / "o")
    one_line_error(result, "is not a checkpoint")


def _trained_checkpoint(tmp_path, random_images, tiny_training_args, labels=("a", "b")):
    model = load_backbone("test_resnet", labels=list(labels), pretrained=False)
    args = tiny_training_args(output_dir=str(tmp_path / "run"), max_steps=2, save_strategy="steps", save_steps=1)
    TransferTrainer(model=model, args=args, train_dataset=random_images(n=16, size=32)).train()
    return latest_checkpoint(str(tmp_path / "run"))


def test_resume_with_another_class_set_is_refused(tmp_path, random_images, tiny_training_args):
    checkpoint = _trained_checkpoint(tmp_path, random_images, tiny_training_args)
    assert checkpoint.endswith("checkpoint-2")
    model = load_backbone("test_resnet", labels=["cat", "dog"], pretrained=False)
    trainer = TransferTrainer(model=model, args=tiny_training_args(output_dir=str(tmp_path / "run"), max_steps=4),
                              train_dataset=random_images(n=16, size=32))
    with pytest.raises(TransferError, match=r"labels: a, b -> cat, dog"):
        trainer.train(resume_from_checkpoint=checkpoint)


def test_resume_at_another_input_size_is_refused(tmp_path, random_images, tiny_training_args):
    from hf_transfer.backbones import set_preprocessing

    checkpoint = _trained_checkpoint(tmp_path, random_images, tiny_training_args)
    model = load_backbone("test_resnet", labels=["a", "b"], pretrained=False)
    set_preprocessing(model, 64)
    trainer = TransferTrainer(model=model, args=tiny_training_args(output_dir=str(tmp_path / "run"), max_steps=4),
                              train_dataset=random_images(n=16, size=64))
    with pytest.raises(TransferError, match=r"input size: \d+ px -> 64 px"):
        trainer.train(resume_from_checkpoint=checkpoint)


def test_latest_checkpoint_skips_half_written_ones(tmp_path, random_images, tiny_training_args):
    checkpoint = _trained_checkpoint(tmp_path, random_images, tiny_training_args)
    half = Path(checkpoint).parent / "checkpoint-9"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"")
    assert latest_checkpoint(str(Path(checkpoint).parent)) == checkpoint


# ------------------------------------------------------------------------------------------ save before eval
def test_the_model_is_saved_before_evaluation(tmp_path, monkeypatch):
    """A crash while evaluating (e.g. a broken test split) keeps the trained model and leaves no completion marker."""
    from transformers import Trainer

    from hf_transfer.arguments import DataArguments, ModelArguments, TransferArguments
    from hf_transfer.jobs.finetune import run_finetune
    from hf_transfer.training_args import TransferTrainingArguments

    def broken_evaluate(self, *args, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(Trainer, "evaluate", broken_evaluate)
    monkeypatch.setattr(Trainer, "predict", broken_evaluate)  # the validation split is evaluated with predict()
    out = tmp_path / "out"
    args = TransferTrainingArguments(output_dir=str(out), max_steps=1, eval_strategy="no", report_to=[], use_cpu=True,
                                     disable_tqdm=True)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        run_finetune(ModelArguments(image_size=32), DataArguments(dataset_name="embedded:lfw", max_train_samples=20),
                     args, TransferArguments())
    assert (out / "model.safetensors").is_file() and (out / "transfer_plan.json").is_file()
    assert not (out / "all_results.json").exists()


# ----------------------------------------------------------------------------------------------------- caches
@pytest.fixture(scope="module")
def digits_splits():
    from hf_transfer.backbones import data_config, set_preprocessing
    from hf_transfer.transforms import with_transforms

    data = load_image_classification_data("embedded:digits", max_train_samples=30, max_eval_samples=10)
    model = load_backbone("test_resnet", labels=data.labels, pretrained=False)
    set_preprocessing(model, 32)
    return data, data_config(model)


def _features(data, cfg, cache, model, mean=None):
    from hf_transfer.features import compute_features, parse_layers
    from hf_transfer.backbones import build_layer_map
    from hf_transfer.transforms import with_transforms

    # 64 px: a 2x2 last feature map, so average and max pooling differ
    splits = with_transforms(data.splits, data, {**cfg, **({"mean": mean} if mean else {})}, image_size=64,
                             augmentation="none")
    return compute_features(model, splits, parse_layers("pooled", build_layer_map(model)), cache=cache, image_size=64)


def _resnet(labels, **kwargs):
    import timm

    from hf_transfer import wrap_timm_model

    torch.manual_seed(0)
    model = wrap_timm_model(timm.create_model("test_resnet", num_classes=len(labels), **kwargs))
    model.config.id2label = dict(enumerate(labels))
    return model


def test_feature_cache_keys_hold_the_model_configuration(digits_splits, tmp_path):
    from hf_transfer.features import FeatureCache

    data, cfg = digits_splits
    cache = FeatureCache(tmp_path)
    first = _features(data, cfg, cache, _resnet(data.labels))
    assert _features(data, cfg, cache, _resnet(data.labels)).all_cached
    max_pool = _features(data, cfg, cache, _resnet(data.labels, global_pool="max"))  # same weights, other pooling
    assert not any(max_pool.from_cache.values())
    assert not np.allclose(max_pool.features["train"]["pooled"], first.features["train"]["pooled"])


def test_feature_cache_keys_hold_library_versions(digits_splits, tmp_path, monkeypatch):
    from hf_transfer import features

    data, cfg = digits_splits
    cache = features.FeatureCache(tmp_path)
    _features(data, cfg, cache, _resnet(data.labels))
    monkeypatch.setattr(features, "library_versions", lambda: {"torch": "99.0"})
    assert not any(_features(data, cfg, cache, _resnet(data.labels)).from_cache.values())


def test_without_a_transform_key_features_follow_the_splits_transform(digits_splits, tmp_path):
    from hf_transfer.features import FeatureCache

    data, cfg = digits_splits
    cache = FeatureCache(tmp_path)
    plain = _features(data, cfg, cache, _resnet(data.labels))
    shifted = _features(data, cfg, cache, _resnet(data.labels), mean=(0.2, 0.2, 0.2))
    assert not any(shifted.from_cache.values())
    assert not np.allclose(plain.features["train"]["pooled"], shifted.features["train"]["pooled"])


# ------------------------------------------------------------------------------------------------- trainer
def test_logged_learning_rate_is_the_heads_and_groups_are_named(random_images, tiny_training_args):
    model = load_backbone("test_resnet", labels=["a", "b"], pretrained=False)
    plan = TransferPlan.build(model, TransferConfig(learning_rate=1e-2, backbone_lr_multiplier=0.1))
    trainer = TransferTrainer(model=model, plan=plan, train_dataset=random_images(n=16, size=32),
                              args=tiny_training_args(max_steps=2, logging_strategy="steps", logging_steps=1,
                                                      lr_scheduler_type="constant", warmup_steps=0))
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "learning_rate" in entry]
    assert logged and all(entry["learning_rate"] == pytest.approx(1e-2) for entry in logged)
    assert all(entry["learning_rate/backbone"] == pytest.approx(1e-3) for entry in logged)


def test_layer_decay_logs_every_named_group(random_images, tiny_training_args):
    model = load_backbone("test_resnet", labels=["a", "b"], pretrained=False)
    plan = TransferPlan.build(model, TransferConfig(learning_rate=1e-2, layer_decay=0.5))
    trainer = TransferTrainer(model=model, plan=plan, train_dataset=random_images(n=8, size=32),
                              args=tiny_training_args(max_steps=1, logging_strategy="steps", logging_steps=1,
                                                      lr_scheduler_type="constant", warmup_steps=0))
    trainer.train()
    entry = next(e for e in trainer.state.log_history if "learning_rate" in e)
    expected = {g.name.split("/no_decay")[0]: g.lr for g in plan.groups if not g.name.startswith("head")}
    assert {k.split("/", 1)[1]: v for k, v in entry.items() if k.startswith("learning_rate/")} == pytest.approx(expected)


@pytest.mark.parametrize("optim", ["galore_adamw", "lomo", "apollo_adamw_layerwise"])
def test_optimizers_that_need_the_model_are_refused(optim, tiny_training_args):
    model = load_backbone("test_resnet", labels=["a", "b"], pretrained=False)
    with pytest.raises(TransferError, match=f"--optim {optim} builds its own parameter groups"):
        TransferTrainer(model=model, args=tiny_training_args(optim=optim))


def test_push_to_hub_without_a_repo_id_is_one_line_before_training(tmp_path):
    # Offline, --push_to_hub only warns at start and fails at the end (tests/test_hub.py); a missing repo id is
    # known at once.
    result = run_recipe("--push_to_hub", "--output_dir", tmp_path / "o")
    one_line_error(result, "--push_to_hub needs --hub_model_id")
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------- the data check
def test_recipe_lists_every_bad_image_then_skip_trains_without_them(image_folder, tmp_path):
    (image_folder / "digit_0" / "empty.png").write_bytes(b"")
    (image_folder / "digit_1" / "notes.png").write_text("not an image")
    refused = run_recipe("--train_dir", image_folder, "--image_size", "32", "--output_dir", tmp_path / "refused")
    last = one_line_error(refused, "2 unreadable images in train", "empty.png: zero bytes", "notes.png: not an image",
                          "--on_bad_image skip")
    assert not (tmp_path / "refused").exists()

    out = tmp_path / "skipped"
    done = run_recipe("--train_dir", image_folder, "--image_size", "32", "--on_bad_image", "skip", "--eval_strategy", "no",
                      "--output_dir", out)
    assert done.returncode == 0, done.stderr[-3000:]
    skipped = json.loads((out / "bad_images.json").read_text())
    assert sorted(Path(entry["path"]).name for entry in skipped) == ["empty.png", "notes.png"], last
    assert json.loads((out / "all_results.json").read_text())["skipped_bad_images"] == 2


# ============================================================ Trust II: the folder you get is the model you trained
def _tiny_bit(labels=3):
    from transformers import BitConfig, BitForImageClassification

    torch.manual_seed(0)
    return BitForImageClassification(BitConfig(embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                                               num_groups=8, num_labels=labels))


def test_lora_on_weight_standardized_convolutions_is_refused():
    """BiT standardizes each conv's weight in its forward: LoRA's branch adds outside the standardization, the merge
    inside it, so the merged folder was not the trained model (logits differed by up to 0.81)."""
    pytest.importorskip("peft")
    from hf_transfer.lora import wrap_with_lora

    with pytest.raises(TransferError, match="weight standardization .*--strategy partial or full") as info:
        wrap_with_lora(_tiny_bit(), TransferConfig(strategy="lora"))
    assert "\n" not in str(info.value)
    with pytest.raises(TransferError, match="WeightStandardizedConv2d that transforms its weight"):
        wrap_with_lora(_tiny_bit(), TransferConfig(strategy="lora", lora_target_modules="bit.embedder.convolution"))


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "test_resnet", "test_vit"])
def test_merged_lora_logits_equal_the_trained_adapters(arch, tmp_path):
    """Merged folder == load_lora(folder) to 1e-4 on every image, with non-zero LoRA updates (Conv2dSame included)."""
    pytest.importorskip("peft")
    from transformers import AutoModelForImageClassification

    from hf_transfer.backbones import adapter_for
    from hf_transfer.lora import load_lora, save_lora_output, wrap_with_lora

    torch.manual_seed(0)
    model = load_backbone(arch, labels=["a", "b", "c"], pretrained=False)
    model.save_pretrained(tmp_path / "base")
    model = load_backbone(str(tmp_path / "base"), labels=["a", "b", "c"])
    wrapped = wrap_with_lora(model, TransferConfig(strategy="lora"), source=str(tmp_path / "base"))
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    save_lora_output(wrapped, tmp_path / "out")
    size = int(adapter_for(model).data_config()["input_size"][-1])
    x = torch.randn(6, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        trained = adapter_for(load_lora(tmp_path / "out")).run(x).logits
        merged = AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()(pixel_values=x).logits
    assert (merged - trained).abs().max() < 1e-4


def test_one_writer_per_output_folder(tmp_path):
    """A second run into a folder another run is writing is refused, naming that run; the lock dies with its holder."""
    import subprocess
    import sys

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from hf_transfer.saving import lock_output_dir; "
                               f"lock_output_dir({str(out)!r}); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(TransferError, match=rf"being written by another run \(pid {holder.pid} ") as info:
            prepare_output_dir(out)
        assert "\n" not in str(info.value)
        result = run_recipe("--output_dir", out)
        one_line_error(result, "being written by another run", f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    prepare_output_dir(out)  # a killed holder leaves no stale lock
    from hf_transfer.saving import release_output_locks

    assert list(out.iterdir()) == []  # the lock adds nothing to the folder
    release_output_locks()
    prepare_output_dir(tmp_path / "new")
    release_output_locks()
    assert not (tmp_path / "new").exists()  # created for the lock, nothing written: removed again


def test_output_dir_that_is_a_file_or_cannot_be_written_is_refused_before_loading(tmp_path):
    (tmp_path / "file").write_text("x")
    one_line_error(run_recipe("--output_dir", tmp_path / "file"), "is a file, not a folder")
    import os

    if os.geteuid() == 0:  # root writes through permission bits: use a folder the kernel refuses even to root
        unwritable = Path("/sys/kernel")
        if not unwritable.is_dir():
            pytest.skip("no folder unwritable by root here")
    else:
        unwritable = tmp_path / "readonly"
        unwritable.mkdir()
        unwritable.chmod(0o555)
    one_line_error(run_recipe("--output_dir", unwritable), "cannot be written", "choose another --output_dir")


@pytest.mark.parametrize("flags, fragments", [
    (["--learning_rate", "0"], ["--learning_rate 0 ", "must be > 0"]),  # it used to train at 0.001
    (["--per_device_train_batch_size", "0"], ["--per_device_train_batch_size 0", "must be >= 1"]),
    (["--num_train_epochs", "0"], ["--num_train_epochs 0 trains nothing"]),  # it blamed --gradual_unfreeze_epochs
])
def test_run_lengths_and_rates_of_zero_are_refused_before_loading(flags, fragments, tmp_path):
    last = one_line_error(run_recipe(*flags, "--output_dir", tmp_path / "o"), *fragments)
    assert "gradual_unfreeze" not in last
    assert not (tmp_path / "o").exists()


def test_library_trainer_keeps_a_zero_learning_rate_and_the_plan_refuses_it(tiny_training_args):
    model = load_backbone("test_resnet", labels=["a", "b"], pretrained=False)
    with pytest.raises(TransferError, match="--learning_rate 0 "):
        TransferTrainer(model=model, args=tiny_training_args(learning_rate=0.0))


def test_an_image_size_beyond_memory_is_refused_from_an_estimate():
    """--image_size 10000 ran the forward check for minutes; the estimate refuses it at once, in one line."""
    import time

    from hf_transfer.resolution import activation_bytes, check_input_size

    model = load_backbone("embedded:efficientnet_lite0", labels=["a", "b"])
    small, double = activation_bytes(model, 224), activation_bytes(model, 448)
    assert small > 0 and double == 4 * small
    start = time.perf_counter()
    with pytest.raises(TransferError, match=r"--image_size 10000 needs about \d+ GiB of activations") as info:
        check_input_size(model, 10000, forward=False)
    assert time.perf_counter() - start < 10 and "\n" not in str(info.value)
    check_input_size(model, 256, forward=False)
