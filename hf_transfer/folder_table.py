"""A local image folder's `datasets` table, kept on disk by the folder's file list: a warm start reads it back.

`datasets.load_dataset("imagefolder", ...)` caches the Arrow table it builds, but finds that cache again only
after resolving its data files: a glob and one `fs.info` per file, plus hidden-file filters, in Python (time
in proportion to the number of files, before any image is read). The table itself is small (paths and labels, no
pixels: about 65 bytes a row). So the first load's `DatasetDict` is written with `save_to_disk`, under a key
made from each folder's file list, sizes and modification times (`fingerprint.folder_fingerprint`, one
`os.scandir` pass), and later runs on the unchanged folders `load_from_disk` it (memory-mapped). A `datasets`
fingerprint travels with the saved table, so the data-check cache keyed by it stays valid across both paths.
Any added, removed, renamed or edited file changes the key: the folders are then loaded afresh.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

TABLE_VERSION = "2"  # bump when what is stored changes
IMAGE_COLUMNS = "image_columns.json"  # the Image columns, stored as plain structs; written last


def table_cache_dir(cache_dir: str | None) -> Path:
    """Beside `datasets`' own cache (``cache_dir`` when the run names one)."""
    from datasets import config

    return Path(cache_dir or config.HF_DATASETS_CACHE) / "hf_transfer_folders"


def folders_key(folders: dict[str, str]) -> str:
    """``{split: folder}`` -> a key that changes with any file of any folder, or with the `datasets` version."""
    import datasets

    from .fingerprint import folder_fingerprint

    digest = hashlib.sha256(f"{TABLE_VERSION}:{datasets.__version__}".encode())
    for split, folder in sorted(folders.items()):
        digest.update(f"\n{split}\0{Path(folder).resolve()}\0{folder_fingerprint(folder)}".encode())
    return digest.hexdigest()[:32]


def _image_columns(raw) -> list[str]:
    from datasets import Image

    return sorted({name for split in raw.values() for name, feature in split.features.items()
                   if isinstance(feature, Image)})


def _cast_columns(raw, columns: list[str], feature):
    from datasets import DatasetDict

    out = {}
    for name, split in raw.items():
        for column in columns:
            split = split.cast_column(column, feature)
        out[name] = split
    return DatasetDict(out)


def load_folders_cached(folders: dict[str, str], build: Callable[[], "datasets.DatasetDict"],  # noqa: F821
                        cache_dir: str | None = None):
    """``build()``'s `DatasetDict` for ``folders``, read back from disk when the folders have not changed.
    -> (DatasetDict, whether it came from the cache). Several processes may race: each writes its own temporary
    folder and renames it into place; the first rename wins and the others are dropped. What is kept holds the
    images' paths, not their bytes (about 65 bytes a row)."""
    import json

    from datasets import DatasetDict, Image, Value, load_from_disk

    target = table_cache_dir(cache_dir) / folders_key(folders)

    def read_back() -> DatasetDict:
        columns = json.loads((target / IMAGE_COLUMNS).read_text())
        return _cast_columns(load_from_disk(str(target)), columns, Image())

    if (target / IMAGE_COLUMNS).exists():
        try:
            return read_back(), True
        except (FileNotFoundError, ValueError, OSError):
            shutil.rmtree(target, ignore_errors=True)  # damaged (a disk filled up mid-write): rebuilt below
    raw: DatasetDict = build()
    staging = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        # Image columns as their plain storage struct: `save_to_disk` embeds the files of decodable columns (a
        # copy of every image) and keeps a plain struct (the paths) as it is.
        columns = _image_columns(raw)
        plain = _cast_columns(raw, columns, {"bytes": Value("binary"), "path": Value("string")})
        plain.save_to_disk(str(staging))
        (staging / IMAGE_COLUMNS).write_text(json.dumps(columns))  # last: marks the copy complete
        os.rename(staging, target)
    except OSError:  # another process renamed its copy first, or the cache folder is read-only
        shutil.rmtree(staging, ignore_errors=True)
    if not (target / IMAGE_COLUMNS).exists():
        return raw, False
    # The saved copy, not ``raw``: it has another `datasets` fingerprint than the builder's, and the first run
    # must key the data-check cache as every later run will.
    return read_back(), False
