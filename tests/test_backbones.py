import json

import pytest
import torch

from hf_transfer import TransferError, load_backbone
from hf_transfer.backbones import data_config, set_preprocessing

LABELS = ["cat", "dog", "bird"]


@pytest.mark.parametrize("arch", ["test_resnet", "test_efficientnet", "test_convnext", "test_vit"])
def test_timm_architecture_wrapped_with_user_labels(arch, tmp_path):
    model = load_backbone(arch, labels=LABELS, pretrained=False).eval()
    assert type(model).__name__ == "TimmWrapperForImageClassification"
    assert model.config.id2label == {0: "cat", 1: "dog", 2: "bird"}
    assert model.config.label2id == {"cat": 0, "dog": 1, "bird": 2}
    size = data_config(model)["input_size"][-1]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    assert logits.shape == (2, 3)

    # Round trip through save_pretrained: same outputs, same labels, preprocessing kept in config.json.
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"][-1] == size
    reloaded = load_backbone(str(tmp_path)).eval()
    assert reloaded.config.id2label == model.config.id2label
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=x).logits, logits)
    # Reloaded with other classes, the saved folder names the new ones (TimmWrapper keeps label_names too).
    relabeled = load_backbone(str(tmp_path), labels=["x", "y"])
    relabeled.save_pretrained(tmp_path / "relabeled")
    assert load_backbone(str(tmp_path / "relabeled")).config.id2label == {0: "x", 1: "y"}


def test_timm_folder_saved_by_timm_itself(tmp_path):
    import timm
    from timm.models import save_for_hf

    timm_model = timm.create_model("test_resnet", num_classes=4).eval()
    save_for_hf(timm_model, str(tmp_path), model_args={"num_classes": 4})
    x = torch.randn(1, 3, 160, 160)
    model = load_backbone(str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, timm_model(x))
    new = load_backbone(str(tmp_path), labels=["a", "b"])
    assert new.config.num_labels == 2 and new.timm_model.get_classifier().out_features == 2
    # Only the head is new: the body kept the saved weights.
    torch.testing.assert_close(new.timm_model.conv1[0].weight, timm_model.conv1[0].weight)


@pytest.mark.parametrize("kind", ["vit", "convnext", "resnet"])
def test_transformers_folder_gets_a_new_head_only(kind, tiny_hf_folders):
    from transformers import AutoModelForImageClassification

    original = AutoModelForImageClassification.from_pretrained(tiny_hf_folders[kind])
    model = load_backbone(str(tiny_hf_folders[kind]), labels=LABELS)
    assert model.config.num_labels == 3 and model.config.id2label[1] == "dog"
    old, new = original.state_dict(), model.state_dict()
    changed = {k for k in new if k not in old or old[k].shape != new[k].shape or not torch.equal(old[k], new[k])}
    assert changed and all(k.startswith("classifier") for k in changed), changed


def test_embedded_lite0_is_real_imagenet_weights():
    """The embedded weights are the real ones: a photo of coffee is an espresso."""
    import skimage.data
    from PIL import Image

    from hf_transfer.transforms import build_transform

    model = load_backbone("embedded:efficientnet_lite0").eval()
    assert model.config.num_labels == 1000
    x = build_transform(data_config(model))(Image.fromarray(skimage.data.coffee())).unsqueeze(0)
    with torch.no_grad():
        probs = model(pixel_values=x).logits.softmax(-1)[0]
    assert model.config.id2label[int(probs.argmax())] == "espresso"
    assert probs.max() > 0.8


def test_embedded_lite1_loads_with_its_resolution():
    model = load_backbone("embedded:efficientnet_lite1", labels=["a", "b"])
    assert data_config(model)["input_size"] == [3, 240, 240] or tuple(data_config(model)["input_size"]) == (3, 240, 240)
    assert model.timm_model.classifier.out_features == 2


def test_image_size_is_recorded_for_saved_folders(tmp_path):
    model = load_backbone("test_efficientnet", labels=["a", "b"], pretrained=False)
    set_preprocessing(model, 64)
    model.save_pretrained(tmp_path)
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert processor.data_config["input_size"][-1] == 64


@pytest.mark.parametrize(
    "name, message",
    [
        ("embedded:resnet9000", "unknown embedded backbone"),
        ("./no/such/folder", "does not exist"),
        ("surely-not-a-model-name", "cannot load model"),
        ("test_resnet", "pretrained weights"),  # a timm architecture whose weights are not reachable offline
    ],
)
def test_bad_model_names_give_one_line_errors(name, message):
    with pytest.raises(TransferError, match=message) as info:
        load_backbone(name, labels=["a", "b"])
    assert "\n" not in str(info.value)


def test_a_saved_timm_folder_reloaded_with_new_classes_names_them_everywhere(tmp_path):
    """A timm config keeps `label_names` beside id2label: reloading an earlier run's folder for other classes must
    replace both (the stale two names made the confusion matrix of a ten-class fine-tune fail)."""
    from hf_transfer.hub import label_names
    from hf_transfer.saving import save_model_folder

    model = load_backbone("test_resnet", labels=["cat", "dog"], pretrained=False)
    save_model_folder(model, tmp_path)
    reloaded = load_backbone(str(tmp_path), labels=list("abc"))
    assert label_names(reloaded.config.to_dict()) == ["a", "b", "c"] and reloaded.config.num_labels == 3


@pytest.mark.parametrize("arch, model_args", [
    ("xcit_nano_12_p16_224", {"img_size": 48, "depth": 2, "embed_dim": 32}),
    ("fastvit_t8", {"layers": (1, 1, 1, 1), "embed_dims": (32, 32, 64, 64)}),
])
def test_timm_save_for_hf_folder_with_model_args_round_trips(arch, model_args, tmp_path):
    """A folder timm wrote with non-default architecture arguments: the fine-tuned folder keeps them, so pipeline()
    and timm's local-dir loader rebuild the same network (it used to write "model_args": {} and fail to load)."""
    import timm
    from timm.models import save_for_hf
    from transformers import AutoModelForImageClassification

    from hf_transfer.saving import save_model_folder

    torch.manual_seed(0)
    source = timm.create_model(arch, pretrained=False, num_classes=4, **model_args)
    save_for_hf(source, str(tmp_path / "src"), model_args={"num_classes": 4, **model_args})
    model = load_backbone(str(tmp_path / "src"), labels=["a", "b"]).eval()
    save_model_folder(model, tmp_path / "out", image_size=48, timm_layout=True)
    saved_args = json.loads((tmp_path / "out" / "config.json").read_text())["model_args"]
    assert "num_classes" not in saved_args
    assert set(model_args) <= set(saved_args)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = model(pixel_values=x).logits
        reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()
        torch.testing.assert_close(reloaded(pixel_values=x).logits, expected)
        native = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
        torch.testing.assert_close(native(x), expected)


def test_a_model_folder_without_weights_says_so(tmp_path, tiny_hf_folders):
    import shutil

    shutil.copy(tiny_hf_folders["resnet"] / "config.json", tmp_path / "config.json")
    with pytest.raises(TransferError, match="has a config.json but no weights .*--no_pretrained"):
        load_backbone(str(tmp_path), labels=LABELS)
    assert load_backbone(str(tmp_path), labels=LABELS, pretrained=False).config.num_labels == 3
