import pytest
import torch

from hf_transfer import TransferError, load_backbone
from hf_transfer.backbones import build_layer_map


def _check_partition(model, layer_map):
    names = [n for n, _ in model.named_parameters()]
    seen = [n for g in layer_map.groups for n in g.param_names]
    assert sorted(seen) == sorted(names) and len(seen) == len(set(seen))  # every parameter in exactly one group
    assert [g.index for g in layer_map.groups] == list(range(len(layer_map)))
    assert layer_map.head.is_head and not any(g.is_head for g in layer_map.body)


@pytest.mark.parametrize(
    "arch, head, first_block",
    [
        ("test_resnet", ["timm_model.fc.weight", "timm_model.fc.bias"], "timm_model.layer1"),
        ("test_efficientnet", ["timm_model.classifier.weight", "timm_model.classifier.bias"], "timm_model.blocks.0"),
        ("test_convnext", ["timm_model.head.fc.weight", "timm_model.head.fc.bias"], "timm_model.stages.0"),
        ("test_vit", ["timm_model.head.weight", "timm_model.head.bias"], "timm_model.blocks.0"),
    ],
)
def test_timm_layer_maps(arch, head, first_block):
    model = load_backbone(arch, labels=["a", "b"], pretrained=False)
    layer_map = build_layer_map(model)
    _check_partition(model, layer_map)
    assert layer_map.head.param_names == head
    assert layer_map.groups[0].name == "stem"
    assert layer_map.groups[1].module_names[0] == first_block


@pytest.mark.parametrize(
    "kind, stem, blocks, head",
    [
        ("vit", "vit.embeddings", ["vit.layers.0", "vit.layers.1"], ["classifier.weight", "classifier.bias"]),
        ("convnext", "convnext.embeddings", ["convnext.encoder.stages.0", "convnext.encoder.stages.1"],
         ["classifier.weight", "classifier.bias"]),
        ("resnet", "resnet.embedder", ["resnet.encoder.stages.0", "resnet.encoder.stages.1"],
         ["classifier.1.weight", "classifier.1.bias"]),
    ],
)
def test_transformers_layer_maps(kind, stem, blocks, head, tiny_hf_folders):
    model = load_backbone(str(tiny_hf_folders[kind]), labels=["a", "b"])
    layer_map = build_layer_map(model)
    _check_partition(model, layer_map)
    assert layer_map.groups[0].module_names == [stem]
    assert [g.module_names[0] for g in layer_map.groups[1:1 + len(blocks)]] == blocks
    assert layer_map.head.param_names == head


def test_unmappable_model_suggests_layer_regex():
    class Odd(torch.nn.Module):
        base_model_prefix = "body"

        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
            self.classifier = torch.nn.Linear(4, 2)

    with pytest.raises(TransferError, match="--layer_regex"):
        build_layer_map(Odd())
    layer_map = build_layer_map(Odd(), layer_regex=r"body\.(\d+)\.")
    assert [g.name for g in layer_map.groups] == ["body.0", "body.1", "head"]
    with pytest.raises(TransferError, match="exactly one"):
        build_layer_map(Odd(), layer_regex=r"body\.\d+")
