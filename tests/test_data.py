import numpy as np
import pytest
import torch
from PIL import Image

from hf_transfer import TransferError, load_image_classification_data
from hf_transfer.transforms import build_transform, decode_image, with_transforms

CFG = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}


def test_embedded_mnist_is_real_and_split_stratified():
    data = load_image_classification_data("embedded:mnist")
    train, val = data.splits["train"], data.splits["validation"]
    assert (len(train), len(val)) == (4500, 500)
    assert data.labels == [str(i) for i in range(10)]
    assert data.image_column == "image" and data.label_column == "label"
    assert np.bincount(val["label"], minlength=10).tolist() == [50] * 10  # stratified: 500 per class -> 50 each
    def image_bytes(split):
        from datasets import Image

        return [cell["bytes"] for cell in split.cast_column("image", Image(decode=False))["image"]]

    again = load_image_classification_data("embedded:mnist")
    assert image_bytes(again.splits["validation"]) == image_bytes(val)  # same seed, same split
    other = load_image_classification_data("embedded:mnist", seed=7)
    assert image_bytes(other.splits["validation"]) != image_bytes(val)
    assert not set(image_bytes(val)) & set(image_bytes(train))  # no image on both sides


def test_image_folder_and_explicit_columns(image_folder):
    data = load_image_classification_data(train_dir=str(image_folder), validation_split=0.25)
    assert data.labels == ["digit_0", "digit_1"]
    assert len(data.splits["train"]) == 18 and len(data.splits["validation"]) == 6


def test_image_folder_with_one_class_is_refused(tmp_path):
    (tmp_path / "only").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "only" / "a.png")
    with pytest.raises(TransferError, match="at least two"):
        load_image_classification_data(train_dir=str(tmp_path))


def test_missing_folder_and_missing_label_column():
    with pytest.raises(TransferError, match="does not exist"):
        load_image_classification_data(train_dir="/no/such/dir")
    with pytest.raises(TransferError, match="label column 'species' not found"):
        load_image_classification_data("embedded:digits", label_column_name="species")


def test_unknown_dataset_is_a_one_line_error():
    with pytest.raises(TransferError, match="cannot load dataset") as info:
        load_image_classification_data("nobody/no-such-dataset-here")
    assert "\n" not in str(info.value)


def test_string_labels_become_one_classlabel_for_all_splits(tmp_path):
    from datasets import Dataset, DatasetDict, Image as ImageFeature

    images = [Image.new("RGB", (8, 8), color=(i * 20, 0, 0)) for i in range(12)]
    labels = ["dog", "cat", "10", "2"] * 3
    ds = Dataset.from_dict({"img": images, "kind": labels}).cast_column("img", ImageFeature())
    DatasetDict({"train": ds, "validation": ds.select(range(4))}).save_to_disk(tmp_path / "saved")
    data = load_image_classification_data(str(tmp_path / "saved"))
    assert data.image_column == "img" and data.label_column == "kind"
    assert data.labels == ["10", "2", "cat", "dog"]
    train = data.splits["train"]
    assert [data.labels[i] for i in train["kind"]] == labels


def test_transforms_make_rgb_tensors_from_any_mode():
    transform = build_transform(CFG)
    for mode in ("L", "RGBA", "P", "RGB", "LA", "I;16"):
        out = transform(Image.new(mode, (20, 28)))
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32, mode
    # the pixels pipeline() will serve: transformers' load_image drops the alpha (the colour under it stays)
    from transformers.image_utils import load_image

    clear = Image.new("RGBA", (32, 32), (200, 10, 90, 0))
    assert torch.equal(transform(clear), transform(load_image(clear)))
    assert not torch.equal(transform(clear), transform(Image.new("RGB", (32, 32), "white")))


@pytest.mark.parametrize("preset", ["none", "flip", "gentle", "standard", "strong"])
def test_augmentation_presets_keep_shape(preset):
    out = build_transform(CFG, image_size=48, augmentation=preset)(Image.new("RGB", (64, 40)))
    assert out.shape == (3, 48, 48)


def test_unknown_preset_is_refused():
    with pytest.raises(TransferError, match="augmentation preset"):
        build_transform(CFG, augmentation="wild")


def test_corrupt_image_names_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(TransferError, match="bad.png"):
        decode_image({"path": str(bad), "bytes": None})


def test_with_transforms_gives_pixel_values_and_labels():
    data = load_image_classification_data("embedded:digits")
    splits = with_transforms(data.splits, data, CFG, image_size=32, augmentation="gentle")
    batch = splits["train"][:4]
    assert torch.stack(batch["pixel_values"]).shape == (4, 3, 32, 32)
    assert batch["labels"] == data.splits["train"]["label"][:4]


def test_truncated_validation_keeps_every_class():
    data = load_image_classification_data("embedded:mnist", max_eval_samples=100)
    assert set(data.splits["validation"]["label"]) == set(range(10))


def test_auto_augmentation_depends_on_epochs():
    from hf_transfer.transforms import resolve_augmentation

    assert resolve_augmentation("auto", 1) == "none"
    assert resolve_augmentation("auto", 3) == "gentle"
    assert resolve_augmentation("strong", 1) == "strong"
    with pytest.raises(TransferError, match="augmentation preset"):
        resolve_augmentation("wild", 1)


def _rotated_jpeg(path, orientation=3):
    """An asymmetric image stored upside down with EXIF Orientation=3 (as phones write it): upright, the top-left
    quarter is red."""
    from PIL import Image

    upright = Image.new("RGB", (40, 24), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 20, 12))
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright.rotate(180).save(path, quality=95, exif=exif)
    return upright


def test_exif_orientation_is_applied_where_images_are_decoded(tmp_path):
    """Training, evaluation and the probes see what pipeline() (transformers' load_image) sees: the upright image."""
    from transformers.image_utils import load_image

    from hf_transfer.transforms import build_transform, decode_image

    _rotated_jpeg(tmp_path / "photo.jpg")
    served = load_image(str(tmp_path / "photo.jpg"))
    decoded = decode_image({"path": str(tmp_path / "photo.jpg"), "bytes": None})
    assert decoded.size == served.size == (40, 24)
    assert np.array_equal(np.asarray(decoded.convert("RGB")), np.asarray(served))
    assert decoded.convert("RGB").getpixel((2, 2))[0] > 200  # red top-left: upright
    # A PIL image decoded by someone else (datasets' decode=True path) is put upright too, once.
    from PIL import Image

    transform = build_transform({"input_size": (3, 24, 24), "mean": (0, 0, 0), "std": (1, 1, 1), "crop_pct": 1.0})
    with Image.open(tmp_path / "photo.jpg") as raw:
        assert torch.equal(transform(raw), transform(served))


def _class_folders(root, classes=("cat", "dog"), n=4):
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), 40 * k + i, np.uint8)).save(root / name / f"{i}.png")


@pytest.mark.parametrize("linked", [("cat", "dog"), ("dog",)])
def test_symlinked_class_folders_are_classes(tmp_path, linked):
    """Class folders that are symbolic links (all of them, or one beside a real one) load with their folder's name;
    they used to give 'corresponds to no data' or 'no label column found'."""
    _class_folders(tmp_path / "store")
    train = tmp_path / "train"
    train.mkdir()
    for name in ("cat", "dog"):
        if name in linked:
            (train / name).symlink_to(tmp_path / "store" / name, target_is_directory=True)
        else:
            (tmp_path / "store" / name).rename(train / name)
    data = load_image_classification_data(train_dir=str(train), validation_split=0.25, seed=0)
    assert data.labels == ["cat", "dog"]
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 8


@pytest.mark.parametrize("flag", ["validation_dir", "test_dir"])
def test_evaluating_on_the_training_folder_is_refused(tmp_path, flag):
    _class_folders(tmp_path / "train")
    with pytest.raises(TransferError, match=f"--{flag} .* is the --train_dir folder") as info:
        load_image_classification_data(train_dir=str(tmp_path / "train"), **{flag: str(tmp_path / "train" / ".." / "train")})
    assert "\n" not in str(info.value)


def test_metadata_labels_that_contradict_the_class_folders_are_refused(tmp_path):
    _class_folders(tmp_path / "train", n=3)
    rows = [f"{c}/{i}.png,{'dog' if (c, i) == ('cat', 0) else c}" for c in ("cat", "dog") for i in range(3)]
    (tmp_path / "train" / "metadata.csv").write_text("file_name,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(TransferError, match=r"contradicts the class folders for 1 of 6 train images .*cat/ labelled 'dog'"):
        load_image_classification_data(train_dir=str(tmp_path / "train"), validation_split=0.4)
    (tmp_path / "train" / "metadata.csv").write_text("file_name,label\n" + "\n".join(r.rsplit(",", 1)[0] + "," + r.split("/")[0] for r in rows) + "\n")
    agreeing = load_image_classification_data(train_dir=str(tmp_path / "train"), validation_split=0.4)
    assert agreeing.labels == ["cat", "dog"]


def test_a_label_column_picked_among_several_is_said():
    import datasets

    images = [Image.fromarray(np.full((8, 8, 3), i, np.uint8)) for i in range(8)]
    ds = datasets.Dataset.from_dict({"img": images, "coarse_label": [0, 1] * 4, "fine_label": [0, 1, 2, 3] * 2},
                                    features=datasets.Features({"img": datasets.Image(),
                                                                "coarse_label": datasets.ClassLabel(names=["x", "y"]),
                                                                "fine_label": datasets.ClassLabel(names=list("abcd"))}))
    from hf_transfer.data import _other_label_columns

    notes = _other_label_columns(ds, "img", "fine_label")
    assert notes == ["label column 'fine_label' chosen; 'coarse_label' could be labels too: pass --label_column_name "
                     "to train on another"]
