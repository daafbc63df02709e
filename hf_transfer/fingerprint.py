"""Fingerprints of datasets that never read the data: what caches (features, the data check) are keyed by.

`datasets` already fingerprints every `Dataset` when it is built (``Dataset._fingerprint``): a builder's dataset
(Hub, image folder) from its cache folder, whose name hashes the data files with their modification times (or Hub
revisions); a `load_from_disk` copy from its saved state; an in-memory one from its table, once, when it is made.
Every ``select`` / ``map`` / ``cast`` derives a new one from the old and its arguments. Reading it costs nothing,
where hashing the Arrow table (and stat-ing every file it names) cost time in proportion to the whole underlying
data, even for a 1,000-image subsample of ImageNet. A local folder of files is fingerprinted by its file list,
sizes and modification times (`folder_fingerprint`).
"""

from __future__ import annotations

import hashlib
import os


def split_fingerprint(dataset) -> str:
    """A `datasets.Dataset` split's identity: its `datasets` fingerprint and its length (no data read)."""
    fingerprint = getattr(dataset, "_fingerprint", None)
    if not fingerprint:
        raise ValueError(f"{type(dataset).__name__} has no datasets fingerprint")
    return hashlib.sha256(f"{fingerprint}:{len(dataset)}".encode()).hexdigest()[:32]


def folder_fingerprint(root: str | os.PathLike) -> str:
    """A folder's files (relative paths, sizes, modification times), walked in sorted order: an added, removed,
    renamed or edited file changes it. One `os.scandir` pass (the stat comes with the directory listing)."""
    digest = hashlib.sha256()
    stack = [os.fspath(root)]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            entries = sorted(entries, key=lambda e: e.name)
        for entry in reversed([e for e in entries if e.is_dir(follow_symlinks=True)]):
            stack.append(entry.path)
        for entry in entries:
            if entry.is_file(follow_symlinks=True):
                stat = entry.stat()
                relative = os.path.relpath(entry.path, root)
                digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]
