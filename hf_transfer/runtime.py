"""Process-level settings: CPU threads under `accelerate launch`, who is the main process, a quick exit."""

from __future__ import annotations

import os
import sys

import torch


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def process_count() -> int:
    """Processes in this launch (`accelerate launch` / torchrun set WORLD_SIZE; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def local_processes() -> int:
    """Processes of this launch on this machine (`accelerate launch` / torchrun set LOCAL_WORLD_SIZE; 1 without)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))


def say(message: str) -> None:
    """Progress for people: printed once, by the main process, above any live progress bar (not inside it)."""
    if is_main_process():
        from tqdm.auto import tqdm

        tqdm.write(f"[hf_transfer] {message}", file=sys.stdout)
        sys.stdout.flush()


def configure_cpu_threads() -> int:
    """Give each CPU process its share of the cores.

    `accelerate launch` exports OMP_NUM_THREADS=1 unless told otherwise, which halves CPU training speed on a
    2-core machine for a single process. When the launcher set it (ACCELERATE_* present) and no GPU is in use,
    use cores // local processes instead; HF_TRANSFER_NUM_THREADS overrides either way.
    """
    explicit = os.environ.get("HF_TRANSFER_NUM_THREADS")
    if explicit:
        threads = int(explicit)
    elif "ACCELERATE_MIXED_PRECISION" in os.environ and os.environ.get("OMP_NUM_THREADS") == "1" and not torch.cuda.is_available():
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        threads = max(1, (os.cpu_count() or 1) // local_processes)
    else:
        return torch.get_num_threads()
    torch.set_num_threads(threads)
    return threads


def skip_exit_garbage_collection() -> None:
    """Let the interpreter's shutdown skip its garbage-collection walk over everything loaded so far.

    At exit CPython searches the whole heap for reference cycles; with torch, transformers and scikit-learn loaded
    that walk took 1.0-1.3 s here, a fifth of a cached probe rerun, to free memory the OS takes back anyway.
    `gc.freeze()` moves every object to the permanent generation, which collections ignore (reference counting,
    atexit handlers and file flushing are unaffected). For command-line entry points once the job is done; never
    call it from library code that a notebook keeps running.
    """
    import gc

    gc.freeze()
