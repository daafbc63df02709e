"""hf_transfer inside your own Trainer code: which learning rate the head gets, the top-level imports, the logged rate."""

import pytest

import hf_transfer
from hf_transfer import TransferConfig, TransferPlan, load_backbone
from hf_transfer.plan import default_learning_rate


def head_rate(plan: TransferPlan) -> float:
    return next(g.lr for g in plan.groups if g.name == "head")


def test_the_head_rate_comes_from_the_config_then_training_arguments_then_the_family(tiny_training_args, random_images):
    from hf_transfer.training_args import TransferTrainingArguments
    from hf_transfer.trainer import TransferTrainer

    model = load_backbone("test_resnet", labels=["x", "y"], pretrained=False)
    data = random_images(n=8, size=32)
    family = default_learning_rate(model)
    assert family == 1e-2  # a BatchNorm CNN

    # 1. TransferConfig.learning_rate wins over TrainingArguments'
    trainer = TransferTrainer(model=model, args=tiny_training_args(learning_rate=5e-5), train_dataset=data,
                              transfer_config=TransferConfig(freeze="fraction:0.5", learning_rate=2e-3))
    assert head_rate(trainer.plan) == 2e-3
    # 2. without it, TrainingArguments' rate (also a plain TrainingArguments' 5e-5 default) is the head's
    model = load_backbone("test_resnet", labels=["x", "y"], pretrained=False)
    trainer = TransferTrainer(model=model, args=tiny_training_args(learning_rate=5e-5), train_dataset=data,
                              transfer_config=TransferConfig(freeze="fraction:0.5"))
    assert head_rate(trainer.plan) == 5e-5 and trainer.plan.config.learning_rate == 5e-5
    backbone = {g.lr for g in trainer.plan.groups if not g.name.startswith("head") and not g.frozen}
    assert backbone == {5e-6}  # x backbone_lr_multiplier 0.1
    # 3. neither: the family default (TransferTrainingArguments leaves --learning_rate unset)
    model = load_backbone("test_resnet", labels=["x", "y"], pretrained=False)
    args = TransferTrainingArguments(output_dir=str(tiny_training_args().output_dir), use_cpu=True, report_to=[],
                                     eval_strategy="no")
    assert args.learning_rate is None
    trainer = TransferTrainer(model=model, args=args, train_dataset=data, transfer_config=TransferConfig(freeze="fraction:0.5"))
    assert head_rate(trainer.plan) == family and args.learning_rate == family
    assert head_rate(TransferPlan.build(model, TransferConfig())) == family


def test_plan_optimizer_is_exported_at_the_top_level():
    from hf_transfer.optimizers import plan_optimizer

    assert hf_transfer.plan_optimizer is plan_optimizer and "plan_optimizer" in hf_transfer.__all__


def test_a_plain_trainer_with_the_callback_logs_the_heads_rate(tiny_training_args, random_images):
    from transformers import Trainer

    from hf_transfer import TransferPlanCallback, plan_optimizer

    model = load_backbone("test_resnet", labels=["x", "y"], pretrained=False)
    plan = TransferPlan.build(model, TransferConfig(learning_rate=1e-2, backbone_lr_multiplier=0.1))
    args = tiny_training_args(max_steps=2, logging_strategy="steps", logging_steps=1, lr_scheduler_type="constant")
    optimizer = plan_optimizer(plan, args, model)
    assert optimizer.param_groups[0]["name"] != "head" and optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    trainer = Trainer(model=model, args=args, train_dataset=random_images(n=16, size=32),
                      optimizers=(optimizer, None), callbacks=[TransferPlanCallback(plan)])
    trainer.train()
    logged = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    assert logged == [pytest.approx(1e-2)] * 2
    assert [g["name"] for g in optimizer.param_groups][0] != "head"  # the groups' order is untouched
