"""Process-level settings: CPU threads under `accelerate launch`, who is the main process, a quick exit."""

from __future__ import annotations

import contextlib
import logging
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


# ----------------------------------------------------------------------------------------------------- logging
# Messages go through the `hf_transfer` logger, set up as transformers sets up its own: one handler on the library's
# root logger, not propagated to the application's root. The handler writes above any live tqdm bar (not inside it)
# on stdout, where the run's progress is read. Level INFO by default (the messages are the run's progress);
# `--log_level` (and, in library use, `logging.getLogger("hf_transfer").setLevel(...)`) changes it.
logger = logging.getLogger("hf_transfer")
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
              "critical": logging.CRITICAL}
_progress_bars = {"enabled": True}


class _AboveProgressBars(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=sys.stdout)
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - logging must never stop the run
            self.handleError(record)


def library_logger() -> logging.Logger:
    if not any(isinstance(h, _AboveProgressBars) for h in logger.handlers):
        handler = _AboveProgressBars()
        handler.setFormatter(logging.Formatter("[hf_transfer] %(message)s"))
        logger.addHandler(handler)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def say(message: str, level: int = logging.INFO) -> None:
    """Progress for people: logged once, by the main process, above any live progress bar (not inside it)."""
    if is_main_process():
        library_logger().log(level, message)


@contextlib.contextmanager
def quieter(level: int):
    """hf_transfer's messages below ``level`` are dropped inside the block (a CV fold's own run, an advisor stage)."""
    log = library_logger()
    before = log.level
    log.setLevel(max(before, level))
    try:
        yield
    finally:
        log.setLevel(before)


def progress_bars_enabled() -> bool:
    return _progress_bars["enabled"] and is_main_process()


def progress(iterable=None, **kwargs):
    """A tqdm bar that `--disable_tqdm` and the non-main processes turn off (the Trainer's own bars obey the same)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not progress_bars_enabled(), leave=False, dynamic_ncols=True, **kwargs)


def quiet_metrics(trainer) -> None:
    """Trainer prints every metrics dict with print() (PrinterCallback) or above its bar (ProgressCallback), whatever
    the log level: below INFO those lines go, the bars stay as --disable_tqdm says."""
    if library_logger().isEnabledFor(logging.INFO):
        return
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    if trainer.pop_callback(PrinterCallback) is None:
        bar = trainer.pop_callback(ProgressCallback)
        if bar is not None:
            trainer.add_callback(_SilentProgress())


def _silent_progress_class():
    from transformers.trainer_callback import ProgressCallback

    class SilentProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # the bar, not the metrics dicts
            return None

    return SilentProgress


def _SilentProgress():  # noqa: N802 - a factory: transformers loads only when a job quiets a Trainer
    return _silent_progress_class()()


def configure_logging(log_level: str | None = None, disable_tqdm: bool | None = None,
                      disable_tqdm_given: bool = False) -> tuple[int | None, bool | None]:
    """Apply a job's `--log_level` / `--disable_tqdm` to hf_transfer and to the libraries it drives.

    `passive` (TrainingArguments' default) or None leaves levels as they are. `error` and `critical` also silence
    Python warnings, which are warnings by definition. Called by the jobs' argument parsing, before anything loads.
    """
    level = LOG_LEVELS.get(str(log_level).lower()) if log_level else None
    if level is not None and level > logging.WARNING and not disable_tqdm_given:
        disable_tqdm = True  # as TrainingArguments does when transformers' level is above warning
    if level is not None:
        library_logger().setLevel(level)
        import transformers

        transformers.logging.set_verbosity(level)
        import datasets

        datasets.logging.set_verbosity(level)
        if level >= logging.ERROR:
            import warnings

            warnings.filterwarnings("ignore")
    if disable_tqdm is not None:
        _progress_bars["enabled"] = not disable_tqdm
        if disable_tqdm:
            import datasets
            import huggingface_hub
            import transformers

            datasets.disable_progress_bars()
            huggingface_hub.utils.disable_progress_bars()
            transformers.utils.logging.disable_progress_bar()
    # DeepSpeed, when installed, guesses the accelerator as it is imported (by accelerate) and warns when it finds
    # none; on a machine without one, name the CPU so that an unused package prints nothing.
    if not has_accelerator():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return level, disable_tqdm


def has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


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
