"""The extraction's thread count (features/threads.py): measured per batch, the faster count kept, the other
measured again when the running one slows down (a neighbour took a core) or now and then (it left)."""

from __future__ import annotations

import torch

from hf_transfer.features.threads import (
    RETRY_AFTER_SLOWDOWN,
    RETRY_EVERY,
    RETRY_STRETCH,
    ThreadChooser,
    restored_threads,
)


def _run(chooser: ThreadChooser, cost: dict[int, float], batches: int) -> list[int]:
    """Feed the chooser ``batches`` batches of 32 images at ``cost`` seconds per image per count; the counts it ran."""
    ran = []
    for _ in range(batches):
        count = chooser.next_count()
        chooser.record(count, cost[count] * 32, 32)
        ran.append(count)
    return ran


def test_tries_each_count_then_keeps_the_faster():
    chooser = ThreadChooser((2, 1))
    ran = _run(chooser, {2: 1.0, 1: 1.7}, 40)
    assert ran[:2] == [2, 1]
    assert ran[2:] == [2] * 38


def test_a_neighbour_arriving_moves_to_one_thread_and_leaving_moves_back():
    chooser = ThreadChooser((2, 1))
    _run(chooser, {2: 1.0, 1: 1.7}, 10)
    # two spinning threads against a busy core: ten times slower; one thread barely changes
    busy = _run(chooser, {2: 10.0, 1: 1.8}, 30)
    switched = busy.index(1)
    assert switched <= RETRY_AFTER_SLOWDOWN + 1
    assert busy[switched:] == [1] * (30 - switched)  # no flapping back while two threads are slow
    # two threads were last seen 10/1.8 times slower: re-measured after RETRY_EVERY stretched by that (capped)
    quiet = _run(chooser, {2: 1.0, 1: 1.7}, RETRY_EVERY * RETRY_STRETCH + 10)
    back = quiet.index(2)
    assert RETRY_EVERY < back <= RETRY_EVERY * RETRY_STRETCH + 1
    assert quiet[back:] == [2] * (len(quiet) - back)


def test_a_much_slower_count_is_measured_rarely():
    """Sixteen threads on a free many-core machine, one thread ten times slower: the single-thread batches that keep
    the choice honest stay near 1 in RETRY_EVERY * RETRY_STRETCH."""
    chooser = ThreadChooser((16, 1))
    ran = _run(chooser, {16: 1.0, 1: 10.0}, 2000)
    assert ran.count(1) <= 2000 // (RETRY_EVERY * RETRY_STRETCH) + 2
    assert ran.count(1) >= 2  # but it is measured again


def test_one_candidate_never_changes_anything():
    chooser = ThreadChooser((1, 1))
    assert _run(chooser, {1: 1.0}, 5) == [1] * 5


def test_the_thread_count_is_given_back():
    before = torch.get_num_threads()
    with restored_threads(1):
        assert torch.get_num_threads() == 1
        torch.set_num_threads(1)
    assert torch.get_num_threads() == before
    chooser = ThreadChooser((before, 1))
    with restored_threads():
        for _ in range(3):
            with chooser.batch(32):
                pass
    assert torch.get_num_threads() == before
