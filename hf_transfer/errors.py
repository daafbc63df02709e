"""The one exception type users see for bad input, and the helper that turns it into a one-line exit."""

from __future__ import annotations

import sys
from contextlib import contextmanager


class TransferError(ValueError):
    """Bad input or an unsupported request. The message is one line: the problem, then the fix."""


ON_RECIPE_EXIT: list = []  # callables run when a recipe or CLI command ends, however it ends


@contextmanager
def exit_on_user_error(prog: str = "hf_transfer"):
    """Recipes and the CLI run inside this: a `TransferError` becomes `prog: error: ...` and exit code 2."""
    try:
        yield
    except TransferError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        for cleanup in ON_RECIPE_EXIT:  # the run is over (saving.py: its output folder is free for the next one)
            cleanup()
