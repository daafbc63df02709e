"""`--streaming`: train from a `datasets.IterableDataset` (a Hub dataset, or local parquet / arrow / image folders)
that is read as it trains, never downloaded or indexed whole.

What changes against the map-style path, and why:

* the length is unknown, so the run is `--max_steps` long; flags that need the length or every label (epoch
  schedules, `--max_train_samples`, balanced classes, `--strategy auto`) are refused in one line;
* training rows come through `IterableDataset.shuffle` with a buffer (`SHUFFLE_BUFFER` rows; the shard order
  is shuffled too), re-seeded every epoch by the Trainer;
* validation is a map-style `Dataset`: the first `--max_eval_samples` (default `EVAL_ROWS`) rows of the source's
  validation split, or, without one, of the training stream, whose rows with those images are then filtered out;
* the data check is a sample: the first `datacheck.SAMPLE_IMAGES` streamed training rows plus the validation
  rows; an unreadable image further in the stream stops training when reached (said in the log);
* under DDP each process reads and decodes its own share: the Trainer's loader is built with
  ``dispatch_batches=False`` and accelerate hands each process `IterableDataset.shard` of the stream (or every
  N-th batch slice when it has fewer shards than processes). `datasets.distributed.split_dataset_by_node` on
  top would split the stream twice (half the data unused on 2 processes), so it is not applied here.
"""

from __future__ import annotations

from .errors import TransferError

SHUFFLE_BUFFER = 10_000  # rows held for shuffling (bytes or paths, not pixels: tens of MiB for JPEG bytes)
EVAL_ROWS = 1_000  # validation rows taken from the start of the stream when the source has no validation split


def streaming_refusal(data_args, training_args, transfer_args) -> str | None:
    """The first flag `--streaming` cannot honour, as a one-line error message; None when there is none."""
    if not training_args.max_steps or training_args.max_steps <= 0:
        return ("--streaming reads a dataset of unknown length: give the run's length with --max_steps N "
                "(--num_train_epochs needs the length)")
    from .strategies import needs_advisor

    if needs_advisor(transfer_args.strategy):
        return ("--strategy auto needs the whole dataset (the advisor measures it), which --streaming does not read; "
                "name a strategy")
    config = transfer_args.to_config(training_args)
    needs_length = [
        ("--max_train_samples", data_args.max_train_samples is not None, "take the first rows with --max_steps"),
        ("an epoch-based schedule (--strategy lp_ft, --lp_epochs, --gradual_unfreeze_epochs)",
         config.first_body_epoch() > 0, "use a strategy that trains from the first step (full, partial, lora)"),
        ("--class_weighting balanced", config.class_weighting != "none", "drop it"),
        ("--sampler balanced", config.sampler != "random", "drop it"),
        ("--on_bad_image skip", data_args.on_bad_image == "skip", "the stream cannot drop rows it has not read; "
                                                                   "use --on_bad_image error"),
    ]
    for flag, given, fix in needs_length:
        if given:
            return f"{flag} needs the whole dataset (its length or every label), which --streaming does not read; {fix}"
    if data_args.validation_dir or data_args.test_dir:
        return "--streaming takes one source (--dataset_name or --train_dir); drop --validation_dir/--test_dir"
    return None


def _open_stream(data_args, model_args):
    """-> (IterableDatasetDict, source name)."""
    import datasets

    cache_dir = model_args.cache_dir if model_args else None
    token = model_args.token if model_args else None
    try:
        if data_args.train_dir:
            return (datasets.load_dataset("imagefolder", data_dir=data_args.train_dir, streaming=True),
                    f"imagefolder:{data_args.train_dir}")
        name = data_args.dataset_name
        if not name or name.startswith("embedded:"):
            raise TransferError("--streaming needs --dataset_name (a Hub dataset or a local folder of parquet/arrow "
                                "files) or --train_dir; the embedded sets are small enough to load whole: drop "
                                "--streaming")
        return (datasets.load_dataset(name, data_args.dataset_config_name, streaming=True, cache_dir=cache_dir,
                                      token=token), name)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as err:
        raise TransferError(f"cannot stream dataset {data_args.dataset_name or data_args.train_dir!r} "
                            f"[{type(err).__name__}]; check the name, or the folder's data files") from None


def _cell_key(cell: dict) -> str:
    """An undecoded image cell's identity: its bytes' digest, else its file path."""
    import hashlib

    data = (cell or {}).get("bytes")
    return hashlib.sha1(data).hexdigest() if data is not None else str((cell or {}).get("path"))


def _rows(stream, count: int):
    """The first ``count`` rows of ``stream`` as a map-style `Dataset` (same features)."""
    from datasets import Dataset

    rows = list(stream.take(count))
    return Dataset.from_list(rows, features=stream.features)


def load_streaming_data(data_args, seed: int, model_args=None):
    """`ImageClassificationData` whose ``train`` split is a shuffled `IterableDataset` and whose ``validation``
    split is map-style (see the module docstring)."""
    from datasets import ClassLabel, Image

    from .data import IMAGE_COLUMN_CANDIDATES, LABEL_COLUMN_CANDIDATES, ImageClassificationData, _detect_column
    from .datacheck import SAMPLE_IMAGES, bad_images_error, check_images, checked_images

    raw, source = _open_stream(data_args, model_args)
    if "train" not in raw:
        raise TransferError(f"dataset {source!r} has no 'train' split to stream (splits: {', '.join(raw)})")
    train = raw["train"]
    features = train.features
    if features is None:
        raise TransferError(f"dataset {source!r} does not declare its features, so its classes are unknown before "
                            "reading it all; stream a dataset with a ClassLabel column, or drop --streaming")
    columns = list(features)
    image_col = _detect_column(columns, data_args.image_column_name, IMAGE_COLUMN_CANDIDATES, "image",
                               "--image_column_name", features)
    label_col = _detect_column(columns, data_args.label_column_name, LABEL_COLUMN_CANDIDATES, "label",
                               "--label_column_name", features, exclude=image_col)
    if not isinstance(features[label_col], ClassLabel):
        raise TransferError(f"label column {label_col!r} is {type(features[label_col]).__name__}, not a ClassLabel: "
                            "its classes are unknown until the whole stream is read; stream a dataset whose label "
                            "column is a ClassLabel, or drop --streaming")
    if not isinstance(features[image_col], Image):
        raise TransferError(f"image column {image_col!r} is {type(features[image_col]).__name__}, not an Image "
                            "feature; name the image column with --image_column_name")
    labels = [str(n) for n in features[label_col].names]
    if len(labels) < 2:
        raise TransferError(f"dataset {source!r} has {len(labels)} class in column {label_col!r}; a classifier needs "
                            "at least two")
    keep = [image_col, label_col]
    train = train.select_columns(keep).cast_column(image_col, Image(decode=False))
    eval_rows = data_args.max_eval_samples or EVAL_ROWS
    eval_name = next((n for n in ("validation", "valid", "val", "dev") if n in raw), None)
    notes = []
    if eval_name is not None:
        held_out = raw[eval_name].select_columns(keep).cast_column(image_col, Image(decode=False))
        validation = _rows(held_out, eval_rows)
        notes.append(f"streaming: validation is the first {len(validation):,} rows of the {eval_name!r} split")
    else:
        validation = _rows(train, eval_rows)
        # Filtered by content, not `skip(n)`: once the stream is sharded across processes, each shard skips its own
        # share of n rows, so some held-out rows would be trained on (and other rows never seen).
        held_out = {_cell_key(cell) for cell in validation[image_col]}
        train = train.filter(lambda batch: [_cell_key(c) not in held_out for c in batch[image_col]], batched=True)
        notes.append(f"streaming: no validation split; the first {len(validation):,} streamed images are held out for "
                     "validation (any row with the same image is not trained on)")
    mode = data_args.data_check
    report = None
    if mode != "off":
        # The stream's head plus the validation rows: the only rows known before training reads them.
        head = {"train": _rows(train, SAMPLE_IMAGES), "validation": validation}
        # Rows that carry their bytes have a content fingerprint: checked once per node (`checked_images`' cache
        # and lock), like the map-style check. Rows that only name files are checked each time (an edited file
        # keeps its path).
        with_bytes = all(split.with_format("arrow")[image_col].combine_chunks().field("bytes").null_count == 0
                         for split in head.values())
        report = checked_images(head, image_col, "full") if with_bytes else check_images(head, image_col)
        if report.bad:
            raise bad_images_error(report)
        notes.append(f"data check on the first {report.images.get('train', 0):,} streamed training images and "
                     f"{len(validation):,} validation images in {report.seconds:.1f} s"
                     f"{' (cached result)' if report.cached else ''}; unreadable images further in "
                     "the stream stop training when reached")
    train = train.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER)
    notes.append(f"streaming {source}: training rows shuffled in a buffer of {SHUFFLE_BUFFER:,} rows (and the shard "
                 "order), re-seeded each pass over the stream")
    splits = {"train": train, "validation": validation}
    return ImageClassificationData(splits, image_col, label_col, labels, source, None, notes, [], report)


def split_size(split) -> str:
    """A split's size for the log: its length, or "streamed" when it has none."""
    try:
        return f"{len(split):,}"
    except TypeError:
        return "streamed"
