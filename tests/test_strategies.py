"""Strategies as registered objects: each one's roles in the plan, its engine features, and a new strategy added
by registering one class (no edit anywhere else)."""

import pytest
import torch

from hf_transfer import TransferError, load_backbone
from hf_transfer.backbones import build_layer_map
from hf_transfer.engines import Engine, check_engine, features_used
from hf_transfer.plan import TransferConfig, TransferPlan
from hf_transfer.strategies import REGISTRY, Strategy, get_strategy, register, strategy_names


ZERO3 = Engine("deepspeed", zero_stage=3,
               deepspeed_config={"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}})


@pytest.fixture
def model():
    torch.manual_seed(0)
    return load_backbone("test_resnet", labels=["a", "b"], pretrained=False)


def test_the_registry_lists_every_strategy_once_and_auto_builds_no_plan():
    assert strategy_names() == ("full", "linear_probe", "partial", "lp_ft", "scratch", "lora")
    assert strategy_names(plan_only=False)[-1] == "auto"
    with pytest.raises(TransferError, match=r"--strategy 'auto' is unknown; choose one of full, linear_probe"):
        TransferConfig(strategy="auto").validate()
    with pytest.raises(TransferError, match="--strategy 'fancy' is unknown"):
        get_strategy("fancy")


@pytest.mark.parametrize("name, config, frozen_body, new_all, head_only, features", [
    ("full", {}, False, False, 0, ["layer_rates", "bn_policy"]),
    ("linear_probe", {}, True, False, 0, ["layer_rates", "bn_policy", "freeze"]),
    ("partial", {"freeze": "depth:1"}, False, False, 0, ["layer_rates", "bn_policy", "freeze"]),
    ("lp_ft", {"lp_epochs": 2}, False, False, 2, ["layer_rates", "bn_policy", "unfreeze"]),
    ("scratch", {}, False, True, 0, ["layer_rates", "bn_policy"]),
])
def test_each_strategy_gives_the_plan_its_roles(model, name, config, frozen_body, new_all, head_only, features):
    config = TransferConfig(strategy=name, **config)
    plan = TransferPlan.build(model, config)
    head = set(build_layer_map(model).head.param_names)
    body = {n for n, _ in model.named_parameters()} - head
    frozen = {n for g in plan.groups if g.frozen for n in g.params}
    new = {n for g in plan.groups if g.new for n in g.params}
    assert (frozen == body) is frozen_body
    assert (new == body | head) is new_all
    assert get_strategy(name).head_only_epochs(config) == config.first_body_epoch() == head_only
    assert {g.trains_from_epoch for g in plan.groups if not g.frozen and not g.new} <= {head_only}
    assert features_used(config) == features


def test_a_new_strategy_is_one_registered_class(model):
    """A strategy that keeps the first body group frozen: the plan, the config check and the engine check follow."""

    @register
    class KeepStem(Strategy):
        name = "keep_stem"
        freezes_body = True

        def param_roles(self, config, names, layer_map, frozen, new):
            return super().param_roles(config, names, layer_map, frozen | set(layer_map.body[0].param_names), new)

    try:
        plan = TransferPlan.build(model, TransferConfig(strategy="keep_stem"))
        stem = set(build_layer_map(model).body[0].param_names)
        assert {n for g in plan.groups if g.frozen for n in g.params} == stem
        assert "freeze" in features_used(plan.config)
        check_engine(ZERO3, plan.config)  # a fixed freeze works under ZeRO-3
        with pytest.raises(TransferError, match="--lp_epochs only applies"):
            TransferConfig(strategy="keep_stem", lp_epochs=1).validate()
    finally:
        REGISTRY.pop("keep_stem")


def test_engine_refusal_names_the_strategy_that_unfreezes():
    with pytest.raises(TransferError, match=r"^--strategy lp_ft under DeepSpeed ZeRO-3"):
        check_engine(ZERO3, TransferConfig(strategy="lp_ft", lp_epochs=1))
    with pytest.raises(TransferError, match=r"^--gradual_unfreeze_epochs under DeepSpeed ZeRO-3"):
        check_engine(ZERO3, TransferConfig(gradual_unfreeze_epochs=1))
