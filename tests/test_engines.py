"""Engines x transfer plan: detection, one-line refusals, FSDP through torch on CPU, DeepSpeed's zero-filled gradients,
the accelerate configs in recipes/accelerate/, and the docs/scale.md tables rendered from the one support table."""

import glob
import json
import types
from pathlib import Path

import pytest
import torch

from hf_transfer import TransferError, load_backbone
from hf_transfer.engines import (ENGINES, FEATURES, SETTING_REFUSALS, SUPPORT, Engine, check_engine, detect_engine,
                                 refusal_table, support_table)
from hf_transfer.plan import TransferConfig, TransferPlan, plan_name
from hf_transfer.trainer import TransferPlanCallback, TransferTrainer

ROOT = Path(__file__).resolve().parents[1]
GRADUAL = TransferConfig(freeze="depth:1", gradual_unfreeze_epochs=1)
FIXED = TransferConfig(freeze="fraction:0.5", layer_decay=0.8)


def deepspeed_env(tmp_path, config: dict) -> dict:
    """The variables `accelerate launch` exports for a DeepSpeed config file."""
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    return {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(path), "WORLD_SIZE": "8",
            "ACCELERATE_DEEPSPEED_ZERO3_INIT": "false"}


# ------------------------------------------------------------------------------------------ DeepSpeed settings
@pytest.mark.parametrize("config, plan, refused", [
    ({"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW", "params": {"lr": "auto"}}}, FIXED, "deepspeed_optimizer"),
    ({"zero_optimization": {"stage": 2}, "scheduler": {"type": "WarmupLR"}}, FIXED, "deepspeed_scheduler"),
    ({"zero_optimization": {"stage": 3}}, FIXED, "zero3_gather"),
    ({"zero_optimization": {"stage": 2, "ignore_unused_parameters": False}}, GRADUAL, "zero_unused"),
    ({"zero_optimization": {"stage": 2, "ignore_unused_parameters": False}}, FIXED, None),  # nothing unfreezes: fine
    ({"zero_optimization": {"stage": 2}}, GRADUAL, None),
    ({"zero_optimization": {"stage": 1}}, TransferConfig(strategy="lp_ft", lp_epochs=1), None),
    ({"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}}, FIXED, None),
])
def test_deepspeed_config_checks(tmp_path, config, plan, refused):
    engine = detect_engine(env=deepspeed_env(tmp_path, config))
    assert engine.kind == "deepspeed" and engine.zero_stage == config["zero_optimization"]["stage"]
    if refused is None:
        check_engine(engine, plan)
    else:
        with pytest.raises(TransferError) as err:
            check_engine(engine, plan)
        assert str(err.value) == SETTING_REFUSALS[refused] and "\n" not in str(err.value)


def test_zero3_refuses_unfreezing_and_zero3_init(tmp_path):
    z3 = {"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}}
    engine = detect_engine(env=deepspeed_env(tmp_path, z3))
    with pytest.raises(TransferError, match=r"^--gradual_unfreeze_epochs under DeepSpeed ZeRO-3: ZeRO-3 partitions .*"
                                            r"deepspeed_zero2\.yaml"):
        check_engine(engine, GRADUAL)
    with pytest.raises(TransferError, match=r"^--strategy lp_ft under DeepSpeed ZeRO-3"):
        check_engine(engine, TransferConfig(strategy="lp_ft", lp_epochs=1))
    # accelerate's default for a stage-3 config is zero3_init on; --deepspeed with stage 3 turns it on in transformers
    for engine in (detect_engine(env={**deepspeed_env(tmp_path, z3), "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true"}),
                   detect_engine(args=types.SimpleNamespace(deepspeed=z3), env={})):
        with pytest.raises(TransferError) as err:
            check_engine(engine, FIXED)
        assert str(err.value) == SETTING_REFUSALS["zero3_init"]


@pytest.mark.parametrize("engine", ["deepspeed", "fsdp1"])
def test_recipe_refuses_before_loading(engine, tmp_path, monkeypatch):
    """Through the real arguments, as `accelerate launch` hands them over (TrainingArguments builds accelerate's
    DeepSpeed plugin from the variables, which needs deepspeed installed)."""
    from hf_transfer.arguments import finetune_argument_types, parse_args
    from hf_transfer.jobs.finetune import run_finetune

    if engine == "deepspeed":
        pytest.importorskip("deepspeed")
        env, refusal = deepspeed_env(tmp_path, {"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW"}}), "deepspeed_optimizer"
    else:
        env = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_USE_ORIG_PARAMS": "false", "WORLD_SIZE": "1"}
        refusal = "fsdp1_flat"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "out"
    args = parse_args(finetune_argument_types(), ["--dataset_name", "nobody/not-loaded", "--output_dir", str(out)])
    with pytest.raises(TransferError) as err:
        run_finetune(*args)
    assert str(err.value) == SETTING_REFUSALS[refusal]
    assert not out.exists()  # refused before the output folder, the data or the model


@pytest.mark.parametrize("flags, env, asked", [(["--deepspeed", "ds.json"], {}, "--deepspeed"),
                                               ([], {"ACCELERATE_USE_DEEPSPEED": "true"}, "a DeepSpeed accelerate config")])
def test_deepspeed_without_the_package_is_one_line(flags, env, asked, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    from hf_transfer.arguments import finetune_argument_types, parse_args

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(TransferError, match=rf"^{asked} needs the deepspeed package: pip install -e '\.\[deepspeed\]'"):
        parse_args(finetune_argument_types(), flags)


# ----------------------------------------------------------------------------------------------- FSDP settings
def test_fsdp_settings_are_read_from_arguments_and_launcher_variables():
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir="unused", fsdp=True, fsdp_config={"version": 2}, report_to=[])
    assert detect_engine(args, env={}).key == "fsdp2"
    v1 = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "WORLD_SIZE": "4"}
    check_engine(detect_engine(env={**v1, "FSDP_USE_ORIG_PARAMS": "true"}), GRADUAL)
    with pytest.raises(TransferError) as err:
        check_engine(detect_engine(env={**v1, "FSDP_USE_ORIG_PARAMS": "false"}), FIXED)
    assert str(err.value) == SETTING_REFUSALS["fsdp1_flat"]
    with pytest.raises(TransferError) as err:
        check_engine(detect_engine(env={**v1, "FSDP_VERSION": "2", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}), FIXED)
    assert str(err.value) == SETTING_REFUSALS["fsdp_ram_efficient"]
    assert detect_engine(env={"WORLD_SIZE": "2"}).describe() == "DDP, 2 processes, fp32"


def test_wrapper_name_parts_are_stripped():
    assert plan_name("_fsdp_wrapped_module.timm_model.layer1._fsdp_wrapped_module.0.conv1.weight") == "timm_model.layer1.0.conv1.weight"
    assert plan_name("_orig_mod.timm_model._checkpoint_wrapped_module.fc.bias") == "timm_model.fc.bias"
    assert plan_name("timm_model.fc.bias") == "timm_model.fc.bias"


# ------------------------------------------------------------------------- the plan through torch FSDP (CPU)
@pytest.fixture
def process_group(tmp_path):
    """A one-process gloo group: FSDP v1 and v2 run on the CPU (accelerate enables FSDP only on accelerators)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def whole(tensor) -> torch.Tensor:
    """A copy of a parameter, gathered when FSDP v2 shards it (DTensor)."""
    return (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).detach().clone()


def _fsdp_run(wrap: str, steps_per_epoch=2, epochs=2):
    """Train test_resnet with a gradual plan (stem frozen, BN frozen with it, layer decay) under `wrap`; return the
    bare model, the plan, the full weights after training and what the checks need."""
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

    torch.manual_seed(0)
    model = load_backbone("test_resnet", labels=["a", "b"], pretrained=False)
    plan = TransferPlan.build(model, TransferConfig(learning_rate=1e-2, freeze="depth:1", gradual_unfreeze_epochs=1,
                                                    layer_decay=0.8, weight_decay=0.05))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    callback = TransferPlanCallback(plan)
    callback.prepare(model)  # as TransferTrainer does: everything that ever trains visible when the engine wraps it
    if wrap == "fsdp1":
        wrapped = FullyShardedDataParallel(model, use_orig_params=True, device_id=torch.device("cpu"),
                                           auto_wrap_policy=lambda module, recurse, **_: recurse or module is model.timm_model.layer3)
    elif wrap == "fsdp2":
        fully_shard(model.timm_model.layer3)
        wrapped = fully_shard(model)
    else:
        wrapped = model
    optimizer = torch.optim.AdamW(plan.optimizer_groups(wrapped), foreach=False)  # FSDP v1: prefixed names
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 2, (4,), generator=g))
               for _ in range(steps_per_epoch)]
    pending_after_epoch0 = {}
    for epoch in range(epochs):
        callback.apply(wrapped, types.SimpleNamespace(epoch=float(epoch)), "test", optimizer)
        wrapped.train()
        for x, y in batches:
            loss = torch.nn.functional.cross_entropy(wrapped(pixel_values=x).logits, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        if epoch == 0:
            pending_after_epoch0 = {n: whole(p) for n, p in model.named_parameters()
                                    if "layer4" in plan_name(n) and not p.requires_grad}
    if wrap == "fsdp1":
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType

        with FullyShardedDataParallel.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, FullStateDictConfig()):
            final = {k: v.clone() for k, v in wrapped.state_dict().items()}
    elif wrap == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        final = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        final = {k: v.clone() for k, v in model.state_dict().items()}
    lrs = [(g["name"], g["lr"], len(g["params"])) for g in optimizer.param_groups]
    return model, plan, initial, final, lrs, pending_after_epoch0


def test_plan_through_torch_fsdp(process_group, tmp_path):
    """FSDP v1 (use_orig_params, prefixed names) and v2 (fully_shard) train exactly what the plan says, as one bare
    process does: same groups and rates, stem and its BatchNorm statistics untouched, the pending layers untouched
    until they unfreeze, then the same final weights; the saved folder is the same file for all three."""
    from safetensors.torch import load_file

    from hf_transfer.saving import save_model_folder

    model, plan, initial, reference, lrs, _ = _fsdp_run("none")
    expected_lrs = [(g.name, g.lr, len(g.params)) for g in plan.groups if not g.frozen]
    assert lrs == expected_lrs
    save_model_folder(model, tmp_path / "none", image_size=32, timm_layout=True)
    stem = [k for k in initial if k.startswith("timm_model.conv1.") or k.startswith("timm_model.bn1.")]
    assert {"timm_model.bn1.running_mean", "timm_model.conv1.0.weight"} <= set(stem)
    for wrap in ("fsdp1", "fsdp2"):
        wrapped_model, _, _, final, wrapped_lrs, pending = _fsdp_run(wrap)
        assert wrapped_lrs == expected_lrs, wrap
        assert final.keys() == reference.keys()
        for key in stem:  # frozen for the whole run, BatchNorm statistics included
            assert torch.equal(final[key], initial[key]), (wrap, key)
        assert pending and all(torch.equal(v, initial[plan_name(n)]) for n, v in pending.items()), wrap
        changed = [k for k in final if "layer4" in k and not torch.equal(final[k], initial[k])]
        assert changed, wrap  # layer4 unfroze at epoch 1 and trained
        different = [k for k in final if not torch.allclose(final[k].float(), reference[k].float(), atol=1e-6)]
        assert different == [], wrap
        save_model_folder(wrapped_model, tmp_path / wrap, image_size=32, timm_layout=True, state_dict=final)
        saved, expected = load_file(tmp_path / wrap / "model.safetensors"), load_file(tmp_path / "none" / "model.safetensors")
        assert saved.keys() == expected.keys()
        assert all(torch.allclose(saved[k].float(), expected[k].float(), atol=1e-6) for k in saved), wrap
        config = json.loads((tmp_path / wrap / "config.json").read_text())
        assert config["architectures"] == json.loads((tmp_path / "none" / "config.json").read_text())["architectures"]


# ------------------------------------------------------------------------- DeepSpeed ZeRO-1/2, emulated on CPU
def _zero_filled_run(random_images, tiny_training_args, zero_fill: bool):
    """Gradual unfreezing where, like DeepSpeed ZeRO-1/2, every parameter in the optimizer gets a gradient (zeros
    where autograd gave none); returns the initial weights, the pending layers after epoch 0 and the final weights."""
    from transformers import TrainerCallback

    class ZeroFilledGradients(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)

    class Snapshot(TrainerCallback):
        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            if round(state.epoch) == 1:
                snapshot.update({n: p.detach().clone() for n, p in model.named_parameters() if "layer4" in n})

    torch.manual_seed(0)
    model = load_backbone("test_resnet", labels=["a", "b"], pretrained=False)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    snapshot = {}
    plan = TransferPlan.build(model, TransferConfig(learning_rate=1e-2, gradual_unfreeze_epochs=1, weight_decay=0.05))
    callbacks = [Snapshot()] + ([ZeroFilledGradients()] if zero_fill else [])
    trainer = TransferTrainer(model=model, plan=plan, train_dataset=random_images(n=16, size=32), callbacks=callbacks,
                              args=tiny_training_args(num_train_epochs=2, optim="adamw_torch", max_grad_norm=0))
    trainer.train()
    return plan, initial, snapshot, {n: p.detach().clone() for n, p in model.named_parameters()}


def test_zero_filled_gradients_leave_pending_groups_untouched(random_images, tiny_training_args, monkeypatch):
    plan, initial, pending, final = _zero_filled_run(random_images, tiny_training_args, zero_fill=True)
    layer4 = [g for g in plan.groups if g.params[0].startswith("timm_model.layer4")]
    assert any(g.weight_decay > 0 and g.trains_from_epoch == 1 for g in layer4)  # decay would move them
    assert pending and all(torch.equal(v, initial[n]) for n, v in pending.items())
    _, _, _, plain = _zero_filled_run(random_images, tiny_training_args, zero_fill=False)
    assert all(torch.equal(final[n], plain[n]) for n in final)  # fresh optimizer state at unfreezing: the same run
    # without the hold, ZeRO's zero gradients would still decay the pending layers
    monkeypatch.setattr("hf_transfer.trainer.hold_pending_groups", lambda optimizer, epoch: None)
    _, _, unheld, _ = _zero_filled_run(random_images, tiny_training_args, zero_fill=True)
    assert any(not torch.equal(v, initial[n]) for n, v in unheld.items() if v.ndim > 1)


# --------------------------------------------------------------------------------------------- dtype on save
def test_deepspeed_16_bit_weights_are_saved_as_the_model_was(tmp_path):
    """DeepSpeed under bf16 trains 16-bit copies: the folder gets float32 weights and config, as every engine's, and
    what never trained (the frozen stem, frozen BatchNorm statistics) its exact pretrained values, not rounded ones."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification

    from hf_transfer.saving import save_model_folder, trained_weights
    from hf_transfer.trainer import untrained_weights

    torch.manual_seed(0)
    model = load_backbone("test_resnet", labels=["a", "b"], pretrained=False)
    plan = TransferPlan.build(model, TransferConfig(freeze="depth:1", bn_policy="eval"))
    kept = untrained_weights(plan, model)
    assert "timm_model.conv1.0.weight" in kept and "timm_model.layer1.0.bn1.running_mean" in kept
    assert "timm_model.layer1.0.bn1.weight" not in kept and "timm_model.fc.weight" not in kept  # they train
    exact = {k: v.clone() for k, v in model.state_dict().items()}
    model.to(torch.bfloat16)  # what deepspeed.initialize does to the module under bf16
    engine = types.SimpleNamespace(  # a stand-in for a DeepSpeed TransferTrainer after training
        accelerator=types.SimpleNamespace(unwrap_model=lambda m: m, get_state_dict=lambda m: dict(m.state_dict())),
        model=model, model_wrapped=model, is_deepspeed_enabled=True, weights_dtype=torch.float32, untrained_weights=kept)
    trained, weights = trained_weights(engine)
    save_model_folder(trained, tmp_path, image_size=32, timm_layout=True, state_dict=weights)
    saved = load_file(tmp_path / "model.safetensors")
    assert {t.dtype for t in saved.values() if t.is_floating_point()} == {torch.float32}
    assert "fc.weight" in saved and not any(k.startswith("timm_model.") for k in saved)  # timm's own names
    assert torch.equal(saved["conv1.0.weight"], exact["timm_model.conv1.0.weight"])  # not bf16-rounded
    assert torch.equal(saved["layer1.0.bn1.running_var"], exact["timm_model.layer1.0.bn1.running_var"])
    assert torch.equal(saved["fc.weight"], model.timm_model.fc.weight.float())  # trained: the engine's copy
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "float32"
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert loaded.dtype == torch.float32 and torch.equal(loaded.timm_model.fc.weight, saved["fc.weight"])


# ----------------------------------------------------------------------------------- the configs and the README
EXPECTED_ENGINES = {  # config: (engine, precision, processes: the file's, or the --num_processes given at launch)
    "cpu_2proc": ("ddp", "no", 2), "single_gpu_bf16": ("single", "bf16", 1), "single_gpu_fp16": ("single", "fp16", 1),
    "multi_gpu": ("ddp", "bf16", 4), "multi_node": ("ddp", "bf16", 16), "deepspeed_zero2": ("zero1_2", "bf16", 2),
    "deepspeed_zero3": ("zero3", "bf16", 8), "fsdp2": ("fsdp2", "bf16", 2)}


def launcher_environment(path: str, flags: list[str] = ()) -> tuple[dict, object]:
    """What `accelerate launch --config_file path [flags] recipes/finetune.py` hands the script, computed by
    accelerate's own argument checks and launcher preparation, stopping where it would start processes."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env, prepare_simple_launcher_cmd_env

    args = launch_command_parser().parse_args(["--config_file", path, *flags, str(ROOT / "recipes" / "finetune.py")])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed and not args.cpu:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
        _, env = prepare_deepspeed_cmd_env(args)
    elif (args.use_fsdp or args.multi_gpu) and not args.cpu:
        env = prepare_multi_gpu_env(args)
    else:
        _, env = prepare_simple_launcher_cmd_env(args)
    return {**env, "WORLD_SIZE": str(args.num_processes)}, args  # torchrun sets WORLD_SIZE in each process


def test_every_accelerate_config_parses_launches_and_gets_its_engine(monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file

    # multi_node.yaml names port 29500: another run on this machine holding it must not fail the check
    monkeypatch.setattr("accelerate.utils.launch.is_port_in_use", lambda port: False)

    paths = sorted(glob.glob(str(ROOT / "recipes" / "accelerate" / "*.yaml")))
    assert {Path(p).stem for p in paths} == set(EXPECTED_ENGINES)
    for path in paths:
        config = load_config_from_file(path)  # accelerate's own parser: unknown keys and bad values fail here
        # the GPU configs fit any machine: no process count written in, the launch line gives it
        fixed = Path(path).stem in ("cpu_2proc", "single_gpu_bf16", "single_gpu_fp16")
        assert (config.num_processes != -1) == fixed, path
        _, _, processes_given = EXPECTED_ENGINES[Path(path).stem]
        env, _ = launcher_environment(path, [] if fixed else ["--num_processes", str(processes_given)])
        engine = detect_engine(env=env)
        key, precision, processes = EXPECTED_ENGINES[Path(path).stem]
        assert (engine.key, engine.processes, engine.mixed_precision) == (key, processes, precision), path
        check_engine(engine, FIXED)  # every config takes a fixed freeze with layer-wise rates
        if SUPPORT[(key, "unfreeze")].works:
            check_engine(engine, GRADUAL)
        else:
            with pytest.raises(TransferError, match="--gradual_unfreeze_epochs under"):
                check_engine(engine, GRADUAL)


def test_support_table_is_complete_and_the_docs_show_it():
    assert set(SUPPORT) == {(e, f) for e in ENGINES for f in FEATURES}
    for (engine, feature), support in SUPPORT.items():
        assert support.works == bool(support.evidence), (engine, feature)  # a working cell says how it is known
        if support.evidence.startswith("tests/"):
            file, _, name = support.evidence.split(" ")[0].partition("::")
            assert f"def {name}(" in (ROOT / file).read_text(), support.evidence
    docs = [(ROOT / "README.md").read_text(), *(path.read_text() for path in sorted((ROOT / "docs").rglob("*.md")))]
    assert any(support_table() in text and refusal_table() in text for text in docs), \
        "paste hf_transfer.engines.support_table() and refusal_table() into docs/scale.md"
