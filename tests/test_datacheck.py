"""The data check before training: bad files all named at once, skipping, high-depth images, class sets, layouts."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from hf_transfer import TransferError, load_image_classification_data
from hf_transfer.datacheck import check_images, inspect_image
from hf_transfer.transforms import build_transform

CFG = {"input_size": (3, 16, 16), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}


def _digits(n):
    from sklearn.datasets import load_digits

    return [(img * 15).astype(np.uint8) for img in load_digits().images[:n]]


def _write_classes(root, classes, per_class=6):
    """root/<class>/<i>.png from real digits."""
    images = _digits(per_class)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            Image.fromarray(img).save(root / cls / f"{i}.png")
    return root


def _encoded(img, fmt):
    buffer = io.BytesIO()
    Image.fromarray(img).resize((64, 64)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture
def messy_folder(image_folder, monkeypatch):
    """The conftest digits folder plus one bad file of each kind, and PIL's pixel limit lowered to 5,000."""
    png, jpg = _encoded(_digits(1)[0], "PNG"), _encoded(_digits(1)[0], "JPEG")
    bad = {
        "digit_0/empty.png": b"",
        "digit_0/half.png": png[: len(png) // 2],
        "digit_1/half.jpg": jpg[: len(jpg) // 2],
        "digit_1/notes.jpg": b"this is a text file, not a JPEG\n",
    }
    for name, data in bad.items():
        (image_folder / name).write_bytes(data)
    Image.new("L", (120, 120)).save(image_folder / "digit_1" / "huge.png")  # 14,400 px: over twice the limit
    Image.new("L", (80, 80)).save(image_folder / "digit_0" / "big.png")  # 6,400 px: over the limit, under twice it
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    return image_folder


def test_every_bad_image_is_named_in_one_error(messy_folder):
    with pytest.raises(TransferError) as info:
        load_image_classification_data(train_dir=str(messy_folder))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("5 unreadable images in train (under ")
    for expected in ("digit_0/empty.png: zero bytes", "digit_0/half.png: truncated", "digit_1/half.jpg: truncated",
                     "digit_1/notes.jpg: not an image", "digit_1/huge.png: 14,400 pixels, over twice PIL's MAX_IMAGE_PIXELS of 5,000"):
        assert expected in message
    assert "--on_bad_image skip" in message and "--max_image_pixels" in message
    assert "big.png" not in message  # loads (PIL only warns): a note, not an error


def test_skip_drops_exactly_the_bad_rows_and_records_them(messy_folder, tmp_path):
    data = load_image_classification_data(train_dir=str(messy_folder), on_bad_image="skip", validation_split=0.25)
    assert sorted(b["path"].split("/")[-1] for b in data.bad_images) == ["empty.png", "half.jpg", "half.png", "huge.png", "notes.jpg"]
    assert {b["split"] for b in data.bad_images} == {"train"}
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 24 + 1  # the 24 digits and big.png
    assert [b.path.split("/")[-1] for b in data.check.oversized] == ["big.png"]
    assert any("over PIL's pixel limit but under twice it (PIL loads them" in note and "big.png" in note for note in data.notes)
    written = data.write_bad_images(tmp_path / "out")
    assert written.name == "bad_images.json"
    rows = json.loads(written.read_text())
    assert {r["reason"] for r in rows} >= {"zero bytes", "truncated", "not an image"}
    assert set(rows[0]) == {"split", "row", "path", "reason"}


def test_clean_images_have_no_bad_rows_and_nothing_is_written(image_folder, tmp_path):
    data = load_image_classification_data(train_dir=str(image_folder))
    assert data.bad_images == [] and data.check.total == 24 and not data.check.bad
    assert data.write_bad_images(tmp_path) is None


def test_in_memory_bytes_are_named_by_split_and_row():
    from datasets import Dataset, DatasetDict, Image as ImageFeature

    good = _encoded(_digits(1)[0], "PNG")
    cells = [{"bytes": good, "path": None}] * 3 + [{"bytes": good[: len(good) // 2], "path": None}]
    ds = Dataset.from_dict({"image": cells, "label": [0, 1, 0, 1]}).cast_column("image", ImageFeature())
    report = check_images(DatasetDict({"train": ds}), "image")
    assert [(b.split, b.row, b.reason) for b in report.bad] == [("train", 3, "truncated")]
    assert report.images == {"train": 4} and report.images_per_second > 0


def test_inspect_image_reasons(tmp_path):
    assert inspect_image({"path": str(tmp_path / "gone.png"), "bytes": None}) == ("missing file", 0)
    assert inspect_image({"path": None, "bytes": _encoded(_digits(1)[0], "JPEG")}) == (None, 64 * 64)


def test_embedded_sets_skip_the_check():
    data = load_image_classification_data("embedded:digits")
    assert data.check is None and data.bad_images == []


# ------------------------------------------------------------------------------------------- high-depth images
def _check_one(tmp_path, array, name="x.png"):
    Image.fromarray(array).save(tmp_path / name)
    return check_images({"train": _file_dataset([tmp_path / name])}, "image")


def _file_dataset(paths):
    from datasets import Dataset, Image as ImageFeature

    return Dataset.from_dict({"image": [str(p) for p in paths]}).cast_column("image", ImageFeature())


def test_16_bit_png_beyond_8_bits_is_refused_by_the_check(tmp_path):
    twelve_bit = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)  # a 12-bit sensor in 16 bits
    report = _check_one(tmp_path, twelve_bit)
    assert [b.reason for b in report.bad] == ["I;16 image with values 0..4095, which convert('RGB') clips to 0..255"]
    from hf_transfer.datacheck import bad_images_error

    assert "save them as 8-bit, scaled by their range" in str(bad_images_error(report))


def test_float_image_in_0_1_is_refused_and_16_bit_within_8_bits_passes(tmp_path):
    ramp = np.linspace(0.0, 1.0, 256, dtype=np.float32).reshape(16, 16)
    report = _check_one(tmp_path, ramp, "f.tiff")
    assert len(report.bad) == 1 and "turns black" in report.bad[0].reason
    within = (np.arange(256).reshape(16, 16)).astype(np.uint16)
    assert _check_one(tmp_path, within, "ok.png").bad == []
    image = Image.open(tmp_path / "ok.png")
    assert image.mode.startswith("I;16")
    out = build_transform(CFG, image_size=16)(image)  # what training sees = what convert("RGB") gives, every value
    assert torch.equal(out, build_transform(CFG, image_size=16)(image.convert("RGB")))


def test_transparent_images_are_counted_and_said(tmp_path):
    from hf_transfer.datacheck import describe_check

    Image.new("RGBA", (8, 8), (1, 2, 3, 0)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    report = check_images({"train": _file_dataset([tmp_path / "a.png", tmp_path / "b.png"])}, "image")
    assert report.bad == [] and report.transparent == 1
    assert "1 transparent images trained with their alpha dropped" in describe_check(report)


# ------------------------------------------------------------------------------------------- class sets
def test_validation_classes_absent_from_train(tmp_path):
    train = _write_classes(tmp_path / "train", ["cat", "dog"])
    val = _write_classes(tmp_path / "val", ["cat", "dog", "zebra"], per_class=2)
    with pytest.raises(TransferError, match="^validation has classes absent from train: zebra; every class must have training images$"):
        load_image_classification_data(train_dir=str(train), validation_dir=str(val))


def test_train_classes_absent_from_given_validation(tmp_path):
    train = _write_classes(tmp_path / "train", ["cat", "dog", "zebra"])
    val = _write_classes(tmp_path / "val", ["cat", "dog"], per_class=2)
    with pytest.raises(TransferError, match="train has classes absent from validation: zebra; .*drop --validation_dir"):
        load_image_classification_data(train_dir=str(train), validation_dir=str(val))


def test_case_only_class_names_and_empty_class_folders_warn(tmp_path):
    train = _write_classes(tmp_path / "train", ["Cat", "cat", "dog"])
    (train / "zebra").mkdir()
    data = load_image_classification_data(train_dir=str(train), validation_split=0.5)
    notes = " | ".join(data.notes)
    assert "differ only in case are separate classes: Cat vs cat" in notes
    assert "no images" in notes and "zebra" in notes
    assert "zebra" not in data.labels


def test_flat_folder_is_a_one_line_error(tmp_path):
    for i, img in enumerate(_digits(4)):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    with pytest.raises(TransferError, match="has 4 image\\(s\\) directly in it .* and no class sub-folders; it needs one sub-folder per class"):
        load_image_classification_data(train_dir=str(tmp_path))


def test_loose_images_beside_class_folders_are_refused(image_folder):
    Image.fromarray(_digits(1)[0]).save(image_folder / "stray.png")
    with pytest.raises(TransferError, match="image\\(s\\) directly in it \\(stray.png\\) besides its class sub-folders"):
        load_image_classification_data(train_dir=str(image_folder))


def test_image_column_equal_to_label_column_is_refused():
    with pytest.raises(TransferError, match="'label' would be both the image and the label column") as info:
        load_image_classification_data("embedded:digits", image_column_name="label")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------- stratified subsets
def test_max_train_samples_keeps_every_class():
    data = load_image_classification_data("embedded:mnist", max_train_samples=20)
    assert len(data.splits["train"]) == 20
    assert sorted(set(data.splits["train"]["label"])) == list(range(10))


def test_max_eval_samples_keeps_every_class_of_a_given_validation_folder(tmp_path):
    train = _write_classes(tmp_path / "train", ["a", "b", "c"])
    val = _write_classes(tmp_path / "val", ["a", "b", "c"], per_class=4)  # imagefolder lists them class by class
    data = load_image_classification_data(train_dir=str(train), validation_dir=str(val), max_eval_samples=3)
    assert sorted(data.splits["validation"]["label"]) == [0, 1, 2]


def test_max_train_samples_below_the_class_count_is_refused():
    with pytest.raises(TransferError, match="--max_train_samples 5 is smaller than the 10 classes present.*at least --max_train_samples 10"):
        load_image_classification_data("embedded:mnist", max_train_samples=5)


def test_unknown_on_bad_image_is_refused():
    with pytest.raises(TransferError, match="--on_bad_image 'ignore'"):
        load_image_classification_data("embedded:digits", on_bad_image="ignore")


def test_data_arguments_pass_on_bad_image_and_the_pixel_limit(messy_folder):
    from hf_transfer.arguments import DataArguments

    data = DataArguments(train_dir=str(messy_folder), on_bad_image="skip", max_image_pixels=20_000).load(seed=0)
    assert Image.MAX_IMAGE_PIXELS == 20_000  # restored by the fixture's monkeypatch
    assert "huge.png" not in " ".join(b["path"] for b in data.bad_images) and len(data.bad_images) == 4
