"""Whether channels_last memory is safe and fast for one architecture on this CPU, decided once and cached.

channels_last makes most CNNs markedly faster on CPU, but some oneDNN kernels misbehave with it: timm ``fastvit_t8``
spins for minutes in a channels_last weight-gradient kernel, and plain PyTorch can abort (``free(): invalid next
size``). Neither can be caught in the process that trains, so the check runs one forward and backward step in a
forked child with a time limit, in both layouts: channels_last is used only when the child finishes it, and not much
slower than contiguous memory. The answer is cached per architecture (class and parameter shapes), torch version and
CPU under ``~/.cache/hf_transfer/channels_last.json`` (``HF_TRANSFER_CACHE`` moves it);
``HF_TRANSFER_CHANNELS_LAST=0/1`` decides without a check.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import select
import signal
import time
from pathlib import Path

import torch

from ..runtime import say

TIME_LIMIT_S = 60.0
SLOWER_LIMIT = 2.0  # channels_last may cost up to this factor on the check step before contiguous wins
ENV = "HF_TRANSFER_CHANNELS_LAST"


def cache_file() -> Path:
    root = os.environ.get("HF_TRANSFER_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "hf_transfer").expanduser() / "channels_last.json"


def architecture_key(model: torch.nn.Module) -> str:
    """Class, parameter names and shapes, torch version and CPU: what the kernels chosen depend on."""
    shapes = ";".join(f"{n}:{tuple(p.shape)}" for n, p in model.named_parameters())
    digest = hashlib.sha1(shapes.encode()).hexdigest()[:16]
    return f"{type(model).__name__}/{digest}/torch-{torch.__version__}/{platform.machine()}/{platform.processor() or '?'}"


def channels_last_works(model: torch.nn.Module, run, image_size: int, name: str = "") -> bool:
    """True when a channels_last training step of ``model`` (``run(pixel_values)`` -> output) completes quickly on this
    CPU; cached per architecture. A refusal is said in the log once, with the reason."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in ("0", "1", "true", "false"):
        return forced in ("1", "true")
    key = architecture_key(model)
    cache = _read_cache()
    if key not in cache:
        ok, why = _check_in_child(model, run, image_size)
        cache[key] = {"channels_last": ok, "why": why}
        _write_cache(cache)
        if not ok:
            say(f"channels_last is not used for {name or type(model).__name__} on this CPU ({why}): contiguous memory "
                "instead")
    return bool(cache[key]["channels_last"])


def _read_cache() -> dict:
    try:
        return json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict) -> None:
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # no cache: the check runs again next time


def _step_seconds(model, run, x) -> float:
    start = time.perf_counter()
    out = run(x)
    logits = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, (tuple, list)) else out
    logits.float().sum().backward()
    return time.perf_counter() - start


def _check_in_child(model, run, image_size: int) -> tuple[bool, str]:
    """One step contiguous, then one channels_last, in a forked child (a hang is killed, an abort is a status)."""
    import sys

    sys.stdout.flush()  # the child exits without flushing: nothing buffered may be lost or written twice
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.close(read_end)
            import faulthandler

            faulthandler.disable()  # a crash here is an answer, not news: keep the run's log clean
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork
            model.train()
            x = torch.randn(2, 3, image_size, image_size)
            contiguous = _step_seconds(model, run, x)
            model.to(memory_format=torch.channels_last)
            channels_last = _step_seconds(model, run, x.contiguous(memory_format=torch.channels_last))
            os.write(write_end, json.dumps([contiguous, channels_last]).encode())
            code = 0
        except BaseException:  # noqa: BLE001 - any failure means: not channels_last
            pass
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + TIME_LIMIT_S
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return False, f"a channels_last training step did not finish in {TIME_LIMIT_S:.0f} s"
            select.select([], [], [], 0.05)
        payload = os.read(read_end, 4096)
    finally:
        os.close(read_end)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0 or not payload:
        what = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
        return False, f"a channels_last training step crashed ({what})"
    contiguous, channels_last = json.loads(payload)
    if channels_last > SLOWER_LIMIT * contiguous + 0.05:
        return False, f"a channels_last training step took {channels_last:.2f} s against {contiguous:.2f} s contiguous"
    return True, f"step {channels_last:.3f} s channels_last, {contiguous:.3f} s contiguous"
