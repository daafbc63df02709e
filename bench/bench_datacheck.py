#!/usr/bin/env python
"""Throughput of the data check (`hf_transfer.datacheck.check_images`), written to bench/results/datacheck.json.

Two cases, on the embedded default set (MNIST-5k, 28x28 grey):

* ``image_folder``: the 5,000 images written as PNG files in train/<class>/ on disk, loaded with
  `load_image_classification_data(train_dir=...)` (the case users have); the check opens every file;
* ``in_memory_arrow``: the Arrow copy of the embedded set (PNG bytes inside the table), checked directly;
* ``photo_jpegs``: ``--photos`` 1024x768 JPEG files (scikit-image's coffee photo, resized), 2 classes: the
  photo-sized case, where the check reads the header and the file's end marker, not the pixels.

Each case is timed ``--repeats`` times; the best and median images/s are reported (the first folder pass pays
for a cold page cache only on a fresh machine; files written just before are usually cached).

    PYTHONPATH=. HF_HUB_OFFLINE=1 python bench/bench_datacheck.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_image_folder(dataset, root: Path) -> int:
    """The embedded set's PNG bytes as train/<class>/<i>.png files (no re-encoding)."""
    from datasets import Image

    names = dataset.features["label"].names
    cells = dataset.cast_column("image", Image(decode=False))
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(cells):
        (root / names[row["label"]] / f"{i}.png").write_bytes(row["image"]["bytes"])
    return len(cells)


def write_photo_folder(root: Path, count: int) -> None:
    from PIL import Image
    from skimage.data import coffee

    photo = Image.fromarray(coffee()).resize((1024, 768))
    for i in range(count):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        photo.rotate(i % 360).save(folder / f"{i}.jpg", quality=90)


def timed_checks(check, repeats: int) -> dict:
    rates, seconds, images = [], [], 0
    for _ in range(repeats):
        report = check()
        assert not report.bad, report.bad[:3]
        images = report.total
        rates.append(report.images_per_second)
        seconds.append(report.seconds)
    return {"images": images, "best_images_per_second": round(max(rates)), "median_images_per_second": round(statistics.median(rates)),
            "best_seconds": round(min(seconds), 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "datacheck.json"))
    args = parser.parse_args()

    from datasets import DatasetDict

    from hf_transfer.data import embedded_dataset, load_image_classification_data
    from hf_transfer.datacheck import check_images

    arrow = embedded_dataset("embedded:mnist")
    results = {"dataset": "embedded:mnist (5,000 28x28 grey PNGs)", "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "train"
        write_image_folder(arrow, folder)
        splits = load_image_classification_data(train_dir=str(folder), check_images=False).splits  # untimed: Arrow index
        load_start = time.perf_counter()
        loaded = load_image_classification_data(train_dir=str(folder))  # the check as users get it, inside loading
        results["image_folder_load_seconds_with_check"] = round(time.perf_counter() - load_start, 2)
        results["image_folder_check_seconds_inside_load"] = round(loaded.check.seconds, 3)
        results["image_folder"] = timed_checks(lambda: check_images(splits, "image"), args.repeats)
        photos = Path(tmp) / "photos"
        write_photo_folder(photos, args.photos)
        photo_splits = load_image_classification_data(train_dir=str(photos), check_images=False).splits
        results["photo_jpegs"] = timed_checks(lambda: check_images(photo_splits, "image"), args.repeats)
    results["in_memory_arrow"] = timed_checks(lambda: check_images(DatasetDict({"train": arrow}), "image"), args.repeats)
    results["machine"] = {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
