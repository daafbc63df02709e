"""Image datasets: Hub names, local image folders and embedded sets; validation, splits, transforms.

Everything returns a `datasets.DatasetDict` with ``train`` and ``validation`` splits (plus ``test`` when the
source has one), an image column and a `ClassLabel` label column whose names become the model's labels.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .embedded_data import DEFAULT_DATASET, EMBEDDED_DATASETS, EMBEDDED_PREFIX, embedded_dataset  # noqa: F401 (public here)
from .errors import TransferError

ON_BAD_IMAGE = ("error", "skip")
BAD_IMAGES_FILE = "bad_images.json"
IMAGE_COLUMN_CANDIDATES = ("image", "img", "pixel_values", "picture", "photo")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "fine_label", "class", "target", "category")


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
    # Images dropped by --on_bad_image skip: {"split", "row", "path", "reason"}; row counts in the split as loaded.
    bad_images: list[dict] = field(default_factory=list)
    check: "DataCheckReport | None" = None  # noqa: F821 - the data check's report; None when it did not run
    # Splits that are row subsets of one larger split (cross-validation folds): the image store decodes that split
    # once for all of them (`fastdata.SubsetImageStore`); None for ordinary data.
    subset_store: "SubsetImageStore | None" = None  # noqa: F821

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    def write_bad_images(self, folder: str | os.PathLike) -> Path | None:
        """Write the skipped images to ``folder/bad_images.json`` (none skipped: nothing written, None returned)."""
        import json

        if not self.bad_images:
            return None
        path = Path(folder) / BAD_IMAGES_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.bad_images, indent=2) + "\n")
        return path


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
    """-> (DatasetDict, source description, suggested image size, notes about the folder layout)."""
    import datasets

    if train_dir or validation_dir or test_dir:
        if not train_dir:
            raise TransferError("--validation_dir/--test_dir given without --train_dir; pass the training image folder too")
        files, notes = {}, []
        for split, folder in (("train", train_dir), ("validation", validation_dir), ("test", test_dir)):
            if folder is None:
                continue
            if not Path(folder).is_dir():
                raise TransferError(f"image folder {folder!r} does not exist; check --{split}_dir")
            if split != "train" and Path(folder).resolve() == Path(train_dir).resolve():
                raise TransferError(f"--{split}_dir {folder!r} is the --train_dir folder: its score would be the training "
                                    f"score; pass a folder of other images, or drop --{split}_dir to hold out part of "
                                    "the training images")
            notes += _check_class_folders(folder, min_classes=2 if split == "train" else 1)
            files[split] = folder
        raw = _load_image_folders(files, cache_dir)
        return raw, f"imagefolder:{train_dir}", None, notes
    name = dataset_name or DEFAULT_DATASET
    if name.startswith(EMBEDDED_PREFIX):
        key = name[len(EMBEDDED_PREFIX):]
        ds = embedded_dataset(name)
        return datasets.DatasetDict({"train": ds}), name, EMBEDDED_DATASETS[key].suggested_image_size, []
    if Path(name).is_dir() and not any(Path(name).glob("*.py")):
        # A plain local folder given as a dataset name: either saved with save_to_disk, or images by class.
        if (Path(name) / "dataset_dict.json").exists() or (Path(name) / "dataset_info.json").exists():
            raw = datasets.load_from_disk(name)
            return (raw if isinstance(raw, datasets.DatasetDict) else datasets.DatasetDict({"train": raw})), name, None, []
        notes = _check_class_folders(name)
        # data_dir (not data_files): imagefolder then finds train/validation/test sub-folders as splits
        return _load_image_folders({"": name}, cache_dir), f"imagefolder:{name}", None, notes
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
    return raw, name, None, []


def _load_image_folders(folders: dict[str, str], cache_dir: str | None):
    """``{split: folder}`` (``{"": folder}``: one folder whose sub-folders may name the splits) -> imagefolder's
    `DatasetDict`; an unchanged set of folders is read back from disk (`folder_table`: no per-file resolution of
    data files on a warm start)."""
    import datasets

    from .folder_table import load_folders_cached

    def build():
        if "" in folders:
            return datasets.load_dataset("imagefolder", data_dir=folders[""], cache_dir=cache_dir)
        return datasets.load_dataset("imagefolder", data_files={k: _folder_files(f) for k, f in folders.items()},
                                     cache_dir=cache_dir)

    with _no_download_bars():
        return load_folders_cached(folders, build, cache_dir)[0]


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


@contextlib.contextmanager
def _no_download_bars():
    """datasets shows "Downloading data", "Generating split" and "Saving" bars while it indexes a local image folder
    and keeps the table: nothing is downloaded, and the data check right after shows the real pass over the images."""
    from datasets.utils import disable_progress_bars, enable_progress_bars, are_progress_bars_disabled

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def _other_label_columns(train, image_col: str, label_col: str) -> list[str]:
    """A note when the label column was picked among several that could be labels (CIFAR-100's coarse_label and
    fine_label): the choice is said, with the flag that changes it."""
    from datasets import ClassLabel

    others = [c for c in train.column_names if c not in (image_col, label_col) and (
        c in LABEL_COLUMN_CANDIDATES or "label" in c.lower() or isinstance(train.features[c], ClassLabel))]
    if not others:
        return []
    return [f"label column {label_col!r} chosen; {', '.join(repr(c) for c in others)} could be labels too: pass "
            "--label_column_name to train on another"]


def _check_metadata_labels(raw, image_col: str, label_col: str) -> None:
    """An imagefolder whose metadata.csv labels contradict its class folders is ambiguous: refuse rather than pick."""
    from datasets import ClassLabel

    for name, split in raw.items():
        if label_col not in split.column_names:
            continue
        feature = split.features[label_col]
        names = feature.names if isinstance(feature, ClassLabel) else None
        # Read from Arrow (paths of the undecoded image cells, label ids), not row by row through Python dicts.
        paths = split.with_format("arrow")[image_col].combine_chunks().field("path").to_pylist()
        values = _column_array(split, label_col)
        rows = [(os.path.basename(os.path.dirname(path or "")), names[value] if names else str(value))
                for path, value in zip(paths, values.tolist())]
        folders, labels = {f for f, _ in rows}, {lab for _, lab in rows}
        if len(folders) < 2 or not folders <= labels:
            continue  # the folders are not named after the classes: nothing to contradict
        wrong = [(f, lab) for f, lab in rows if f != lab]
        if wrong:
            raise TransferError(f"{label_col!r} in metadata.csv contradicts the class folders for {len(wrong)} of "
                                f"{len(rows)} {name} images (e.g. one in {wrong[0][0]}/ labelled {wrong[0][1]!r}); fix "
                                "metadata.csv or move the images, so that both say the same class")


def _column_array(dataset, column: str) -> np.ndarray:
    """One column as a numpy array, read from Arrow (a selected split's row order kept)."""
    return dataset.with_format("arrow")[column].to_numpy()


def _folder_files(folder: str) -> str | list[str]:
    """imagefolder's data_files for ``folder``: a glob, or, when class folders are symbolic links (which the glob does
    not follow), every file listed through the links, so that each image keeps its class folder's name."""
    root = Path(folder)
    if not any(p.is_symlink() and p.is_dir() for p in root.rglob("*")):
        return os.path.join(folder, "**")
    return sorted(os.path.join(dirpath, name) for dirpath, _, names in os.walk(root, followlinks=True)
                  for name in names if not name.startswith("."))


def _check_class_folders(folder: str, min_classes: int = 2) -> list[str]:
    """Refuse layouts imagefolder would misread; -> notes about empty class folders (not classes at all)."""
    layout = f"it needs one sub-folder per class, e.g. {folder.rstrip('/')}/cat/*.jpg and {folder.rstrip('/')}/dog/*.jpg"
    loose = sorted(p.name for p in Path(folder).iterdir() if _is_image_file(p))
    classes = [d for d in sorted(Path(folder).iterdir()) if d.is_dir() and not d.name.startswith(".")]
    with_images = [d for d in classes if any(p.suffix.lower() in IMAGE_SUFFIXES for p in d.rglob("*"))]
    if loose:
        # imagefolder takes labels from parent folders; with images at the top it silently drops the labels.
        shown = ", ".join(loose[:3]) + (f" and {len(loose) - 3} more" if len(loose) > 3 else "")
        if not with_images:
            raise TransferError(f"image folder {folder!r} has {len(loose)} image(s) directly in it ({shown}) and no class "
                                f"sub-folders; {layout}")
        raise TransferError(f"image folder {folder!r} has {len(loose)} image(s) directly in it ({shown}) besides its class "
                            "sub-folders; move them into the folder of their class, or remove them")
    if len(with_images) < min_classes:
        raise TransferError(
            f"image folder {folder!r} has {len(with_images)} class folder(s) with images; "
            f"{layout} (at least {'two' if min_classes == 2 else 'one'})"
        )
    empty = [d.name for d in classes if d not in with_images]
    if empty:
        return [f"class folder(s) with no images in {folder}, not classes: {', '.join(empty)}"]
    return []


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


def _stratified_split(dataset, label_col: str, test_size: float | int, seed: int, *, what: str = "validation split",
                      fix: str = "add images to the rarest classes or pass a validation split (--validation_dir)"):
    """(train, held-out) with class proportions kept; scikit-learn on the label column is ~10x faster than
    `Dataset.train_test_split(stratify_by_column=...)` and gives the same guarantees. ``test_size`` is a share,
    or a number of images; ``what`` and ``fix`` word the error when scikit-learn cannot stratify."""
    from sklearn.model_selection import train_test_split

    labels = _column_array(dataset, label_col)
    try:
        train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=test_size, random_state=seed, stratify=labels)
    except ValueError as err:  # a class with a single image cannot be on both sides
        raise TransferError(f"cannot draw a stratified {what} ({err}); {fix}") from None
    # Shuffled order (as train_test_split returns it): a truncated split (max_eval_samples) keeps every class.
    return dataset.select(train_idx), dataset.select(test_idx)


def _stratified_subset(dataset, label_col: str, n: int, seed: int, flag: str):
    """At most ``n`` images with every class of ``dataset`` kept (class proportions as far as ``n`` allows)."""
    if n >= len(dataset):
        return dataset
    classes = len(np.unique(_column_array(dataset, label_col)))
    if n < classes:
        raise TransferError(f"{flag} {n} is smaller than the {classes} classes present, so some class would have no "
                            f"images; pass at least {flag} {classes}")
    _, subset = _stratified_split(dataset, label_col, n, seed, what=f"sample of {n} images",
                                  fix=f"raise {flag} or add images to the classes with a single one")
    return subset


# ---------------------------------------------------------------------------------------------- checks
def _run_data_check(splits, image_col: str, on_bad_image: str, notes: list[str], data_check: str = "full"):
    """The image check (`datacheck`): -> (splits without bad rows, the report, the bad rows as dicts); adds notes."""
    from datasets import Image

    from .datacheck import bad_images_error, checked_images, describe, describe_check, drop_bad_images
    from .runtime import say

    if not all(isinstance(s.features[image_col], Image) for s in splits.values()):
        return splits, None, []  # not an image feature (e.g. arrays): nothing to open before the transforms
    report = checked_images(splits, image_col, data_check)  # cached by fingerprint; once per node
    if report is None or report.cached or report.sampled:
        notes.append(describe_check(report))
    if report is None:
        return splits, None, []
    if report.oversized:
        n = len(report.oversized)
        notes.append(f"{n} image{'s' if n != 1 else ''} over PIL's pixel limit but under twice it (PIL loads them, with a warning) "
                     f"{describe(report.oversized)}; downscale them to train faster")
    if report.bad and on_bad_image == "error":
        raise bad_images_error(report)
    if report.bad:
        n = len(report.bad)
        say(f"skipped {n} unreadable image{'s' if n != 1 else ''} {describe(report.bad)}; "
            f"the full list goes to {BAD_IMAGES_FILE} in the output folder")
        splits = drop_bad_images(splits, report)
    return splits, report, report.bad_as_dicts()


def _present_labels(split, label_col: str) -> set[int]:
    ids = np.unique(_column_array(split, label_col).astype(np.int64))
    return set(ids[ids >= 0].tolist())  # -1: no label (hidden test labels on the Hub)


def _check_class_sets(splits, label_col: str, labels: list[str], eval_given_by: str | None) -> list[str]:
    """Compare the classes each split really has (imagefolder's `ClassLabel` is the union of all folders).

    -> notes; raises when a validation/test class has no training images, or, with ``--validation_dir``, when
    a training class has no validation images. ``eval_given_by`` names where validation came from (None: drawn).
    """
    present = {name: _present_labels(split, label_col) for name, split in splits.items() if label_col in split.column_names}
    names = lambda ids: ", ".join(labels[i] for i in sorted(ids))  # noqa: E731
    for name in ("validation", "test"):
        extra = present.get(name, set()) - present["train"]
        if extra:
            raise TransferError(f"{name} has classes absent from train: {names(extra)}; every class must have training images")
    notes = []
    missing = present["train"] - present.get("validation", present["train"])
    if missing and eval_given_by == "--validation_dir":
        raise TransferError(f"train has classes absent from validation: {names(missing)}; add validation images for them "
                            "or drop --validation_dir to draw a stratified split")
    if missing:
        notes.append(f"classes with no validation images (their accuracy is not measured): {names(missing)}")
    by_folded = {}
    for label in labels:
        by_folded.setdefault(label.casefold(), []).append(label)
    clashes = [" vs ".join(group) for group in by_folded.values() if len(group) > 1]
    if clashes:
        notes.append(f"class names that differ only in case are separate classes: {'; '.join(clashes)}; "
                     "merge their folders if they are one class")
    return notes


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
    on_bad_image: str = "error",
    check_images: bool = True,
    data_check: str = "full",
) -> ImageClassificationData:
    """Load, check and split an image classification dataset.

    Before anything else uses them, every image of every split is checked (`hf_transfer.datacheck`; embedded
    sets, generated from arrays, are not): with ``on_bad_image="error"`` all unreadable images are named in one
    `TransferError`; with ``"skip"`` their rows are dropped and listed in ``bad_images``. The classes each split
    really has are compared: a validation or test class without training images is an error.

    When the source has no validation split, a stratified one (``validation_split`` of train) is drawn with
    ``seed``; the same seed always gives the same split. ``max_train_samples`` / ``max_eval_samples`` draw
    stratified subsets, so every class stays.
    """
    from datasets import ClassLabel, DatasetDict

    if on_bad_image not in ON_BAD_IMAGE:
        raise TransferError(f"--on_bad_image {on_bad_image!r} is not understood; use {' or '.join(ON_BAD_IMAGE)}")
    raw, source, suggested, notes = _load_raw(dataset_name, dataset_config_name, train_dir, validation_dir, test_dir,
                                              cache_dir, token, trust_remote_code)
    if "train" not in raw:
        raise TransferError(f"dataset {source!r} has no 'train' split (splits: {', '.join(raw)}); pass a dataset with one")
    train = raw["train"]
    image_col = _detect_column(train.column_names, image_column_name, IMAGE_COLUMN_CANDIDATES, "image", "--image_column_name", train.features)
    label_col = _detect_column(train.column_names, label_column_name, LABEL_COLUMN_CANDIDATES, "label", "--label_column_name", train.features,
                               exclude=image_col)
    if image_col == label_col:
        raise TransferError(f"column {image_col!r} would be both the image and the label column; name two different columns "
                            f"with --image_column_name and --label_column_name (columns: {', '.join(train.column_names)})")
    if not label_column_name:
        notes += _other_label_columns(train, image_col, label_col)
    if source.startswith("imagefolder:"):
        _check_metadata_labels(raw, image_col, label_col)
    eval_name = next((n for n in ("validation", "valid", "val", "dev") if n in raw), None)
    renamed = {"validation" if name == eval_name else name: split for name, split in raw.items()}
    # Only these splits are used: checking or encoding others (e.g. "unsupervised") would be wasted work.
    splits = DatasetDict({name: split for name, split in renamed.items() if name in ("train", "validation", "test")})
    check, bad_images = None, []
    if check_images and not source.startswith(EMBEDDED_PREFIX):  # embedded sets are encoded from arrays: none is bad
        splits, check, bad_images = _run_data_check(splits, image_col, on_bad_image, notes, data_check)
    if not isinstance(train.features[label_col], ClassLabel):
        splits = _encode_labels(splits, label_col)
        notes.append(f"label column {label_col!r} encoded as {splits['train'].features[label_col].num_classes} classes")
    labels = [str(n) for n in splits["train"].features[label_col].names]
    if len(labels) < 2:
        raise TransferError(f"dataset {source!r} has {len(labels)} class in column {label_col!r}; a classifier needs at least two")
    eval_given_by = None if eval_name is None else ("--validation_dir" if validation_dir else "the dataset")
    notes += _check_class_sets(splits, label_col, labels, eval_given_by)
    if eval_name is None:
        if not 0.0 < validation_split < 1.0:
            raise TransferError(f"validation_split={validation_split} must be between 0 and 1 when the dataset has no validation split")
        splits["train"], splits["validation"] = _stratified_split(splits["train"], label_col, validation_split, seed)
        notes.append(f"no validation split: held out a stratified {validation_split:.0%} of train (seed {seed})")
    if max_train_samples is not None:
        splits["train"] = _stratified_subset(splits["train"], label_col, max_train_samples, seed, "--max_train_samples")
    if max_eval_samples is not None:
        splits["validation"] = _stratified_subset(splits["validation"], label_col, max_eval_samples, seed, "--max_eval_samples")
    keep = [image_col, label_col]
    splits = DatasetDict({k: s.select_columns(keep) for k, s in splits.items() if k in ("train", "validation", "test")})
    return ImageClassificationData(splits, image_col, label_col, labels, source, suggested, notes, bad_images, check)
