"""--image_size: CNNs unchanged, ViT position embeddings resampled (timm and transformers), reload at the new size."""

import pytest
import torch

from hf_transfer import TransferError, load_backbone
from hf_transfer.backbones import set_preprocessing
from hf_transfer.resolution import change_input_size
from hf_transfer.saving import save_model_folder


@pytest.mark.parametrize("name, size, expected", [
    ("test_resnet", 48, "no size-dependent parameters"),
    ("test_vit", 64, "resampled from grid 10x10 to 4x4"),
    ("hf:vit", 64, "resampled from grid 4x4 to 8x8"),
])
def test_resolution_change_reports_and_reloads(name, size, expected, tiny_hf_folders, tmp_path):
    model = (load_backbone(str(tiny_hf_folders["vit"]), labels=["a", "b"]) if name == "hf:vit"
             else load_backbone(name, labels=["a", "b"], pretrained=False))
    report = change_input_size(model, size)
    assert expected in report
    set_preprocessing(model, size)
    model.eval()
    x = torch.randn(2, 3, size, size)
    logits = model(pixel_values=x).logits
    save_model_folder(model, tmp_path, image_size=size)
    reloaded = load_backbone(str(tmp_path)).eval()
    assert torch.allclose(reloaded(pixel_values=x).logits, logits, atol=1e-5)


def test_resolution_refuses_bad_patch_multiple(tiny_hf_folders):
    model = load_backbone(str(tiny_hf_folders["vit"]), labels=["a", "b"])
    with pytest.raises(TransferError, match="multiple of the patch size"):
        change_input_size(model, 30)
