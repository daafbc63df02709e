"""Imbalance: exact class weights, the loss that uses them, the balanced sampler (one process and DDP shards),
per-class recall, and the flags' refusals."""

import numpy as np
import pytest
import torch

from hf_transfer.errors import TransferError
from hf_transfer.imbalance import BalancedClassSampler, balanced_class_weights, class_counts, train_label_ids
from hf_transfer.metrics import ClassificationMetrics, per_class_recall
from hf_transfer.plan import TransferConfig

LABELS = ["cat", "dog", "fox", "owl"]


class LabelledImages(torch.utils.data.Dataset):
    """Random images with a chosen label list; ``labels`` is a tensor, as in the in-memory image store."""

    def __init__(self, labels, size=32, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.x = torch.randn(len(self.labels), 3, size, size, generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.labels[i]}


IMBALANCED = [0] * 8 + [1] * 2 + [3] * 4  # class 2 ("fox") has no training images


def test_class_weights_are_inverse_counts_with_mean_one():
    counts = class_counts(IMBALANCED, 4)
    assert counts.tolist() == [8, 2, 0, 4]
    weights = balanced_class_weights(counts)
    inverse = np.array([1 / 8, 1 / 2, 0.0, 1 / 4])
    expected = inverse / np.mean([1 / 8, 1 / 2, 1 / 4])  # mean over the classes present
    assert np.allclose(weights.numpy(), expected, atol=1e-7)
    assert weights[[0, 1, 3]].mean().item() == pytest.approx(1.0)
    assert weights[1] / weights[0] == pytest.approx(4.0)  # 4x fewer images, 4x the weight
    with pytest.raises(TransferError, match="model has 4 classes"):
        class_counts([0, 4], 4)


@pytest.fixture(scope="module")
def weighted_trainer(tmp_path_factory):
    from transformers import TrainingArguments

    from hf_transfer.backbones import load_backbone
    from hf_transfer.trainer import TransferTrainer

    torch.manual_seed(0)
    model = load_backbone("test_resnet", labels=LABELS, pretrained=False)
    args = TrainingArguments(output_dir=str(tmp_path_factory.mktemp("weighted")), use_cpu=True, report_to=[],
                             per_device_train_batch_size=7, remove_unused_columns=False, seed=5, learning_rate=1e-2)
    config = TransferConfig(strategy="scratch", learning_rate=1e-2, class_weighting="balanced")
    return TransferTrainer(model=model, args=args, transfer_config=config, train_dataset=LabelledImages(IMBALANCED))


def test_the_training_loss_is_the_class_weighted_cross_entropy(weighted_trainer):
    trainer = weighted_trainer
    assert torch.allclose(trainer.class_weights, balanced_class_weights([8, 2, 0, 4]))
    assert trainer.loss_is_scaled_for_ga is False  # a batch mean: Trainer divides by the accumulation steps
    batch = {"pixel_values": torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
             "labels": torch.tensor([0, 0, 0, 1, 3, 3])}
    model = trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        logits = model(pixel_values=batch["pixel_values"]).logits
    per_sample = -torch.log_softmax(logits, -1)[torch.arange(6), batch["labels"]]
    w = trainer.class_weights[batch["labels"]]
    assert loss.item() == pytest.approx((w * per_sample).sum().item() / w.sum().item(), rel=1e-5)
    assert loss.item() != pytest.approx(per_sample.mean().item(), rel=1e-3)  # the weights change it
    summary = trainer.imbalance_summary()
    assert summary["class_weighting"] == "balanced" and summary["train_class_counts"] == {"cat": 8, "dog": 2, "fox": 0, "owl": 4}
    assert summary["class_weights"]["dog"] == pytest.approx(4 * summary["class_weights"]["cat"], rel=1e-5)


def test_balanced_sampler_draws_classes_evenly_and_reproducibly():
    labels = [0] * 90 + [1] * 10
    sampler = BalancedClassSampler(labels, num_samples=4000, seed=7)
    sampler.set_epoch(0)
    first = list(sampler)
    share = np.mean(np.asarray(labels)[first] == 1)
    assert 0.46 < share < 0.54  # 10 % of the images, half of the draws
    sampler.set_epoch(0)
    assert list(sampler) == first  # the epoch's draw depends on seed + epoch only (resume, DDP)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_balanced_sampler_in_the_trainer_and_in_ddp_shards(tmp_path):
    from accelerate.data_loader import prepare_data_loader
    from transformers import TrainingArguments

    from hf_transfer.backbones import load_backbone
    from hf_transfer.trainer import TransferTrainer

    labels = [0] * 40 + [1] * 8 + [2] * 8 + [3] * 8
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=4,
                             remove_unused_columns=False, seed=3, dataloader_drop_last=False)
    trainer = TransferTrainer(model=load_backbone("test_resnet", labels=LABELS, pretrained=False), args=args,
                              transfer_config=TransferConfig(strategy="scratch", sampler="balanced"),
                              train_dataset=LabelledImages(labels, size=8))
    assert trainer.class_weights is None
    drawn = torch.cat([batch["labels"] for batch in trainer.get_train_dataloader()])
    assert len(drawn) == len(labels)
    assert (drawn == 0).float().mean() < 0.45  # 62 % of the images, about a quarter of the draws

    # DDP: accelerate shards the (identical) draw of every process by batches: each gets a different share.
    def shard(rank):
        sampler = trainer._get_train_sampler()
        loader = torch.utils.data.DataLoader(list(range(len(labels))), sampler=sampler, batch_size=4)
        loader = prepare_data_loader(loader, num_processes=2, process_index=rank, put_on_device=False)
        loader.set_epoch(2)
        return [batch.tolist() for batch in loader]

    one, two = shard(0), shard(1)
    sampler = trainer._get_train_sampler()
    sampler.set_epoch(2)
    whole = list(sampler)
    full_batches = [whole[i:i + 4] for i in range(0, len(whole), 4)]
    assert one == full_batches[0::2] and two == full_batches[1::2]


def test_refusals():
    TransferConfig(class_weighting="balanced").validate()
    TransferConfig(sampler="balanced").validate()
    with pytest.raises(TransferError, match="pick one"):
        TransferConfig(class_weighting="balanced", sampler="balanced").validate()
    with pytest.raises(TransferError, match="--class_weighting 'inverse' is unknown"):
        TransferConfig(class_weighting="inverse").validate()
    with pytest.raises(TransferError, match="--sampler 'uniform' is unknown"):
        TransferConfig(sampler="uniform").validate()
    with pytest.raises(TransferError, match="cannot read the class"):
        train_label_ids([{"pixel_values": 0, "labels": 1}])


def test_train_labels_from_a_transformed_datasets_split():
    from datasets import ClassLabel, Dataset, Features, Value

    ds = Dataset.from_dict({"x": [1, 2, 3], "label": [2, 0, 2]},
                           features=Features({"x": Value("int64"), "label": ClassLabel(names=["a", "b", "c"])}))
    ds = ds.with_transform(lambda batch: (_ for _ in ()).throw(AssertionError("transform must not run")))
    assert train_label_ids(ds).tolist() == [2, 0, 2]
    assert train_label_ids(ds.rename_column("label", "fine_label")).tolist() == [2, 0, 2]  # the one ClassLabel column


def test_per_class_recall_on_constructed_predictions():
    from transformers import EvalPrediction

    references = [0, 1, 1, 1, 2, 2, 0]
    predictions = [0, 0, 1, 1, 1, 2, 0]
    assert per_class_recall(predictions, references, LABELS) == pytest.approx({"cat": 1.0, "dog": 2 / 3, "fox": 0.5})
    logits = np.eye(4)[predictions]
    metrics = ClassificationMetrics(labels=LABELS)(EvalPrediction(predictions=logits, label_ids=np.array(references)))
    assert metrics["accuracy"] == pytest.approx(5 / 7)
    assert metrics["recall/dog"] == pytest.approx(2 / 3) and "recall/owl" not in metrics  # no owl: not measured
    # F1: cat precision 2/3 recall 1 -> 0.8; dog 2/3 and 2/3 -> 2/3; fox 1 and 1/2 -> 2/3
    assert metrics["macro_f1"] == pytest.approx(np.mean([0.8, 2 / 3, 2 / 3]))


def test_a_resume_with_another_imbalance_setting_is_refused():
    from hf_transfer.backbones import load_backbone
    from hf_transfer.plan import TransferPlan

    model = load_backbone("test_resnet", labels=LABELS, pretrained=False)
    plain = TransferPlan.build(model, TransferConfig(strategy="scratch"))
    weighted = TransferPlan.build(model, TransferConfig(strategy="scratch", class_weighting="balanced"))
    assert weighted.differences(plain) == ["config.class_weighting: 'none' -> 'balanced'"]
    assert TransferPlan.from_dict(weighted.to_dict()).config.class_weighting == "balanced"


def test_given_class_weights_are_used_and_recorded(tmp_path):
    from transformers import TrainingArguments

    from hf_transfer.backbones import load_backbone
    from hf_transfer.trainer import TransferTrainer

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], remove_unused_columns=False)
    trainer = TransferTrainer(model=load_backbone("test_resnet", labels=LABELS, pretrained=False), args=args,
                              transfer_config=TransferConfig(strategy="scratch"), class_weights=[1.0, 3.0, 0.5, 2.0])
    batch = {"pixel_values": torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)),
             "labels": torch.tensor([0, 1, 2, 3])}
    model = trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        per_sample = torch.nn.functional.cross_entropy(model(pixel_values=batch["pixel_values"]).logits, batch["labels"],
                                                       reduction="none")
    assert loss.item() == pytest.approx((torch.tensor([1.0, 3.0, 0.5, 2.0]) * per_sample).sum().item() / 6.5, rel=1e-5)
    assert trainer.imbalance_summary() == {"class_weighting": "custom", "sampler": "random",
                                           "class_weights": {"cat": 1.0, "dog": 3.0, "fox": 0.5, "owl": 2.0}}
    with pytest.raises(TransferError, match="4 classes"):
        TransferTrainer(model=model, args=args, transfer_config=TransferConfig(strategy="scratch"), class_weights=[1.0, 2.0])
