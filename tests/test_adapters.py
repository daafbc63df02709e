"""The backbone adapters: the five failures of issue #9, each reproduced, and what the adapters promise.

Each test in the first part failed on the code before the adapters (a probe exported into one of two averaged
classifiers, a KeyError for norm-before-linear heads, a false "no size-dependent parameters" for Swin, pretrained
weights under --no_pretrained, stages interleaved by block number).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from hf_transfer import TransferError, load_backbone
from hf_transfer.backbones import build_layer_map
from hf_transfer.features import FeatureExtractor, FeatureLayer, parse_layers
from hf_transfer.modeling_probe import ProbeMLP
from hf_transfer.probes import LinearHead, MLPHead, ProbeResult, export_probe, init_head_from_probe
from hf_transfer.resolution import change_input_size

LABELS = ["a", "b", "c"]
DEIT = dict(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2)
EFFICIENTVIT = dict(img_size=64, embed_dim=(16, 24, 32), depth=(1, 1, 1), num_heads=(1, 1, 1), window_size=(2, 2, 2),
                    kernels=(5, 5, 5, 5))
SWIN = dict(img_size=32, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4)
LEVIT = dict(img_size=64, embed_dim=(16, 24, 32), key_dim=8, num_heads=(1, 1, 1), depth=(1, 1, 1))


def _random_probe(features: np.ndarray, layer: FeatureLayer, classes: int = 3, seed: int = 0) -> ProbeResult:
    rng = np.random.default_rng(seed)
    head = LinearHead(mean=features.mean(0), scale=features.std(0) + 1.0, coef=rng.normal(size=(classes, features.shape[1])),
                      intercept=rng.normal(size=classes), classes=np.arange(classes))
    return ProbeResult("logreg", layer, 1.0, 0.0, "C", 1.0, None, linear=head)


def _random_mlp(features: np.ndarray, layer: FeatureLayer, classes: int = 3, seed: int = 0) -> ProbeResult:
    torch.manual_seed(seed)
    module = ProbeMLP(features.shape[1], 16, classes)
    with torch.no_grad():
        module.mean.copy_(torch.from_numpy(features.mean(0)))
        module.scale.copy_(torch.from_numpy(features.std(0) + 1.0))
    return ProbeResult("mlp", layer, 1.0, 0.0, "weight_decay", 0.1, None, mlp=MLPHead(module, np.arange(classes)))


def _export_and_compare(model, size, tmp_path, layers="pooled", pooling="avg", head="linear"):
    """Export a probe of ``layers`` and return (exported logits, the probe's decision function) on the same images."""
    from transformers import AutoModelForImageClassification

    model.eval()
    layer_map = build_layer_map(model)
    layer = parse_layers(layers, layer_map, pooling)[0]
    x = torch.randn(6, 3, size, size, generator=torch.Generator().manual_seed(0))
    features = FeatureExtractor(model, [layer], layer_map)(x)[layer.key].double().numpy()
    result = (_random_mlp if head == "mlp" else _random_probe)(features, layer)
    export_probe(model, result, tmp_path, layer_map=layer_map, image_size=size)
    exported = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        logits = exported(pixel_values=x).logits.double().numpy()
    return logits, result.decision_function(features)


# ------------------------------------------------------------------------------- 1. distilled twin classifiers
def test_distilled_timm_export_writes_both_averaged_classifiers(tmp_path):
    model = load_backbone("deit_tiny_distilled_patch16_224", labels=LABELS, pretrained=False, model_args=DEIT)
    logits, expected = _export_and_compare(model, 32, tmp_path)
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    # a probe reading the pooled feature beside a depth: both classifiers become the identity, their average pooled
    logits, expected = _export_and_compare(model, 32, tmp_path / "concat", layers="1+pooled")
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_lp_ft_hand_off_fills_both_distilled_classifiers(tmp_path):
    torch.manual_seed(0)
    model = load_backbone("deit_tiny_distilled_patch16_224", labels=LABELS, pretrained=False, model_args=DEIT).eval()
    logits, expected = _export_and_compare(model, 32, tmp_path)
    fresh = load_backbone("deit_tiny_distilled_patch16_224", labels=LABELS, pretrained=False, model_args=DEIT)
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("timm_model.head")},
                          strict=False)  # the same backbone, a new random head pair
    init_head_from_probe(fresh, tmp_path)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.testing.assert_allclose(fresh.eval()(pixel_values=x).logits.double().numpy(), expected, atol=1e-5)


def test_transformers_with_teacher_class_trains_as_its_sibling(tmp_path):
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    config = DeiTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20, image_size=32,
                        patch_size=8, num_labels=3)
    teacher = DeiTForImageClassificationWithTeacher(config)
    teacher.save_pretrained(tmp_path / "deit")
    model = load_backbone(str(tmp_path / "deit"), labels=LABELS)
    assert type(model).__name__ == "DeiTForImageClassification"
    assert torch.equal(model.deit.layers[0].mlp.fc1.weight, teacher.deit.layers[0].mlp.fc1.weight)  # weights kept
    out = model(pixel_values=torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 2]))
    assert out.loss is not None and out.loss.requires_grad
    same_head = load_backbone(str(tmp_path / "deit"))  # the pretrained head: the class-token classifier carries over
    assert torch.equal(same_head.classifier.weight, teacher.cls_classifier.weight)


# ---------------------------------------------------------------------------- 2. norm before the classifier
def test_norm_before_linear_head_probes_every_depth_and_exports_exactly(tmp_path):
    model = load_backbone("efficientvit_m0", labels=LABELS, pretrained=False, model_args=EFFICIENTVIT).eval()
    layer_map = build_layer_map(model)
    assert {"timm_model.head.bn.weight", "timm_model.head.linear.weight"} <= set(layer_map.head.param_names)
    layers = parse_layers("all", layer_map)  # was: KeyError (head.bn placed in the body, its hook never fired)
    features = FeatureExtractor(model, layers, layer_map)(torch.randn(2, 3, 64, 64))
    assert all(v.ndim == 2 for v in features.values())
    with torch.no_grad():  # a pretrained-like norm: an export must neither skip nor double it
        model.timm_model.head.bn.running_mean.uniform_(-1, 1)
        model.timm_model.head.bn.running_var.uniform_(0.5, 2)
    logits, expected = _export_and_compare(model, 64, tmp_path)
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    logits, expected = _export_and_compare(model, 64, tmp_path / "concat", layers="1+pooled")  # head.bn -> identity
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_levit_norm_heads_twin_classifiers_export_exactly(tmp_path):
    model = load_backbone("levit_128s", labels=LABELS, pretrained=False, model_args=LEVIT)
    logits, expected = _export_and_compare(model, 64, tmp_path)
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    logits, expected = _export_and_compare(model, 64, tmp_path / "concat", layers="1+pooled", head="mlp")
    np.testing.assert_allclose(logits, expected, atol=1e-5)


# ------------------------------------------------------------------------------------------- 3. input size
def test_swin_input_size_change_uses_set_input_size():
    model = load_backbone("swin_tiny_patch4_window7_224", labels=LABELS, pretrained=False, model_args=SWIN).eval()
    report = change_input_size(model, 64)
    assert "no size-dependent parameters" not in report and "set_input_size" in report
    with torch.no_grad():
        assert model(pixel_values=torch.randn(1, 3, 64, 64)).logits.shape == (1, 3)
    assert model.config.model_args["img_size"] == 64  # a saved folder rebuilds at the new size


def test_levit_input_size_change_is_refused_in_one_line():
    model = load_backbone("levit_128s", labels=LABELS, pretrained=False, model_args=LEVIT)
    with pytest.raises(TransferError, match="attention biases") as err:
        change_input_size(model, 96)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------- 4. scratch for transformers
def test_transformers_no_pretrained_starts_from_random_weights(tiny_hf_folders):
    from transformers import AutoModelForImageClassification

    saved = AutoModelForImageClassification.from_pretrained(tiny_hf_folders["resnet"]).state_dict()
    model = load_backbone(str(tiny_hf_folders["resnet"]), labels=LABELS, pretrained=False)
    weights = {k: v for k, v in model.state_dict().items() if k.endswith("convolution.weight")}
    assert weights and all(not torch.equal(v, saved[k]) for k, v in weights.items())


def test_scratch_strategy_loads_no_pretrained_weights(tiny_hf_folders, tmp_path, image_folder):
    """The fine-tuning job with --strategy scratch on a transformers checkpoint: the pretrained weights stay unread."""
    from hf_transfer.arguments import DataArguments, ModelArguments
    from hf_transfer.jobs.common import prepare
    from hf_transfer.training_args import TransferTrainingArguments
    from transformers import AutoModelForImageClassification

    saved = AutoModelForImageClassification.from_pretrained(tiny_hf_folders["resnet"]).state_dict()
    args = TransferTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[])
    _, model, _, _ = prepare(ModelArguments(str(tiny_hf_folders["resnet"]), image_size=32),
                             DataArguments(train_dir=str(image_folder)), args, "finetune", pretrained=False)
    key = "resnet.embedder.embedder.convolution.weight"
    assert not torch.equal(model.state_dict()[key], saved[key])


# ------------------------------------------------------------------------------ 5. blocks numbered per stage
def test_blocks_numbered_inside_stages_do_not_interleave(tmp_path):
    from transformers import SwiftFormerConfig, SwiftFormerForImageClassification

    SwiftFormerForImageClassification(SwiftFormerConfig(depths=[2, 2, 2, 2], embed_dims=[8, 8, 16, 16], image_size=32,
                                                        num_labels=2)).save_pretrained(tmp_path / "swiftformer")
    model = load_backbone(str(tmp_path / "swiftformer"), labels=LABELS)
    layer_map = build_layer_map(model)
    stage_of = []
    for group in layer_map.body:
        stages = {name.split("network.")[1].split(".")[0] for name in group.param_names if "network." in name}
        assert len(stages) <= 1, f"{group.name} mixes stages {stages}"
        stage_of.extend(int(s) for s in stages)
    assert stage_of == sorted(stage_of) and len(set(stage_of)) == 7  # 4 stages and 3 downsampling layers, in order
    # depth:2 freezes the stem and the first block of the first stage, nothing of a later stage
    from hf_transfer.plan import TransferConfig, TransferPlan

    plan = TransferPlan.build(model, TransferConfig(strategy="partial", freeze="depth:2"))
    frozen = {n for g in plan.groups if g.frozen for n in g.params}
    assert frozen and not any("network.2." in n or "blocks.1." in n for n in frozen)
    assert "dist_head.weight" in layer_map.head.param_names and "norm.weight" not in layer_map.head.param_names


# ------------------------------------------------------------------------------------------ the adapters
def test_unknown_architecture_falls_back_to_the_generic_adapter_and_says_so():
    from hf_transfer.backbones import adapter_for

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
            self.classifier = torch.nn.Linear(4, 2)

    adapter = adapter_for(Odd())
    assert adapter.family == "generic" and "generic" in adapter.note
    assert [g.name for g in adapter.layer_map(r"body\.(\d+)\.").groups] == ["body.0", "body.1", "head"]


def test_frozen_share_is_reported_in_parameters_too():
    from hf_transfer.plan import TransferConfig, TransferPlan

    model = load_backbone("resnet18", labels=LABELS, pretrained=False)
    plan = TransferPlan.build(model, TransferConfig(strategy="partial", freeze="fraction:0.5"))
    assert "4 of 10 depth groups, 3.5% of the parameters" in plan.table()


def test_plan_callback_works_in_a_plain_trainer(tiny_training_args, random_images):
    """TransferPlanCallback(plan) on its own: any Trainer, the model from the callback arguments."""
    from transformers import Trainer

    from hf_transfer.plan import TransferConfig, TransferPlan
    from hf_transfer.trainer import TransferPlanCallback, plan_optimizer

    model = load_backbone("test_resnet", labels=["x", "y"], pretrained=False)
    plan = TransferPlan.build(model, TransferConfig(strategy="partial", freeze="fraction:0.5", learning_rate=1e-2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = tiny_training_args(max_steps=2)
    trainer = Trainer(model=model, args=args, train_dataset=random_images(n=16, size=32),
                      optimizers=(plan_optimizer(plan, args, model), None), callbacks=[TransferPlanCallback(plan)])
    trainer.train()
    frozen = {n for g in plan.groups if g.frozen for n in g.params}
    frozen_stats = [f"{m}.running_mean" for m in plan.frozen_batchnorm_names(model)]
    after = model.state_dict()
    assert frozen and all(torch.equal(after[n], before[n]) for n in frozen)
    assert frozen_stats and all(torch.equal(after[k], before[k]) for k in frozen_stats)
    assert not torch.equal(after["timm_model.fc.weight"], before["timm_model.fc.weight"])


def test_earlier_depth_export_loads_where_hf_transfer_cannot_be_imported(tmp_path):
    """The exported folder carries modeling_probe.py: trust_remote_code loads it with hf_transfer unimportable."""
    model = load_backbone("test_resnet", labels=LABELS, pretrained=False)
    logits, expected = _export_and_compare(model, 32, tmp_path / "probe", layers="2")
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    config = json.loads((tmp_path / "probe" / "config.json").read_text())
    assert config["model_type"] == "hf_transfer_probe" and (tmp_path / "probe" / "modeling_probe.py").is_file()
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "hf_transfer.py").write_text("raise ImportError('hf_transfer is not installed here')\n")
    np.save(tmp_path / "expected.npy", expected)
    # An MLP head on depth 2 (avg+max) and the pooled bottleneck side by side: the identity-classifier path
    mlp_logits, mlp_expected = _export_and_compare(model, 32, tmp_path / "mlp", layers="2+pooled", pooling="avgmax",
                                                   head="mlp")
    np.testing.assert_allclose(mlp_logits, mlp_expected, atol=1e-5)
    np.save(tmp_path / "mlp_expected.npy", mlp_expected)
    script = f"""
import numpy as np, torch
try:
    import hf_transfer
    raise SystemExit("hf_transfer was importable")
except ImportError:
    pass
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained({str(tmp_path / 'probe')!r}, trust_remote_code=True).eval()
x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    logits = model(pixel_values=x).logits.double().numpy()
assert abs(logits - np.load({str(tmp_path / 'expected.npy')!r})).max() < 1e-5, "logits differ"
mlp = AutoModelForImageClassification.from_pretrained({str(tmp_path / 'mlp')!r}, trust_remote_code=True).eval()
with torch.no_grad():
    mlp_logits = mlp(pixel_values=x).logits.double().numpy()
assert abs(mlp_logits - np.load({str(tmp_path / 'mlp_expected.npy')!r})).max() < 1e-5, "mlp logits differ"
assert type(mlp.classifier).__name__ == "ProbeMLP"
from PIL import Image
from transformers import AutoImageProcessor, pipeline
image = Image.fromarray((np.arange(40 * 40 * 3) % 251).astype("uint8").reshape(40, 40, 3))
classify = pipeline("image-classification", model={str(tmp_path / 'probe')!r}, trust_remote_code=True)
pixels = AutoImageProcessor.from_pretrained({str(tmp_path / 'probe')!r})(image, return_tensors="pt")["pixel_values"]
with torch.no_grad():
    best = model(pixel_values=pixels).logits[0].argmax().item()
assert classify(image)[0]["label"] == model.config.id2label[best], "pipeline disagrees with the model"
print("ok", type(model).__module__)
"""
    import os

    env = {**os.environ, "PYTHONPATH": str(stub), "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=str(tmp_path),
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok") and "hf_transfer" not in done.stdout.split()[1].split(".")[0]


def test_data2vec_vision_at_another_size_saves_a_folder_that_loads(tmp_path):
    """Relative position bias tables are sized from config.image_size: the folder keeps the native size in its config
    (the processor carries the new one), so it loads and predicts like the trained model. It used to write 96 and
    fail to load (relative_position_bias_table 228 vs 532)."""
    from transformers import AutoModelForImageClassification, Data2VecVisionConfig, Data2VecVisionForImageClassification

    from hf_transfer.backbones import load_backbone_with_adapter
    from hf_transfer.saving import save_model_folder

    torch.manual_seed(0)
    Data2VecVisionForImageClassification(Data2VecVisionConfig(
        image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        use_relative_position_bias=True, num_labels=2)).save_pretrained(tmp_path / "src")
    model, adapter = load_backbone_with_adapter(str(tmp_path / "src"), labels=["a", "b", "c"])
    report = adapter.change_input_size(96)
    assert "config.json keeps image_size 64" in report
    adapter.set_preprocessing(96)
    save_model_folder(model.eval(), tmp_path / "out", image_size=96)
    x = torch.randn(2, 3, 96, 96)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=x).logits, model(pixel_values=x).logits)
    from transformers import AutoImageProcessor

    assert AutoImageProcessor.from_pretrained(tmp_path / "out").size["height"] == 96


def test_channels_last_is_decided_by_a_training_step_in_a_child_and_cached(tmp_path, monkeypatch, capsys):
    """fastvit's channels_last backward crashes or spins in oneDNN on this CPU: the check runs in a forked child, so
    the run falls back to contiguous memory and says so; a plain CNN keeps channels_last. Decided once per
    architecture: the second adapter reads the cache and forks nothing."""
    import os

    from hf_transfer.backbones import load_backbone_with_adapter

    monkeypatch.setenv("HF_TRANSFER_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_TRANSFER_CHANNELS_LAST", raising=False)

    def adapter(arch, **model_args):
        model, adapter = load_backbone_with_adapter(arch, labels=["a", "b"], pretrained=False,
                                                    model_args=model_args or None)
        adapter.set_preprocessing(64)
        return adapter

    fastvit = dict(layers=(1, 1, 1, 1), embed_dims=(32, 32, 64, 64))
    assert adapter("test_efficientnet").prefers_channels_last() is True
    verdict = adapter("fastvit_t8", **fastvit).prefers_channels_last()
    out = capsys.readouterr().out
    if verdict is False:  # what this machine's oneDNN does (crash or hang); a CPU where it works keeps channels_last
        assert "channels_last is not used for" in out and "contiguous memory instead" in out
    cached = (tmp_path / "channels_last.json").read_text()
    assert cached.count('"channels_last"') == 2
    monkeypatch.setattr(os, "fork", lambda: pytest.fail("the decision should come from the cache"))
    assert adapter("fastvit_t8", **fastvit).prefers_channels_last() is verdict
    assert adapter("test_efficientnet").prefers_channels_last() is True


def test_blocks_in_a_container_the_forward_never_calls_still_give_features(tmp_path):
    """PoolFormer iterates a ModuleList of blocks: the list itself never runs, so its last child that ran is the
    group's output (per-depth features used to refuse with 'the forward never ran depth 1')."""
    from transformers import PoolFormerConfig, PoolFormerForImageClassification

    from hf_transfer.backbones import load_backbone_with_adapter
    from hf_transfer.features import FeatureExtractor, parse_layers

    torch.manual_seed(0)
    PoolFormerForImageClassification(PoolFormerConfig(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                                                      num_labels=2)).save_pretrained(tmp_path / "src")
    model, adapter = load_backbone_with_adapter(str(tmp_path / "src"), labels=["a", "b", "c"])
    adapter.set_preprocessing(64)
    layer_map = adapter.layer_map()
    assert layer_map.groups[1].output_module == "poolformer.encoder.block.0.0"
    layers = parse_layers("all", layer_map)
    features = FeatureExtractor(model.eval(), layers, layer_map)(torch.randn(2, 3, 64, 64))
    assert len(features) == len(layer_map.body) + 1 and all(f.shape[0] == 2 and f.ndim == 2 for f in features.values())
