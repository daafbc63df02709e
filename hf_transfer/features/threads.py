"""Torch's intra-op thread count during extraction, chosen batch by batch from the measured time per image.

Two threads on two free cores forward a batch faster than one. But when a neighbour takes a core in the middle of
the extraction (a shared machine, a second job), two OpenMP threads wait on each other at every operator's
barrier, and under libgomp's default wait policy they spin while they wait: measured here on EfficientNet-Lite0 at
96 px with the machine's other core busy, 29-32 ms per image with two threads against 2.7-2.9 with one. The
policy is read once, when torch loads (`hf_transfer_openmp`), from the tasks runnable at that moment; they can change
within the run. The thread count can change at any batch, so extraction measures both and keeps the faster:

* the first batches try each count in turn;
* afterwards the faster one runs; the other is measured again when the running one gets much slower than its
  best (a neighbour arrived; at most every `RETRY_AFTER_SLOWDOWN` batches) or every `RETRY_EVERY` batches (a
  neighbour left), stretched up to `RETRY_STRETCH` times when the other count was that much slower.

The features do not depend on the thread count (every image is computed the same way, batch by batch).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

RETRY_EVERY = 64  # batches between re-measurements of the count not in use (one slow batch at worst)
# ... times how much slower it was, up to this factor: on a many-core machine one thread can be ten times slower,
# and re-measuring it every 64 batches would cost 15 %; stretched, the cost stays near 1/64 (4 % at worst)
RETRY_STRETCH = 4
SLOWDOWN = 1.5  # the running count is re-examined when a batch costs this much more per image than its best
RETRY_AFTER_SLOWDOWN = 8  # ... but not sooner than this many batches after the last re-measurement


class ThreadChooser:
    """Which thread count the next batch runs with; `record` gives it what each batch cost.

    ``counts``: the candidates (default: torch's current count and one). A chooser with one candidate never changes
    anything."""

    def __init__(self, counts: tuple[int, ...] | None = None):
        self.counts = tuple(dict.fromkeys(counts or (torch.get_num_threads(), 1)))
        self.recent: dict[int, float] = {}  # seconds per image of the last batch at each count
        self.best: dict[int, float] = {}
        self.current = self.counts[0]
        self._since_retry = 0

    def next_count(self) -> int:
        untried = [c for c in self.counts if c not in self.recent]
        if untried:
            return untried[0]
        faster = min(self.counts, key=lambda c: self.recent[c])
        others = [c for c in self.counts if c != faster]
        if not others:
            return faster
        other = min(others, key=lambda c: self.recent[c])
        slowed = self.recent[faster] > SLOWDOWN * self.best[faster]
        stretch = min(RETRY_STRETCH, self.recent[other] / self.recent[faster]) if self.recent[faster] > 0 else 1.0
        due = self._since_retry >= (RETRY_AFTER_SLOWDOWN if slowed else RETRY_EVERY * max(1.0, stretch))
        if due:
            self._since_retry = 0
            # measure the count not in use again; after it, `recent` ranks the two with fresh numbers
            return other
        self._since_retry += 1
        return faster

    def record(self, count: int, seconds: float, images: int) -> None:
        per_image = seconds / max(1, images)
        self.recent[count] = per_image
        self.best[count] = min(per_image, self.best.get(count, per_image))

    @contextmanager
    def batch(self, images: int):
        """Run one batch at the chosen count and record its time."""
        count = self.next_count()
        if count != torch.get_num_threads():
            torch.set_num_threads(count)
        start = time.perf_counter()
        yield count
        self.record(count, time.perf_counter() - start, images)


@contextmanager
def restored_threads(count: int | None = None):
    """Run the block at ``count`` threads (None: as it is), then give torch its thread count back."""
    before = torch.get_num_threads()
    if count is not None and count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


__all__ = ["RETRY_AFTER_SLOWDOWN", "RETRY_EVERY", "RETRY_STRETCH", "SLOWDOWN", "ThreadChooser", "restored_threads"]
