"""Scaling bugs a GPU run would hit, settled on CPU: the launcher's mixed precision reaching DeepSpeed's config
merge, DataParallel in one process, float32 master weights saved under DeepSpeed, BatchNorm under 16-bit weights.

DeepSpeed runs here for real (one process, gloo, `pip install -e '.[test]'` brings it); without it those tests skip.
"""

import json
import socket
import types
from pathlib import Path

import pytest
import torch

from hf_transfer import TransferError, load_backbone
from hf_transfer.engines import SETTING_REFUSALS, detect_engine
from hf_transfer.plan import TransferConfig, TransferPlan

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_deepspeed_process(monkeypatch):
    """The variables torchrun gives a single process; accelerate's and torch's process state reset afterwards."""
    import os

    pytest.importorskip("deepspeed")
    saved = dict(os.environ)  # accelerate and DeepSpeed export variables of their own while they set up
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "LOCAL_RANK": "0",
                       "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    yield
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


# ------------------------------------------------------------------------------ 1. mixed precision from accelerate
@pytest.mark.parametrize("config", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_configs_need_no_precision_flag(config, one_deepspeed_process, monkeypatch, tmp_path):
    """`accelerate launch --config_file recipes/accelerate/deepspeed_zero2.yaml recipes/finetune.py`: accelerate puts
    bf16 into DeepSpeed's config; transformers merges the arguments into it and refuses any disagreement."""
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    from hf_transfer.training_args import TransferTrainingArguments
    from test_engines import launcher_environment

    env, _ = launcher_environment(str(ROOT / "recipes" / "accelerate" / f"{config}.yaml"), ["--num_processes", "2"])
    for key, value in {**env, "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    args = TransferTrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    assert args.bf16 and not args.fp16 and args.deepspeed_plugin.deepspeed_config["bf16"]["enabled"] is True
    merged = HfTrainerDeepSpeedConfig(args.deepspeed_plugin.deepspeed_config)  # as Trainer.propagate_args_to_deepspeed
    merged.trainer_config_process(args)
    assert merged.mismatches == []


def test_a_contradicting_precision_flag_is_one_line(monkeypatch, tmp_path):
    from hf_transfer.engines import align_mixed_precision

    args = types.SimpleNamespace(bf16=False, fp16=True, deepspeed=None)
    with pytest.raises(TransferError) as err:
        align_mixed_precision(args, env={"ACCELERATE_MIXED_PRECISION": "bf16"})
    assert str(err.value) == SETTING_REFUSALS["precision_conflict"]
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"fp16": {"enabled": True}, "zero_optimization": {"stage": 2}}))
    args = types.SimpleNamespace(bf16=False, fp16=False, deepspeed=str(ds))
    assert align_mixed_precision(args, env={}) == "fp16" and args.fp16  # a --deepspeed file's own precision
    args = types.SimpleNamespace(bf16=False, fp16=False, deepspeed=None)
    assert align_mixed_precision(args, env={"ACCELERATE_MIXED_PRECISION": "no"}) is None and not args.bf16


# ------------------------------------------------------------------------------------- 2. DataParallel refused
def test_several_gpus_in_one_process_are_refused_before_training(monkeypatch, tmp_path, random_images):
    """Plain `python recipes/finetune.py` on a 2-GPU host: Trainer would wrap the model in nn.DataParallel (its
    replicas run frozen BatchNorm with batch statistics). The device count is faked: this CPU has no GPU."""
    from hf_transfer.arguments import finetune_argument_types, parse_args
    from hf_transfer.jobs.finetune import run_finetune
    from hf_transfer.trainer import TransferTrainer
    from hf_transfer.training_args import TransferTrainingArguments

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the devices stay the CPU's
    args = TransferTrainingArguments(output_dir=str(tmp_path / "lib"), report_to=[])
    assert args.n_gpu == 2  # what Trainer reads to choose nn.DataParallel
    assert detect_engine(args, env={}).gpus_per_process == 2
    model = load_backbone("test_resnet", labels=["a", "b"], pretrained=False)
    with pytest.raises(TransferError) as err:
        TransferTrainer(model=model, args=args, plan=TransferPlan.build(model, TransferConfig(bn_policy="frozen")),
                        train_dataset=random_images(n=8, size=32))
    assert str(err.value) == SETTING_REFUSALS["data_parallel"] and "accelerate launch" in str(err.value)
    out = tmp_path / "out"  # the recipe refuses before the output folder, the data or the model
    with pytest.raises(TransferError) as err:
        run_finetune(*parse_args(finetune_argument_types(), ["--dataset_name", "nobody/not-loaded", "--output_dir", str(out)]))
    assert str(err.value) == SETTING_REFUSALS["data_parallel"] and not out.exists()
    # one GPU, or --use_cpu: one process, nothing to refuse
    assert detect_engine(TransferTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]), env={}).gpus_per_process == 1


# --------------------------------------------------------------------------- 3. float32 masters under DeepSpeed
def _deepspeed_run(tmp_path, arch: str, stage: int = 2, steps: int = 3):
    from hf_transfer.trainer import TransferTrainer
    from hf_transfer.training_args import TransferTrainingArguments
    from conftest import RandomImages

    torch.manual_seed(0)
    model = load_backbone(arch, labels=["a", "b"], pretrained=False)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    plan = TransferPlan.build(model, TransferConfig(learning_rate=1e-2, freeze="depth:1", bn_policy="frozen"))
    config = {"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": stage}, "bf16": {"enabled": True}}
    args = TransferTrainingArguments(output_dir=str(tmp_path / "run"), deepspeed=config, use_cpu=True, max_steps=steps,
                                     per_device_train_batch_size=4, report_to=[], logging_strategy="no",
                                     disable_tqdm=True, eval_strategy="no", learning_rate=1e-2)
    assert args.bf16  # from the DeepSpeed config
    trainer = TransferTrainer(model=model, args=args, plan=plan, train_dataset=RandomImages(n=16, size=32))
    trainer.train()
    return trainer, plan, initial


@pytest.mark.slow
def test_deepspeed_bf16_trains_batchnorm_and_saves_the_float32_masters(one_deepspeed_process, tmp_path):
    """DeepSpeed ZeRO-2 under bf16, for real on CPU, with a BatchNorm CNN (one run: DeepSpeed keeps process-wide
    state). 5: DeepSpeed casts BatchNorm weights to bf16 and keeps the running statistics float32, a mix
    torch.batch_norm refuses at the first step unless BatchNorm computes in float32. 3: the folder holds the
    optimizer's float32 masters, not the module's bf16 copies; the frozen stem and its statistics stay exact."""
    from deepspeed.utils import safe_get_full_fp32_param
    from safetensors.torch import load_file

    from hf_transfer.saving import save_model_folder, trained_weights

    trainer, plan, initial = _deepspeed_run(tmp_path, "test_resnet")
    module = trainer.accelerator.unwrap_model(trainer.model)
    assert module.timm_model.fc.weight.dtype == torch.bfloat16  # DeepSpeed trains 16-bit copies ...
    assert module.timm_model.layer4[0].bn1.running_mean.dtype == torch.float32  # ... beside float32 statistics
    name = "timm_model.layer4.0.bn1.running_mean"
    assert not torch.equal(module.get_buffer(name), initial[name])  # trained BatchNorm statistics moved
    masters = {n: safe_get_full_fp32_param(p) for n, p in module.named_parameters() if p.requires_grad}
    trained, weights = trained_weights(trainer)
    save_model_folder(trained, tmp_path / "out", image_size=32, timm_layout=True, state_dict=weights)
    saved = load_file(tmp_path / "out" / "model.safetensors")
    assert {t.dtype for t in saved.values() if t.is_floating_point()} == {torch.float32}
    for param_name, master in masters.items():
        assert torch.equal(saved[param_name.removeprefix("timm_model.")], master.float()), param_name
    rounded = [n for n, p in module.named_parameters() if p.requires_grad and not torch.equal(p.float(), masters[n])]
    assert rounded  # the bf16 copies differ from the masters: saving them would have lost precision
    stem = [n for g in plan.groups if g.frozen for n in g.params] + ["timm_model.bn1.running_mean"]
    assert "timm_model.bn1" in plan.frozen_batchnorm_names(module)
    assert len(stem) > 1 and all(torch.equal(saved[n.removeprefix("timm_model.")], initial[n]) for n in stem)


# ------------------------------------------------------------------------------ 5. BatchNorm under bf16 weights
def test_float32_batchnorm_matches_torch_and_timm_in_float32():
    """The float32 BatchNorm forward is torch's own arithmetic: same outputs and running statistics as the module in
    float32, in training and eval, for nn.BatchNorm2d and timm's BatchNormAct2d (activation kept)."""
    from timm.layers import BatchNormAct2d

    from hf_transfer.engines import keep_batchnorm_float32

    for make in (lambda: torch.nn.BatchNorm2d(4), lambda: torch.nn.BatchNorm2d(4, momentum=None),
                 lambda: BatchNormAct2d(4, act_layer=torch.nn.ReLU)):
        torch.manual_seed(0)
        reference, patched = make(), make()
        patched.load_state_dict(reference.state_dict())
        assert keep_batchnorm_float32(torch.nn.Sequential(patched)) == 1
        x = torch.randn(3, 4, 5, 5)
        for mode in (True, False, True):
            reference.train(mode), patched.train(mode)
            assert torch.equal(reference(x), patched(x))
        for key, value in reference.state_dict().items():
            assert torch.equal(value, patched.state_dict()[key]), key
        patched.to(torch.bfloat16)  # weights and statistics cast: computed in float32, returned in bf16
        out = patched(x.bfloat16())
        assert out.dtype == torch.bfloat16 and patched.running_mean.dtype == torch.float32


def test_find_unused_parameters_only_when_something_unfreezes(tiny_training_args, random_images):
    from hf_transfer.trainer import TransferTrainer

    for config, expected in ((TransferConfig(freeze="depth:1"), False), (TransferConfig(gradual_unfreeze_epochs=1), True)):
        model = load_backbone("test_resnet", labels=["a", "b"], pretrained=False)
        args = tiny_training_args()
        TransferTrainer(model=model, args=args, plan=TransferPlan.build(model, config), train_dataset=random_images(n=8))
        assert args.ddp_find_unused_parameters is expected


# --------------------------------------------------------------------- 4. the shipped FSDP2 config, 2 processes
@pytest.mark.slow
def test_shipped_fsdp2_config_trains_on_two_cpu_processes(tmp_path):
    """`accelerate launch --config_file recipes/accelerate/fsdp2.yaml --num_processes 2 recipes/finetune.py` with the
    default CNN (embedded EfficientNet-Lite0, channels_last, BatchNorm, bf16 from the config): both processes end
    with the same weights, the folder holds them in float32, the frozen stem is untouched."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    accelerate = Path(sys.executable).with_name("accelerate")
    record, out = tmp_path / "record", tmp_path / "out"
    record.mkdir()
    launcher_set = ("ACCELERATE_", "FSDP_", "MASTER_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(launcher_set)}, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT), "HF_TRANSFER_TEST_RECORD": str(record), "HF_TRANSFER_NUM_THREADS": "1"}
    cmd = [str(accelerate), "launch", "--config_file", str(ROOT / "recipes" / "accelerate" / "fsdp2.yaml"),
           "--num_processes", "2", str(ROOT / "tests" / "multiprocess_recipe.py"), "--use_cpu", "--max_steps", "1", "--warmup_steps", "0",
           "--max_train_samples", "32", "--max_eval_samples", "16", "--image_size", "48", "--freeze", "depth:1",
           "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--output_dir", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "engine: FSDP v2, 2 processes, bf16" in result.stdout
    ranks = [load_file(record / f"rank{r}.safetensors") for r in (0, 1)]
    final = {k[len("final/"):]: v for k, v in ranks[0].items() if k.startswith("final/")}
    initial = {k[len("initial/"):]: v for k, v in ranks[0].items() if k.startswith("initial/")}
    saved = load_file(out / "model.safetensors")
    assert {f"timm_model.{k}" for k in saved} == set(final)
    assert {t.dtype for t in saved.values() if t.is_floating_point()} == {torch.float32}
    assert all(torch.equal(saved[k], final[f"timm_model.{k}"].float()) for k in saved)
    plan = json.loads((out / "transfer_plan.json").read_text())
    frozen = [n for g in plan["groups"] if g["frozen"] for n in g["params"]]
    assert frozen and all(torch.equal(saved[n.removeprefix("timm_model.")], initial[n].float()) for n in frozen)
    head = [n for n in saved if n.startswith("classifier.")]
    assert head and any(not torch.equal(saved[n], initial[f"timm_model.{n}"].float()) for n in head)  # it trained
    assert json.loads((out / "all_results.json").read_text())["eval_samples"] == 16


# ------------------------------------------------------------------------------------------- data at scale
def _folder_splits(root, cache_dir):
    import datasets

    return datasets.DatasetDict({"train": datasets.load_dataset("imagefolder", data_dir=str(root),
                                                                cache_dir=str(cache_dir))["train"]})


def _checks_in_parallel(root, datasets_cache, check_cache, processes: int) -> list[bool]:
    """`processes` forked processes run the cached check at once -> whether each read the cache."""
    import multiprocessing

    from hf_transfer.datacheck import checked_images

    splits = _folder_splits(root, datasets_cache)
    context = multiprocessing.get_context("fork")
    with context.Pool(processes) as pool:
        return pool.starmap(_cached_flag, [(splits, str(check_cache))] * processes)


def _cached_flag(splits, check_cache) -> bool:
    from hf_transfer.datacheck import checked_images

    return checked_images(splits, "image", "full", cache_dir=check_cache).cached


def test_data_check_runs_once_per_machine_and_again_when_a_file_changes(image_folder, tmp_path):
    """Two processes start the check together: one checks, the other waits and reads its result; a rerun reads it
    back; an edited or removed file (the datasets fingerprint: files + modification times) checks again."""
    import time

    from PIL import Image

    from hf_transfer.datacheck import checked_images

    cache = tmp_path / "check-cache"
    assert sorted(_checks_in_parallel(image_folder, tmp_path / "ds", cache, 2)) == [False, True]
    again = checked_images(_folder_splits(image_folder, tmp_path / "ds"), "image", cache_dir=str(cache))
    assert again.cached and again.total == 24 and again.bad == []
    time.sleep(0.01)
    (image_folder / "digit_0" / "0.png").write_bytes(b"")  # now unreadable: the old result must not be served
    changed = checked_images(_folder_splits(image_folder, tmp_path / "ds"), "image", cache_dir=str(cache))
    assert not changed.cached and [(b.row, b.reason) for b in changed.bad] == [(0, "zero bytes")]
    (image_folder / "digit_0" / "0.png").unlink()
    removed = checked_images(_folder_splits(image_folder, tmp_path / "ds"), "image", cache_dir=str(cache))
    assert not removed.cached and removed.total == 23 and removed.bad == []
    assert len(list(cache.glob("*.json"))) == 3


def test_data_check_modes(image_folder, tmp_path, monkeypatch):
    """sample: a seeded random subset per split, its bad rows named by their real row numbers; off: nothing checked
    (and the run says so); an unknown mode: one line."""
    import hf_transfer.datacheck as datacheck
    from hf_transfer import TransferError

    (image_folder / "digit_1" / "9.png").write_bytes(b"not a png")
    splits = _folder_splits(image_folder, tmp_path / "ds")
    monkeypatch.setattr(datacheck, "SAMPLE_IMAGES", 23)
    rows = datacheck.sampled_rows(24, 23, seed=0)
    report = datacheck.checked_images(splits, "image", "sample", cache_dir=str(tmp_path / "c"))
    assert report.sampled == {"train": 23} and report.total == 24
    bad_row = [i for i, p in enumerate(splits["train"].cast_column("image", __import__("datasets").Image(decode=False))["image"])
               if p["path"].endswith("digit_1/9.png")][0]
    assert [b.row for b in report.bad] == ([bad_row] if bad_row in rows else [])
    assert "random sample: 23 of 24 images" in datacheck.describe_check(report)
    assert datacheck.checked_images(splits, "image", "off") is None
    assert datacheck.describe_check(None).startswith("data check off")
    with pytest.raises(TransferError, match=r"^--data_check 'fast' is not understood; use full, sample, off$"):
        datacheck.checked_images(splits, "image", "fast")


def test_fingerprints_never_read_the_table(image_folder, tmp_path, monkeypatch):
    """The features cache and the data check key on datasets' own fingerprint: a subsample's key comes without
    hashing the Arrow table or stat-ing the files (the old key read both for the whole underlying data)."""
    import os

    from hf_transfer.fingerprint import folder_fingerprint, split_fingerprint

    split = _folder_splits(image_folder, tmp_path / "ds")["train"]
    subsample, same, reordered = split.select([3, 1, 2]), split.select([3, 1, 2]), split.select([1, 2, 3])
    real_stat, root = os.stat, str(image_folder)

    def no_image_stat(path, *args, **kwargs):
        assert not str(path).startswith(root), f"stat of {path}"
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", no_image_stat)
    keys = {split_fingerprint(subsample), split_fingerprint(reordered), split_fingerprint(split)}
    assert len(keys) == 3  # row order and rows both count
    assert split_fingerprint(subsample) == split_fingerprint(same)
    monkeypatch.undo()
    before = folder_fingerprint(image_folder)
    assert folder_fingerprint(image_folder) == before
    (image_folder / "digit_0" / "new.png").write_bytes((image_folder / "digit_0" / "0.png").read_bytes())
    assert folder_fingerprint(image_folder) != before


def test_store_budget_and_loader_workers_per_local_process(monkeypatch):
    """Every local process holds its own store, so each gets its share of the machine's budget; workers are the
    process's share of the cores (less one for the loop) when images are decoded per step, none when stored."""
    from hf_transfer import fastdata

    monkeypatch.setenv("HF_TRANSFER_IMAGE_STORE_BYTES", str(8 << 30))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert fastdata.store_budget_bytes() == 1 << 30
    monkeypatch.setattr(os_module(), "sched_getaffinity", lambda pid: set(range(96)))
    args = types.SimpleNamespace(dataloader_num_workers=0, dataloader_num_workers_was_defaulted=True,
                                 dataloader_persistent_workers=False, dataloader_prefetch_factor=None)
    stored = fastdata.PreparedImages(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), None)
    assert fastdata.resolve_loader_workers(args, {"train": stored, "validation": stored}) is None
    assert args.dataloader_num_workers == 0
    note = fastdata.resolve_loader_workers(args, {"train": [1, 2], "validation": stored})
    assert (args.dataloader_num_workers, args.dataloader_persistent_workers, args.dataloader_prefetch_factor) == (8, True, 4)
    assert note.startswith("images decoded per step (train): 8 data-loader worker processes per training process")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(os_module(), "sched_getaffinity", lambda pid: {0, 1})
    args = types.SimpleNamespace(dataloader_num_workers=0, dataloader_num_workers_was_defaulted=True,
                                 dataloader_persistent_workers=False, dataloader_prefetch_factor=None)
    fastdata.resolve_loader_workers(args, {"train": [1]})
    assert args.dataloader_num_workers == 1  # at least one: decoding leaves the training loop
    chosen = types.SimpleNamespace(dataloader_num_workers=3, dataloader_num_workers_was_defaulted=False)
    assert fastdata.resolve_loader_workers(chosen, {"train": [1]}) is None and chosen.dataloader_num_workers == 3


def os_module():
    import os

    return os
