"""One fast pass over every image of a dataset before any model is loaded: find every unreadable file at once.

Without it a corrupt image is found mid-training, one at a time, after minutes of work. The check reads
`datasets.Image(decode=False)` cells (``{"bytes", "path"}``) and, per image:

* zero-byte and missing files, and cells with neither bytes nor path: caught without opening anything;
* not an image (text, HTML error pages, unknown formats): caught by ``Image.open`` (header only);
* over PIL's pixel limit: ``Image.open`` raises `DecompressionBombError` above twice ``Image.MAX_IMAGE_PIXELS``,
  and training would fail on it; between the limit and twice the limit PIL only warns, so those images are
  reported as ``oversized`` (a note), not as bad;
* PNG: ``verify()`` walks every chunk to ``IEND`` and checks each CRC without inflating the pixels, so a
  truncated file or flipped bytes are caught; a zlib stream that is invalid under a correct CRC (only a buggy
  writer makes one) is not;
* JPEG: the file must end with the end-of-image marker (``FF D9``, trailing padding allowed); a truncated JPEG
  has none. Files with other data after the marker are decoded at 1/8 scale (``draft``) to be sure. Damage
  inside the entropy-coded data that libjpeg recovers from (grey blocks) is not caught; PIL loads such images
  in training too;
* every other format (GIF, BMP, TIFF, WebP, ...): a full decode (``load()``), so nothing is missed, at the
  cost of decoding; these formats are rare in image datasets.
* 16-bit, 32-bit and float images (rare): decoded, and refused when their values do not fit 0..255, since
  ``convert("RGB")`` (training's decode, as ``pipeline()``'s) would clip them; transparent images are counted
  (their alpha is dropped in training as in serving).

Measured on a shared 2-core CPU (bench/bench_datacheck.py, bench/results/datacheck.json): ~14,600 images/s for
MNIST-5k as PNG files in a folder, ~27,000/s for the same PNGs inside Arrow, ~8,900/s for 1024x768 JPEG files:
10k images take about a second.
"""

from __future__ import annotations

import io
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass, field

from .errors import TransferError
from .runtime import progress

JPEG_FORMATS = ("JPEG", "MPO")
SHOWN_IN_MESSAGE = 5  # bad files named in a one-line error; the full list goes to bad_images.json
_BATCH = 1024


@dataclass
class BadImage:
    """One image the check flagged: where it is (split and row, plus its file when it has one) and why."""

    split: str
    row: int
    path: str | None
    reason: str

    def name(self, root: str | None = None) -> str:
        if self.path is None:
            return f"row {self.row}"
        return os.path.relpath(self.path, root) if root else self.path


@dataclass
class DataCheckReport:
    """What `check_images` found: images checked per split, the bad ones, and how long it took."""

    images: dict[str, int] = field(default_factory=dict)
    bad: list[BadImage] = field(default_factory=list)
    oversized: list[BadImage] = field(default_factory=list)  # load, but over Image.MAX_IMAGE_PIXELS (PIL warns)
    seconds: float = 0.0
    sampled: dict[str, int] = field(default_factory=dict)  # split -> images checked, where only a sample was
    cached: bool = False  # read back from the cache: this process checked nothing
    transparent: int = 0  # images with an alpha channel: trained with it dropped, as pipeline() serves them

    @property
    def total(self) -> int:
        return sum(self.images.values())

    @property
    def images_per_second(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else float("inf")

    def bad_rows(self, split: str) -> set[int]:
        return {b.row for b in self.bad if b.split == split}

    def bad_as_dicts(self) -> list[dict]:
        return [asdict(b) for b in self.bad]

    def to_dict(self) -> dict:
        return {"images": self.images, "bad": self.bad_as_dicts(), "oversized": [asdict(b) for b in self.oversized],
                "seconds": self.seconds, "sampled": self.sampled, "transparent": self.transparent}

    @classmethod
    def from_dict(cls, payload: dict) -> "DataCheckReport":
        return cls(images=dict(payload["images"]), bad=[BadImage(**b) for b in payload["bad"]],
                   oversized=[BadImage(**b) for b in payload["oversized"]], seconds=float(payload["seconds"]),
                   sampled=dict(payload.get("sampled", {})), transparent=int(payload.get("transparent", 0)), cached=True)


# ------------------------------------------------------------------------------------------- one image
def _open_source(cell: dict):
    """-> (file-like or path, None) or (None, reason) for cells that need no opening to be found bad."""
    data, path = cell.get("bytes"), cell.get("path")
    if data is not None:
        return (io.BytesIO(data), None) if len(data) else (None, "zero bytes")
    if not path:
        return None, "no bytes and no path"
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return None, "missing file"
    except OSError as err:
        return None, f"unreadable ({err.strerror or err})"
    return (path, None) if size else (None, "zero bytes")


def _ends_with_jpeg_marker(fp) -> bool:
    fp.seek(0, os.SEEK_END)
    end = fp.tell()
    fp.seek(max(0, end - 64))
    return fp.read().rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9")


def _read_fully(image) -> None:
    """The cheapest read that still reaches the end of the image data (see the module docstring)."""
    if image.format == "PNG":
        image.verify()
    elif image.format in JPEG_FORMATS:
        if _ends_with_jpeg_marker(image.fp):
            return
        # No marker at the end: truncated, or extra data after the image (some cameras append some). Decoding at
        # 1/8 scale reads all the entropy-coded data and tells the two apart.
        image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
    else:
        image.load()


def _oversize_reason(err: Exception, limit: int | None) -> str:
    found = re.search(r"\((\d+) pixels\)", str(err))
    pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return f"{pixels}, over twice PIL's MAX_IMAGE_PIXELS of {limit:,}" if limit else pixels


def _reason_from_error(err: Exception) -> str:
    text = str(err)
    if "truncated" in text.lower():
        return "truncated"
    return f"corrupt ({type(err).__name__}: {text})" if text else f"corrupt ({type(err).__name__})"


def inspect_image(cell: dict) -> tuple[str | None, int]:
    """An undecoded image cell -> (why it is bad, or None; its pixel count, 0 when unknown)."""
    reason, pixels, _ = _inspect(cell)
    return reason, pixels


def _has_alpha(image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _inspect(cell: dict) -> tuple[str | None, int, bool]:
    """`inspect_image`, plus whether the image is transparent (trained, like served, with its alpha dropped)."""
    from PIL import Image, UnidentifiedImageError

    from .transforms import clipped_by_rgb, is_high_depth

    source, reason = _open_source(cell)
    if reason:
        return reason, 0, False
    pixels, transparent, high_depth = 0, False, False
    try:
        with Image.open(source) as image:
            pixels = image.width * image.height
            transparent, high_depth = _has_alpha(image), is_high_depth(image.mode)
            _read_fully(image)
        if high_depth:  # rare: decode it and look at its values (verify() leaves a PNG unusable, so reopen)
            if hasattr(source, "seek"):
                source.seek(0)
            with Image.open(source) as image:
                reason = clipped_by_rgb(image)
    except Image.DecompressionBombError as err:
        return _oversize_reason(err, Image.MAX_IMAGE_PIXELS), 0, False
    except UnidentifiedImageError:
        return "not an image", 0, False
    except Exception as err:  # noqa: BLE001 - PIL plugins raise many types on bad data; training would fail on any
        return _reason_from_error(err), pixels, False
    return reason, pixels, transparent


# ------------------------------------------------------------------------------------------- datasets
def _image_cells(split, image_column: str):
    """Yield (row, cell) for every row, undecoded, in batches (no whole column held in memory)."""
    from datasets import Image

    cells = split.select_columns([image_column]).cast_column(image_column, Image(decode=False))
    row = 0
    for batch in cells.iter(batch_size=_BATCH):
        for cell in batch[image_column]:
            yield row, cell or {}
            row += 1


def check_images(splits, image_column: str, sample: int | None = None, seed: int = 0) -> DataCheckReport:
    """Check every image of every split (a `datasets.DatasetDict`, or a dict of `Dataset`) and report them all.
    ``sample``: at most that many rows per split, drawn at random with ``seed`` (rows keep their numbers)."""
    from PIL import Image

    report = DataCheckReport()
    start = time.perf_counter()
    with warnings.catch_warnings():
        # Over the limit but under twice it, PIL warns once per image; the report collects them instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        bar = progress(total=sum(len(split) if sample is None else min(sample, len(split)) for split in splits.values()), desc="checking images", unit="img")
        for split_name, split in splits.items():
            length, rows = len(split), sampled_rows(len(split), sample, seed)
            if rows is not None:
                report.sampled[split_name] = len(rows)
                split = split.select(rows)
            for row, cell in _image_cells(split, image_column):
                bar.update()
                row = rows[row] if rows is not None else row
                reason, pixels, transparent = _inspect(cell)
                report.transparent += transparent
                entry = BadImage(split_name, row, cell.get("path"), reason or "")
                if reason:
                    report.bad.append(entry)
                elif Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
                    entry.reason = f"{pixels:,} pixels, over PIL's MAX_IMAGE_PIXELS of {Image.MAX_IMAGE_PIXELS:,}"
                    report.oversized.append(entry)
            report.images[split_name] = length
        bar.close()
    report.seconds = time.perf_counter() - start
    return report


# ------------------------------------------------------------------------------------------- messages
def _common_root(entries: list[BadImage]) -> str | None:
    paths = [e.path for e in entries if e.path]
    if not paths:
        return None
    try:
        return os.path.commonpath([os.path.dirname(p) for p in paths])
    except ValueError:  # mixed drives or relative and absolute paths
        return None


def describe(entries: list[BadImage], limit: int = SHOWN_IN_MESSAGE) -> str:
    """'in train (under /data/train: cat/a.png: zero bytes; ...)': at most ``limit`` names, then "and N more"."""
    splits = list(dict.fromkeys(e.split for e in entries))
    per_split = ", ".join(f"{sum(e.split == s for e in entries)} in {s}" for s in splits)
    root = _common_root(entries)
    shown = "; ".join(
        (f"{e.split} " if len(splits) > 1 else "") + f"{e.name(root)}: {e.reason}" for e in entries[:limit]
    )
    if len(entries) > limit:
        shown += f"; and {len(entries) - limit} more"
    where = f"under {root}: " if root else ""
    return f"{per_split if len(splits) > 1 else 'in ' + splits[0]} ({where}{shown})"


def bad_images_error(report: DataCheckReport) -> TransferError:
    n = len(report.bad)
    fix = "fix or remove them, or pass --on_bad_image skip to train without them"
    if any("convert('RGB')" in b.reason for b in report.bad):
        fix += (" (high-depth images: save them as 8-bit, scaled by their range, and serve them the same way; "
                "pipeline() would clip them as they are)")
    if any("MAX_IMAGE_PIXELS" in b.reason for b in report.bad):
        fix += " (or raise PIL's limit for the oversized ones with --max_image_pixels)"
    return TransferError(f"{n} unreadable image{'s' if n != 1 else ''} {describe(report.bad)}; {fix}")


def drop_bad_images(splits, report: DataCheckReport):
    """The splits without the flagged rows (same type as given)."""
    out = {}
    for name, split in splits.items():
        bad = report.bad_rows(name)
        out[name] = split.select([i for i in range(len(split)) if i not in bad]) if bad else split
    return type(splits)(out)


# ------------------------------------------------------------------------------------------- at scale
DATA_CHECK_MODES = ("full", "sample", "off")
SAMPLE_IMAGES = 10_000  # per split in `--data_check sample`: ~1-2 s of checking, whatever the dataset's size
CHECK_FORMAT = 2  # bump when what the check catches changes: cached results then stop matching
CACHE_ENV = "HF_TRANSFER_DATACHECK_CACHE"


def sampled_rows(length: int, sample: int | None, seed: int = 0) -> list[int] | None:
    """Sorted random rows to check (None: all of them)."""
    import random

    if sample is None or length <= sample:
        return None
    return sorted(random.Random(seed).sample(range(length), sample))


def check_cache_dir() -> str:
    """Where data-check results are kept: $HF_TRANSFER_DATACHECK_CACHE, else beside `datasets`' cache."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return explicit
    from datasets import config

    return os.path.join(str(config.HF_DATASETS_CACHE), "hf_transfer_datacheck")


def check_key(splits, image_column: str, mode: str) -> str | None:
    """What a check's result depends on: each split's `datasets` fingerprint (fingerprint.py: its data files with
    their modification times, or its content, never re-read here), the column, the mode, PIL's pixel limit and the
    check's own version. None when a split has no fingerprint (not a `datasets.Dataset`): then no cache."""
    import hashlib
    import json

    from PIL import Image

    from .fingerprint import split_fingerprint

    try:
        prints = {name: split_fingerprint(split) for name, split in splits.items()}
    except (ValueError, TypeError):
        return None
    payload = {"splits": prints, "column": image_column, "mode": mode, "format": CHECK_FORMAT,
               "sample": SAMPLE_IMAGES if mode == "sample" else None, "max_pixels": Image.MAX_IMAGE_PIXELS}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def checked_images(splits, image_column: str, mode: str = "full", cache_dir: str | None = None) -> DataCheckReport | None:
    """The data check as a run needs it: ``full`` (every image), ``sample`` (`SAMPLE_IMAGES` per split) or ``off``
    (None). The result is cached by the splits' fingerprints, and one process per cache folder runs it: the others
    wait on a file lock and read the result (on one machine: once per node, not once per rank; on a shared cache
    folder: once for all nodes). A rerun on the same data reads it back in milliseconds."""
    import json

    from filelock import FileLock

    if mode not in DATA_CHECK_MODES:
        raise TransferError(f"--data_check {mode!r} is not understood; use {', '.join(DATA_CHECK_MODES)}")
    if mode == "off":
        return None
    sample = SAMPLE_IMAGES if mode == "sample" else None
    key = check_key(splits, image_column, mode)
    if key is None:
        return check_images(splits, image_column, sample=sample)
    folder = cache_dir or check_cache_dir()
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:  # a read-only cache: check here, keep nothing
        return check_images(splits, image_column, sample=sample)
    path = os.path.join(folder, f"{key}.json")
    with FileLock(path + ".lock"):
        if os.path.isfile(path):
            try:
                with open(path) as handle:
                    return DataCheckReport.from_dict(json.load(handle))
            except (OSError, ValueError, KeyError, TypeError):
                pass  # a damaged entry: check again and replace it
        report = check_images(splits, image_column, sample=sample)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as handle:
            json.dump(report.to_dict(), handle)
        os.replace(tmp, path)
    return report


def describe_check(report: DataCheckReport | None) -> str:
    """One line on what the check covered (a sample, the cache), for the run's log."""
    if report is None:
        return "data check off (--data_check off): unreadable images stop training when reached"
    checked = sum(report.sampled.get(name, n) for name, n in report.images.items())
    where = " (cached result: the data has not changed since it was checked)" if report.cached else ""
    alpha = (f"; {report.transparent:,} transparent images trained with their alpha dropped, as pipeline() serves "
             "them (composite them on a background yourself if the hidden colours are noise)") if report.transparent else ""
    if report.sampled:
        return (f"data check on a random sample: {checked:,} of {report.total:,} images in {report.seconds:.1f} s{where}; "
                f"unreadable images outside it stop training when reached (--data_check full checks them all){alpha}")
    return f"data check: {report.total:,} images in {report.seconds:.1f} s{where}{alpha}"
