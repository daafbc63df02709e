"""The image-folder table kept by the folders' file list (hf_transfer/folder_table.py): a warm start reads it back
without datasets' per-file data-file resolution, with the same rows and fingerprint (so the data-check cache hits),
and any change to the files loads the folder afresh."""

import os

import numpy as np
import pytest
from PIL import Image

from hf_transfer.data import load_image_classification_data


def _folder(root, classes=("cat", "dog"), n=3):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), 40 * c + i, dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _load(root, cache):
    return load_image_classification_data(train_dir=str(root / "train"), validation_dir=str(root / "val"),
                                          cache_dir=str(cache))


@pytest.fixture
def folders(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TRANSFER_DATACHECK_CACHE", str(tmp_path / "check"))
    _folder(tmp_path / "train")
    _folder(tmp_path / "val", n=2)
    return tmp_path


def _paths(split):
    from datasets import Image as ImageFeature

    return [c["path"] for c in split.cast_column("image", ImageFeature(decode=False))["image"]]


def test_a_warm_start_reads_the_table_back_with_the_same_rows_and_check(folders, monkeypatch):
    import datasets

    cache = folders / "cache"
    first = _load(folders, cache)
    assert first.check is not None and not first.check.cached
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("datasets re-resolved the folder"))
    second = _load(folders, cache)
    assert second.check.cached  # the same datasets fingerprint: the data check is read back
    for name in ("train", "validation"):
        assert _paths(second.splits[name]) == _paths(first.splits[name])
        assert second.splits[name]["label"] == first.splits[name]["label"]
    assert second.labels == first.labels == ["cat", "dog"]
    # the kept table holds the files' paths, not copies of their bytes (save_to_disk embeds Image columns)
    paths = _paths(second.splits["train"]) + _paths(second.splits["validation"])
    assert all(os.path.isfile(p) and p.startswith(str(folders)) and "cache" not in p for p in paths)
    assert not any(c["bytes"] for c in second.splits["train"].cast_column("image", datasets.Image(decode=False))["image"])


@pytest.mark.parametrize("change", ["add", "edit", "remove"])
def test_any_change_to_the_files_loads_the_folder_afresh(folders, change):
    cache = folders / "cache"
    before = _load(folders, cache)
    target = folders / "train" / "dog" / "1.png"
    if change == "add":
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(folders / "train" / "dog" / "new.png")
    elif change == "edit":
        Image.fromarray(np.zeros((9, 9, 3), dtype=np.uint8)).save(target)
        os.utime(target, ns=(1, 1))
    else:
        target.unlink()
    after = _load(folders, cache)
    expected = {"add": 7, "edit": 6, "remove": 5}[change]
    assert len(after.splits["train"]) == expected
    assert not after.check.cached and before.check is not None  # checked again: the data changed


def test_a_folder_named_as_the_dataset_keeps_its_split_sub_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TRANSFER_DATACHECK_CACHE", str(tmp_path / "check"))
    _folder(tmp_path / "data" / "train", n=5)
    _folder(tmp_path / "data" / "test", n=2)
    for _ in range(2):  # built, then read back
        data = load_image_classification_data(str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"),
                                              validation_split=0.2)
        assert len(data.splits["test"]) == 4 and len(data.splits["train"]) + len(data.splits["validation"]) == 10
