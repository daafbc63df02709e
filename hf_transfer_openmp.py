"""The OpenMP wait policy of hf_transfer's command-line entry points (recipes/*.py and `hf-transfer`).

It must be chosen before torch loads, because libgomp reads OMP_WAIT_POLICY once, when it is loaded, and importing
any `hf_transfer` module loads torch: hence a top-level module of its own. Library use (`import hf_transfer` in a
notebook) never changes the variable.

Quiet machine: libgomp's default (spin briefly, then sleep); PASSIVE made the default fine-tune's steps 19 % slower.
Machine already busy (1-min load >= cores): PASSIVE, since threads spinning against other jobs slowed Lite0 steps
up to 20x. An explicit OMP_WAIT_POLICY wins.
"""

import os


def choose_wait_policy() -> None:
    if "OMP_WAIT_POLICY" not in os.environ and os.getloadavg()[0] >= (os.cpu_count() or 1):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def main():
    """The `hf-transfer` console script: the policy first, then the CLI (which loads torch)."""
    choose_wait_policy()
    from hf_transfer.cli import main as cli_main

    return cli_main()
