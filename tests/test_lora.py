"""--strategy lora: default targets per family, the plan in peft's names, refusals, and the output folder's round trip."""

from __future__ import annotations

import json

import pytest
import torch

from hf_transfer.errors import TransferError
from hf_transfer.plan import TransferConfig, TransferPlan

pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # peft asks transformers a deprecated question


def _timm(arch: str, classes: int = 3):
    from hf_transfer.backbones import load_backbone

    torch.manual_seed(0)
    return load_backbone(arch, labels=[f"c{i}" for i in range(classes)], pretrained=False)


def _hf_vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                               intermediate_size=37, image_size=32, patch_size=8, num_labels=3))


def _wrap(model, **flags):
    from hf_transfer.lora import wrap_with_lora

    config = TransferConfig(strategy="lora", learning_rate=1e-2, lora_learning_rate=2e-3, **flags)
    return wrap_with_lora(model, config), config


# ------------------------------------------------------------------------------------------ default targets
def test_default_targets_per_family():
    from hf_transfer.backbones import adapter_for

    vit = adapter_for(_timm("test_vit")).lora_targets()[0]
    assert vit == [f"timm_model.blocks.{i}.attn.qkv" for i in range(6)]
    hf_vit = adapter_for(_hf_vit()).lora_targets()[0]
    assert hf_vit == [f"vit.layers.{i}.attention.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    # CNNs: the dense layers after the stem (pointwise convs and conv_head here); never depthwise, stem or head
    cnn = _timm("test_efficientnet")
    targets = adapter_for(cnn).lora_targets()[0]
    modules = dict(cnn.named_modules())
    expected = [n for n, m in modules.items() if isinstance(m, torch.nn.Conv2d) and m.groups == 1
                and n != "timm_model.conv_stem"]
    assert targets == expected and "timm_model.conv_head" in targets
    assert "timm_model.blocks.3.0.conv_pw" in targets and "timm_model.blocks.3.0.conv_dw" not in targets
    convnext = adapter_for(_timm("test_convnext")).lora_targets()[0]
    assert "timm_model.stages.0.blocks.0.mlp.fc1" in convnext and not any("conv_dw" in t or "head" in t for t in convnext)


def test_unknown_family_and_bad_target_specs_are_one_line_errors():
    from hf_transfer.lora import resolve_targets

    class Plain(torch.nn.Module):  # the generic adapter: no family, no guess
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)))
            self.pool = torch.nn.AdaptiveAvgPool2d(1)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.pool(self.blocks(x)).flatten(1))

    with pytest.raises(TransferError, match="--lora_target_modules"):
        resolve_targets(Plain(), TransferConfig(strategy="lora"))
    assert resolve_targets(Plain(), TransferConfig(strategy="lora", lora_target_modules="0.0"))[0] == ["blocks.0.0"]
    vit = _timm("test_vit")
    for spec, message in [("nothing_called_this", "matches no Linear/Conv"), ("attn", "a Attention"),
                          ("head", "only the head"), ("regex:(", "invalid regular expression")]:
        with pytest.raises(TransferError, match=message):
            resolve_targets(vit, TransferConfig(strategy="lora", lora_target_modules=spec))
    chosen, _ = resolve_targets(vit, TransferConfig(strategy="lora", lora_target_modules=r"regex:blocks\.5\.attn"))
    assert chosen == ["timm_model.blocks.5.attn.qkv", "timm_model.blocks.5.attn.proj"]


@pytest.mark.parametrize("flags, message", [
    (dict(bn_policy="train"), "--bn_policy train"),
    (dict(reinit="blocks"), "--reinit"),
    (dict(freeze="backbone"), "--freeze backbone"),
    (dict(lp_epochs=1, gradual_unfreeze_epochs=1), "pick one schedule"),
    (dict(lora_r=0), "rank must be >= 1"),
])
def test_what_does_not_combine_with_lora_is_refused_before_loading(flags, message):
    with pytest.raises(TransferError, match=message):
        TransferConfig(strategy="lora", **flags).validate()


def test_engines_that_shard_the_model_are_refused_for_lora():
    from hf_transfer.engines import Engine, check_engine

    config = TransferConfig(strategy="lora", lp_epochs=1)
    check_engine(Engine(kind="ddp", processes=2), config)
    for engine in (Engine(kind="deepspeed", zero_stage=2), Engine(kind="fsdp", fsdp_version=2)):
        with pytest.raises(TransferError, match="--strategy lora under .*use DDP"):
            check_engine(engine, config)


def test_lora_flags_without_lora_and_missing_peft(monkeypatch):
    with pytest.raises(TransferError, match="only applies to --strategy lora"):
        TransferConfig(lora_target_modules="qkv").validate()
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(TransferError, match=r'pip install -e "\.\[peft\]"'):
        TransferConfig(strategy="lora").validate()


# ------------------------------------------------------------------------------------- the plan on peft names
def test_plan_trains_exactly_lora_and_the_head_copy_at_their_rates():
    wrapped, config = _wrap(_timm("test_efficientnet"))
    plan = TransferPlan.build(wrapped, config)
    names = [n for n, _ in wrapped.named_parameters()]
    lora = {n for n in names if ".lora_A." in n or ".lora_B." in n}
    head_copy = {n for n in names if ".modules_to_save.default." in n}
    assert plan.ever_trained == lora | head_copy and plan.trainable_at(0) == lora | head_copy
    assert head_copy == {"base_model.model.timm_model.classifier.modules_to_save.default.weight",
                         "base_model.model.timm_model.classifier.modules_to_save.default.bias"}
    for group in plan.groups:  # LoRA at its own rate, the head's copy at the head's; LoRA in its module's depth group
        if not group.frozen:
            assert group.trains_from_epoch == 0
            if group.name.startswith("head"):
                assert group.lr == 1e-2 and set(group.params) <= head_copy
            else:
                assert group.name.endswith("/lora") and group.lr == 2e-3 and set(group.params) <= lora
    depth = {g.name: g.depth for g in plan.groups}
    assert depth["blocks.3/lora"] == depth["blocks.3"] == 4
    # every BatchNorm keeps its statistics: none of their parameters train
    bns = [n for n, m in wrapped.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert plan.frozen_batchnorm_names(wrapped) == bns
    table = plan.table()
    assert "strategy=lora" in table and "blocks.3/lora" in table and "head/original" in table
    trained = sum(p.numel() for n, p in wrapped.named_parameters() if n in lora | head_copy)
    assert f"trainable: {trained:,} values" in table.splitlines()[-1]


def test_lora_combines_with_freezing_and_a_head_first_epoch():
    wrapped, config = _wrap(_timm("test_vit"), freeze="fraction:0.5", lp_epochs=1, layer_decay=0.5)
    plan = TransferPlan.build(wrapped, config)
    lora_modules = sorted({n.split(".lora_")[0] for n in plan.ever_trained if ".lora_" in n})
    # the body's 7 depth groups (stem, blocks.0 … blocks.5+norm): the first 3 frozen, so LoRA only in blocks 2-5
    assert lora_modules == [f"base_model.model.timm_model.blocks.{i}.attn.qkv" for i in (2, 3, 4, 5)]
    head = plan.groups[-1].depth
    for group in plan.groups:
        if group.frozen:
            continue
        if "/lora" in group.name:
            assert group.trains_from_epoch == 1 and group.lr == pytest.approx(2e-3 * 0.5 ** (head - group.depth))
        else:
            assert group.name.startswith("head") and group.trains_from_epoch == 0 and group.lr == 1e-2


def test_gradual_unfreezing_releases_lora_groups_from_the_top():
    wrapped, config = _wrap(_timm("test_vit"), gradual_unfreeze_epochs=2)
    plan = TransferPlan.build(wrapped, config)
    start = {g.depth: g.trains_from_epoch for g in plan.groups if "/lora" in g.name}
    head = plan.groups[-1].depth
    assert start == {depth: 2 * (head - depth) for depth in range(1, head)}  # blocks.5 at epoch 2 … blocks.0 at 12
    assert all(g.trains_from_epoch == 0 for g in plan.groups if g.name.startswith("head") and not g.frozen)


def test_a_head_outside_modules_to_save_is_refused():
    import peft

    model = _timm("test_vit")
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["qkv"]))  # no modules_to_save
    with pytest.raises(TransferError, match="modules_to_save"):
        TransferPlan.build(wrapped, TransferConfig(strategy="lora"))


# -------------------------------------------------------------------------------------------- round trips
def test_vit_adapter_round_trip_after_a_size_change(tmp_path):
    """Base rebuilt from its source at the trained input size + adapter = the trained model, bit for bit."""
    from hf_transfer.backbones import adapter_for, load_backbone_with_adapter
    from hf_transfer.lora import load_lora, save_lora_output
    from hf_transfer.saving import save_model_folder

    source = tmp_path / "pretrained"
    save_model_folder(_timm("test_vit", classes=5), source, timm_layout=True)  # a "pretrained" local backbone
    model, adapter = load_backbone_with_adapter(str(source), labels=["a", "b", "c"])
    adapter.change_input_size(32)  # position embeddings resampled, as the job does for --image_size 32
    adapter.set_preprocessing(32)
    wrapped, _ = _wrap(model)
    with torch.no_grad():  # stand-in for training: LoRA and the head's copy away from their start
        for name, p in wrapped.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    out = tmp_path / "out"
    save_lora_output(wrapped, out, image_size=32, source=str(source))
    assert {"adapter_config.json", "adapter_model.safetensors", "hf_transfer_base.json"} <= {
        p.name for p in (out / "adapter").iterdir()}
    x = torch.randn(2, 3, 32, 32)
    wrapped.eval()
    reloaded = load_lora(out)
    with torch.no_grad():
        expected = adapter_for(wrapped).run(x).logits
        assert torch.equal(adapter_for(reloaded).run(x).logits, expected)
        from transformers import AutoModelForImageClassification

        merged = AutoModelForImageClassification.from_pretrained(out).eval()
        torch.testing.assert_close(merged(pixel_values=x).logits, expected, rtol=1e-5, atol=1e-5)
    assert merged.config.id2label == {0: "a", 1: "b", 2: "c"}
    # --lora_adapter_only: the adapter, the config (labels, preprocessing) and no weights of its own
    save_lora_output(wrapped, tmp_path / "adapter_only", image_size=32, merge=False, source=str(source))
    files = {p.name for p in (tmp_path / "adapter_only").iterdir()}
    assert "config.json" in files and "adapter" in files and "model.safetensors" not in files
    with torch.no_grad():
        assert torch.equal(adapter_for(load_lora(tmp_path / "adapter_only")).run(x).logits, expected)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """One fine-tuning job with --strategy lora (tiny EfficientNet, digits), the trained peft model kept."""
    import hf_transfer.lora as lora_module
    from hf_transfer.arguments import DataArguments, ModelArguments, TransferArguments
    from hf_transfer.jobs.finetune import run_finetune
    from hf_transfer.saving import save_model_folder
    from hf_transfer.training_args import TransferTrainingArguments

    root = tmp_path_factory.mktemp("lora")
    source = root / "pretrained"
    save_model_folder(_timm("test_efficientnet", classes=10), source, timm_layout=True)
    kept = {}
    real_save = lora_module.save_lora_output

    def keep(wrapped, *args, **kwargs):
        kept["model"] = wrapped
        return real_save(wrapped, *args, **kwargs)

    lora_module.save_lora_output = keep
    try:
        args = TransferTrainingArguments(output_dir=str(root / "out"), num_train_epochs=1, eval_strategy="no",
                                         report_to=[], use_cpu=True, disable_tqdm=True, per_device_train_batch_size=16)
        metrics = run_finetune(ModelArguments(str(source), image_size=32),
                               DataArguments(dataset_name="embedded:digits", max_train_samples=40, max_eval_samples=16),
                               args, TransferArguments(strategy="lora", lora_r=4))
    finally:
        lora_module.save_lora_output = real_save
    return root / "out", source, kept["model"], metrics


def test_lora_job_writes_adapter_and_merged_model(lora_run):
    out, source, trained, metrics = lora_run
    from safetensors.torch import load_file

    from hf_transfer.backbones import adapter_for
    from hf_transfer.lora import load_lora

    assert (out / "all_results.json").is_file() and (out / "adapter" / "adapter_model.safetensors").is_file()
    plan = json.loads((out / "transfer_plan.json").read_text())
    assert plan["config"]["strategy"] == "lora" and plan["config"]["lora_r"] == 4
    adapter_weights = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any(".lora_A." in k for k in adapter_weights) and any("modules_to_save" in k or "classifier" in k
                                                                    for k in adapter_weights)
    # pretrained weights and BatchNorm statistics untouched: the merged model differs only where LoRA / head are
    merged = load_file(out / "model.safetensors")
    pretrained = load_file(source / "model.safetensors")
    assert torch.equal(merged["bn2.running_mean"], pretrained["bn2.running_mean"])
    assert torch.equal(merged["blocks.3.0.conv_dw.weight"], pretrained["blocks.3.0.conv_dw.weight"])
    assert not torch.equal(merged["blocks.3.0.conv_pw.weight"], pretrained["blocks.3.0.conv_pw.weight"])
    # reloaded adapter = trained model exactly (same memory format); the merged folder within float tolerance
    x = torch.randn(3, 3, 32, 32)
    trained.eval()
    reloaded = load_lora(out).to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = adapter_for(trained).run(x.contiguous(memory_format=torch.channels_last)).logits
        got = adapter_for(reloaded).run(x.contiguous(memory_format=torch.channels_last)).logits
        assert torch.equal(got, expected)
        from transformers import AutoModelForImageClassification

        auto = AutoModelForImageClassification.from_pretrained(out).eval()
        torch.testing.assert_close(auto(pixel_values=x).logits, expected, rtol=1e-4, atol=1e-5)
        import timm

        torch.testing.assert_close(timm.create_model(f"local-dir:{out}", pretrained=True).eval()(x), expected,
                                   rtol=1e-4, atol=1e-5)
    import numpy as np
    from PIL import Image
    from transformers import pipeline

    labels = pipeline("image-classification", model=str(out))(Image.fromarray(np.zeros((8, 8), np.uint8)))
    assert {item["label"] for item in labels} <= {str(i) for i in range(10)}
    assert "load_lora" in (out / "README.md").read_text()


def test_resuming_a_lora_checkpoint_continues_the_same_run(tmp_path, random_images):
    """A LoRA checkpoint (adapter + optimizer + transfer_plan.json) resumes into exactly the uninterrupted run."""
    from transformers import TrainingArguments

    from hf_transfer.trainer import TransferTrainer

    def run(out, resume=None):
        model = _timm("test_vit", classes=2)
        model.timm_model.set_input_size(img_size=32)
        wrapped, config = _wrap(model)
        args = TrainingArguments(output_dir=str(out), use_cpu=True, max_steps=4, per_device_train_batch_size=4,
                                 report_to=[], save_strategy="steps", save_steps=2, logging_strategy="no",
                                 remove_unused_columns=False, disable_tqdm=True, learning_rate=1e-2, seed=0)
        trainer = TransferTrainer(model=wrapped, args=args, plan=TransferPlan.build(wrapped, config),
                                  train_dataset=random_images(n=16, size=32, classes=2))
        trainer.train(resume_from_checkpoint=resume)
        return dict(wrapped.named_parameters())

    whole = run(tmp_path / "a")
    checkpoint = tmp_path / "a" / "checkpoint-2"
    assert {"adapter_model.safetensors", "transfer_plan.json"} <= {p.name for p in checkpoint.iterdir()}
    resumed = run(tmp_path / "b", resume=str(checkpoint))
    assert all(torch.equal(whole[n], resumed[n]) for n in whole)
    assert all(whole[n].abs().sum() > 0 for n in whole if ".lora_B." in n)  # LoRA B starts at zero: it trained
