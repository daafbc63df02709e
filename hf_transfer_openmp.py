"""The OpenMP wait policy of hf_transfer's command-line entry points (recipes/*.py and `hf-transfer`).

It must be chosen before torch loads, because libgomp reads OMP_WAIT_POLICY once, when it is loaded, and importing
any `hf_transfer` module loads torch: hence a top-level module of its own. Library use (`import hf_transfer` in a
notebook) never changes the variable.

Idle machine: libgomp's default (spin briefly, then sleep); PASSIVE made Lite0's training steps 1.8x slower there.
Another task runnable now (on average over a tenth of a second, at least half of one): PASSIVE; beside one spinning
neighbour, libgomp's default made the same steps 6x slower than PASSIVE (its threads spin at every barrier while one
of them waits for the shared core). Both measured in bench/results/wait_policy.json. An explicit OMP_WAIT_POLICY wins.

"Now", not the 1-minute load average the rule read before (PASSIVE from a load of the cores): that average still
counts a job that ended a minute ago, so a run started right after another on an idle 2-core machine (a script of
runs, the suite's cells) read about 2 and trained with PASSIVE, or not, by which side of 2 the decay had reached;
and beside a one-thread neighbour it read about 1 and spun.
"""

import os
import time

SAMPLES, SAMPLE_INTERVAL = 20, 0.005  # a tenth of a second of readings
LOADAVG = "/proc/loadavg"
BUSY_NEIGHBOURS = 0.5  # other runnable tasks (mean of the readings) from which the threads must not spin


def others_runnable(samples: int = SAMPLES, interval: float = SAMPLE_INTERVAL) -> float:
    """Tasks runnable now besides this process, averaged over ``samples`` readings ``interval`` seconds apart (the
    4th field of /proc/loadavg, "running/total", counts this process too). Without /proc: the 1-minute load."""
    counts = []
    try:
        for i in range(samples):
            with open(LOADAVG) as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)
            if i + 1 < samples:
                time.sleep(interval)
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]
    return sum(counts) / len(counts)


def choose_wait_policy() -> None:
    if "OMP_WAIT_POLICY" not in os.environ and others_runnable() >= BUSY_NEIGHBOURS:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def main():
    """The `hf-transfer` console script: the policy first, then the CLI (which loads torch)."""
    choose_wait_policy()
    from hf_transfer.cli import main as cli_main

    return cli_main()
