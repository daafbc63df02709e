"""TransferPlan + TransferTrainer on timm and transformers backbones: freezing, BatchNorm, lrs, decay, resume."""

import json
import math
import re

import pytest
import torch

from hf_transfer import TransferError, load_backbone
from hf_transfer.backbones import build_layer_map
from hf_transfer.plan import TransferConfig, TransferPlan
from hf_transfer.trainer import TransferTrainer

TIMM = ["test_resnet", "test_efficientnet", "test_convnext", "test_vit"]
HF = ["hf:vit", "hf:convnext", "hf:resnet"]
BN_MODELS = ["test_resnet", "test_efficientnet", "hf:resnet"]


def make_model(name, folders=None):
    torch.manual_seed(0)
    if name.startswith("hf:"):
        return load_backbone(str(folders[name[3:]]), labels=["a", "b"])
    return load_backbone(name, labels=["a", "b"], pretrained=False)


def image_size(name):
    return {"test_vit": 160, "hf:vit": 32}.get(name, 32)


def batchnorm_buffers(model, only=None):
    return {f"{n}.{b}": getattr(m, b).clone() for n, m in model.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and (only is None or n in only)
            for b in ("running_mean", "running_var", "num_batches_tracked")}


def train_steps(model, plan, args, random_images, size, steps=2, **trainer_kwargs):
    trainer = TransferTrainer(model=model, args=args(max_steps=steps, **trainer_kwargs), plan=plan,
                              train_dataset=random_images(n=8 * steps, size=size))
    trainer.train()
    return trainer


@pytest.fixture(params=TIMM + HF)
def any_model(request, tiny_hf_folders):
    return request.param, make_model(request.param, tiny_hf_folders)


@pytest.mark.parametrize("rule", ["none", "backbone", "depth:1", "depth:2", "fraction:0.5", "regex:(norm|bn|\\.bias$)"])
def test_exact_trainable_set_for_each_freeze_rule(any_model, rule):
    name, model = any_model
    layer_map = build_layer_map(model)
    names = [n for n, _ in model.named_parameters()]
    body = layer_map.body
    frozen = {
        "none": set(),
        "backbone": {n for g in body for n in g.param_names},
        "depth:1": set(body[0].param_names),
        "depth:2": set(body[0].param_names) | set(body[1].param_names),
        "fraction:0.5": {n for g in body[: len(body) // 2] for n in g.param_names},
    }.get(rule)
    if frozen is None:
        frozen = {n for n in names if re.search(rule[len("regex:"):], n)} - set(layer_map.head.param_names)
    expected = set(names) - frozen
    plan = TransferPlan.build(model, TransferConfig(freeze=rule))
    assert plan.trainable_at(0) == expected
    TransferTrainer(model=model, args=_args(), plan=plan)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    # each parameter in exactly one group; the frozen ones are the groups marked frozen
    listed = [n for g in plan.groups for n in g.params]
    assert sorted(listed) == sorted(names)
    assert {n for g in plan.groups if g.frozen for n in g.params} == frozen


def _args(**kw):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir="/tmp/hf_transfer_unused", use_cpu=True, report_to=[], **kw)


def test_stem_is_exactly_what_depth_1_freezes():
    model = make_model("test_resnet")
    plan = TransferPlan.build(model, TransferConfig(freeze="depth:1"))
    frozen = {n for g in plan.groups if g.frozen for n in g.params}
    stem = {n for n, _ in model.named_parameters() if n.startswith(("timm_model.conv1.", "timm_model.bn1."))}
    assert len(stem) > 3 and frozen == stem  # test_resnet has a deep stem: conv1 is a Sequential


def test_linear_probe_trains_head_only_and_bad_rules_fail(tiny_hf_folders):
    model = make_model("hf:resnet", tiny_hf_folders)
    plan = TransferPlan.build(model, TransferConfig(strategy="linear_probe"))
    assert plan.trainable_at(10) == {"classifier.1.weight", "classifier.1.bias"}
    for cfg, message in [
        (TransferConfig(freeze="regex:nothing_matches_this"), "matches no parameter"),
        (TransferConfig(freeze="depth:99"), "K must be"),
        (TransferConfig(freeze="regex:classifier"), "only matches new"),
        (TransferConfig(freeze="layers:3"), "unknown"),
        (TransferConfig(strategy="partial"), "--freeze"),
        (TransferConfig(strategy="lp_ft"), "--lp_epochs"),
        (TransferConfig(lr_multipliers="nomatch=2"), "matches no parameter"),
        (TransferConfig(lr_multipliers="oops"), "regex=factor"),
        (TransferConfig(reinit="nomatch"), "--reinit"),
        (TransferConfig(bn_policy="sometimes"), "--bn_policy"),
    ]:
        with pytest.raises(TransferError, match=re.escape(message)):
            TransferPlan.build(model, cfg)


@pytest.mark.parametrize("name", BN_MODELS)
def test_frozen_batchnorm_statistics_are_bit_identical(name, tiny_hf_folders, random_images, tiny_training_args):
    model = make_model(name, tiny_hf_folders)
    plan = TransferPlan.build(model, TransferConfig(freeze="fraction:0.5"))
    frozen_bn = set(plan.frozen_batchnorm_names(model))
    all_bn = {n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert frozen_bn and frozen_bn != all_bn
    before_frozen, before_all = batchnorm_buffers(model, frozen_bn), batchnorm_buffers(model)
    weights = {n: p.clone() for n, p in model.named_parameters() if n in {x for g in plan.groups if g.frozen for x in g.params}}
    train_steps(model, plan, tiny_training_args, random_images, image_size(name))
    after = batchnorm_buffers(model)
    assert all(torch.equal(before_frozen[k], after[k]) for k in before_frozen)
    assert any(not torch.equal(before_all[k], after[k]) for k in before_all if k not in before_frozen)  # trained BN updates
    assert all(torch.equal(p, dict(model.named_parameters())[n]) for n, p in weights.items())


@pytest.mark.parametrize("policy", ["eval", "train"])
def test_bn_policy_eval_and_train(policy, random_images, tiny_training_args):
    model = make_model("test_resnet")
    plan = TransferPlan.build(model, TransferConfig(freeze="backbone", bn_policy=policy))
    before = batchnorm_buffers(model)
    train_steps(model, plan, tiny_training_args, random_images, 32)
    after = batchnorm_buffers(model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert (changed == []) if policy == "eval" else len(changed) == len(before)


def test_group_lrs_follow_the_formula(any_model, tiny_training_args, random_images):
    name, model = any_model
    cfg = TransferConfig(learning_rate=3e-3, backbone_lr_multiplier=0.1, layer_decay=0.7, freeze="depth:1")
    plan = TransferPlan.build(model, cfg)
    head = build_layer_map(model).head.index
    for g in plan.groups:
        expected = 3e-3 if g.new else 3e-3 * 0.1 * 0.7 ** (head - g.depth)
        assert math.isclose(g.lr, expected, rel_tol=1e-12), g.name
    trainer = TransferTrainer(model=model, args=tiny_training_args(max_steps=1, warmup_steps=0), plan=plan,
                              train_dataset=random_images(n=8, size=image_size(name)))
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    trained = [g for g in plan.groups if not g.frozen]
    assert [pg["lr"] for pg in trainer.optimizer.param_groups] == [g.lr for g in trained]
    assert [pg["initial_lr"] for pg in trainer.optimizer.param_groups] == [g.lr for g in trained]


def test_lr_multipliers_and_reinit(random_images, tiny_training_args):
    model = make_model("test_resnet")
    cfg = TransferConfig(learning_rate=1e-2, reinit=r"layer4\.0\.conv2", lr_multipliers=r"layer3=0.5,layer4\.0\.conv2=0.1")
    before = model.timm_model.layer4[0].conv2.weight.clone()
    plan = TransferPlan.build(model, cfg)
    plan.reinitialize(model)
    assert not torch.equal(before, model.timm_model.layer4[0].conv2.weight)
    lr_of = {n: g.lr for g in plan.groups for n in g.params}
    new_of = {n: g.new for g in plan.groups for n in g.params}
    assert new_of["timm_model.layer4.0.conv2.weight"] and math.isclose(lr_of["timm_model.layer4.0.conv2.weight"], 1e-3)
    assert math.isclose(lr_of["timm_model.layer4.0.conv1.weight"], 1e-3)  # pretrained: x0.1
    assert math.isclose(lr_of["timm_model.layer3.0.conv1.weight"], 5e-4)
    assert math.isclose(lr_of["timm_model.fc.weight"], 1e-2)


def test_no_weight_decay_on_norms_biases_and_tokens(any_model, tiny_training_args, random_images):
    name, model = any_model
    plan = TransferPlan.build(model, TransferConfig(weight_decay=0.05))
    trainer = TransferTrainer(model=model, args=tiny_training_args(), plan=plan,
                              train_dataset=random_images(n=8, size=image_size(name)))
    optimizer = trainer.create_optimizer()
    norm_params = {f"{mn}.{pn}" for mn, m in model.named_modules()
                   if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm))
                   or "norm" in type(m).__name__.lower()
                   for pn, _ in m.named_parameters(recurse=False)}
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed, "something must decay"
    for n in decayed:
        assert not n.endswith("bias") and n not in norm_params, n
        assert not re.search(r"pos_embed|cls_token|position_embeddings", n), n
    assert any(n.endswith("bn1.weight") or "normalization.weight" in n for n in norm_params) or name in ("test_vit", "hf:vit", "test_convnext", "hf:convnext")


def test_frozen_prefix_runs_no_backward_and_has_no_optimizer_state(random_images, tiny_training_args):
    model = make_model("test_resnet")
    plan = TransferPlan.build(model, TransferConfig(freeze="depth:1", gradual_unfreeze_epochs=1))
    fired = []
    model.timm_model.conv1.register_full_backward_hook(lambda *a: fired.append("conv1"))
    model.timm_model.layer4.register_full_backward_hook(lambda *a: fired.append("layer4"))
    # Two epochs planned (so the body does unfreeze, at epoch 1); stopped after epoch 0's two steps: head only so far.
    from transformers import TrainerCallback

    class StopAfterEpoch0(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= 2

    trainer = TransferTrainer(model=model, plan=plan, train_dataset=random_images(n=16, size=32),
                              args=tiny_training_args(num_train_epochs=2), callbacks=[StopAfterEpoch0()])
    trainer.train()
    assert fired == []  # nothing below the head ran backward
    state = trainer.optimizer.state
    params = dict(model.named_parameters())
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert id(params["timm_model.conv1.0.weight"]) not in in_optimizer  # frozen for the whole run: not in the optimizer
    assert id(params["timm_model.layer4.0.conv1.weight"]) in in_optimizer  # unfreezes later: in its group ...
    assert len(state[params["timm_model.layer4.0.conv1.weight"]]) == 0  # ... without state yet
    assert len(state[params["timm_model.fc.weight"]]) > 0
    with torch.no_grad():
        pass
    x = torch.randn(2, 3, 32, 32)
    plan.apply_freeze(model, 1)
    stem_out = model.timm_model.act1(model.timm_model.bn1(model.timm_model.conv1(x)))
    assert stem_out.grad_fn is None and not stem_out.requires_grad


def _gradual_run(output_dir, random_images, tiny_training_args, resume=None, epochs=3):
    model = make_model("test_resnet")
    plan = TransferPlan.build(model, TransferConfig(learning_rate=1e-2, gradual_unfreeze_epochs=1, layer_decay=0.8))
    trainer = TransferTrainer(model=model, plan=plan, train_dataset=random_images(n=16, size=32),
                              args=tiny_training_args(output_dir=str(output_dir), num_train_epochs=epochs,
                                                      save_strategy="epoch", warmup_steps=1, max_grad_norm=1.0))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_resume_in_the_middle_of_gradual_unfreezing(tmp_path, random_images, tiny_training_args):
    straight = _gradual_run(tmp_path / "a", random_images, tiny_training_args)
    checkpoint = tmp_path / "a" / "checkpoint-2"  # after epoch 1 of 3 (2 steps per epoch)
    saved = json.loads((checkpoint / "transfer_plan.json").read_text())
    assert TransferPlan.from_dict(saved).to_dict() == straight.plan.to_dict()
    resumed = _gradual_run(tmp_path / "a", random_images, tiny_training_args, resume=str(checkpoint))
    assert resumed.plan.to_dict() == straight.plan.to_dict()
    trainable = lambda t: {n for n, p in t.model.named_parameters() if p.requires_grad}  # noqa: E731
    assert trainable(resumed) == trainable(straight)
    assert [(g["lr"], g["initial_lr"]) for g in resumed.optimizer.param_groups] == \
           [(g["lr"], g["initial_lr"]) for g in straight.optimizer.param_groups]
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    # resuming with another plan is refused
    model = make_model("test_resnet")
    other = TransferPlan.build(model, TransferConfig(learning_rate=1e-2, gradual_unfreeze_epochs=2, layer_decay=0.8))
    trainer = TransferTrainer(model=model, plan=other, train_dataset=random_images(n=16, size=32),
                              args=tiny_training_args(output_dir=str(tmp_path / "a"), num_train_epochs=3))
    with pytest.raises(TransferError, match="gradual_unfreeze_epochs"):
        trainer.train(resume_from_checkpoint=str(checkpoint))


def test_lp_ft_schedule_and_plan_json(tmp_path):
    model = make_model("test_efficientnet")
    plan = TransferPlan.build(model, TransferConfig(strategy="lp_ft", lp_epochs=2, freeze="depth:1"))
    head = set(build_layer_map(model).head.param_names)
    assert plan.trainable_at(0) == plan.trainable_at(1) == head
    assert plan.trainable_at(2) == plan.ever_trained and len(plan.ever_trained) > len(head)
    saved = json.loads(plan.save(tmp_path, model).read_text())
    for g in saved["groups"]:
        assert set(g) >= {"lr", "weight_decay", "frozen", "trains_from_epoch", "params"}
    assert TransferPlan.load(tmp_path).to_dict() == plan.to_dict()


def test_scratch_trains_everything_as_new_at_one_rate():
    model = make_model("test_convnext")
    plan = TransferPlan.build(model, TransferConfig(strategy="scratch", learning_rate=2e-3, layer_decay=0.5))
    assert all(g.new and g.lr == 2e-3 and not g.frozen and g.trains_from_epoch == 0 for g in plan.groups)


def test_lr_multipliers_keep_regex_quantifiers_whole():
    from hf_transfer.plan import parse_lr_multipliers

    rules = parse_lr_multipliers(r"blocks\.[0-9]{1,2}\.=0.5, head=2")
    assert [(r.pattern, f) for r, f in rules] == [(r"blocks\.[0-9]{1,2}\.", 0.5), ("head", 2.0)]


def test_console_plan_table_folds_groups_that_train_alike():
    """The log's plan table folds consecutive depth groups with one rate and schedule (as the card does), and still
    accounts for every tensor; at epoch 1 of a head-first run the body's row changes from "from epoch 1" to "yes"."""
    model = make_model("test_efficientnet")
    plan = TransferPlan.build(model, TransferConfig(freeze="fraction:0.5", lp_epochs=1, strategy="lp_ft"))
    body = plan.table(0).splitlines()[2:-1]
    folded = [line.split() for line in body]
    assert [row[0] for row in folded] == ["0-2", "3-5", "6"]
    assert [row[-1] for row in folded] == ["frozen", "1", "yes"]  # "from epoch 1" ends in 1
    assert sum(int(line[53:60]) for line in body) == sum(len(g.params) for g in plan.groups)  # the tensors column
    assert [line.split()[-1] for line in plan.table(1).splitlines()[2:-1]] == ["frozen", "yes", "yes"]
