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

TABLE_VERSION = "1"  # bump when what is stored changes


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


def load_folders_cached(folders: dict[str, str], build: Callable[[], "datasets.DatasetDict"],  # noqa: F821
                        cache_dir: str | None = None):
    """``build()``'s `DatasetDict` for ``folders``, read back from disk when the folders have not changed.
    -> (DatasetDict, whether it came from the cache). Several processes may race: each writes its own temporary
    folder and renames it into place; the first rename wins and the others are dropped."""
    from datasets import DatasetDict, load_from_disk

    target = table_cache_dir(cache_dir) / folders_key(folders)
    if (target / "dataset_dict.json").exists():
        try:
            return load_from_disk(str(target)), True
        except (FileNotFoundError, ValueError, OSError):
            shutil.rmtree(target, ignore_errors=True)  # damaged (a disk filled up mid-write): rebuilt below
    raw: DatasetDict = build()
    staging = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        raw.save_to_disk(str(staging))
        os.rename(staging, target)
    except OSError:  # another process renamed its copy first, or the cache folder is read-only
        shutil.rmtree(staging, ignore_errors=True)
    if not (target / "dataset_dict.json").exists():
        return raw, False
    # The saved copy, not ``raw``: `load_from_disk` gives it another `datasets` fingerprint than the builder's,
    # and the first run must key the data-check cache as every later run will.
    return load_from_disk(str(target)), False
