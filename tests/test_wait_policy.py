"""The recipes' OpenMP wait policy (hf_transfer_openmp.py): PASSIVE when another task is runnable *now*.

The rule before read the 1-minute load average, which still counts a job that ended a minute ago: a run started
right after another on an idle 2-core machine read about 2 and trained with PASSIVE, 1.8x slower a step
(bench/results/wait_policy.json); beside a one-thread neighbour it read about 1 and spun, 6x slower than PASSIVE."""

import subprocess
import sys
import time

import pytest

import hf_transfer_openmp as policy


@pytest.fixture
def two_cores(monkeypatch, tmp_path):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(policy.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(policy, "SAMPLE_INTERVAL", 0.0)
    loadavg = tmp_path / "loadavg"
    monkeypatch.setattr(policy, "LOADAVG", str(loadavg))
    return loadavg


@pytest.mark.parametrize("line, busy", [
    ("1.98 1.95 1.20 1/120 4242", False),  # the last job's minute still in the average, nothing runnable but us
    ("1.10 0.90 0.50 3/120 4242", True),  # two others runnable now, though the average is under 2
    ("0.90 0.80 0.70 2/120 4242", True),  # one other: spinning threads would wait on the core it holds
])
def test_passive_only_when_other_tasks_are_runnable_now(two_cores, line, busy):
    two_cores.write_text(line + "\n")
    policy.choose_wait_policy()
    assert policy.os.environ.get("OMP_WAIT_POLICY") == ("PASSIVE" if busy else None)


def test_an_explicit_policy_wins_and_without_proc_the_load_average_decides(two_cores, monkeypatch):
    two_cores.write_text("0.00 0.00 0.00 5/120 4242\n")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    policy.choose_wait_policy()
    assert policy.os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.setattr(policy, "LOADAVG", str(two_cores.parent / "missing"))
    monkeypatch.setattr(policy.os, "getloadavg", lambda: (3.0, 0.0, 0.0))
    assert policy.others_runnable() == 3.0


def test_a_busy_neighbour_reads_as_runnable_now():
    """On the real /proc/loadavg: a spinning process is seen within the tenth of a second the reading takes."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])]
    try:
        time.sleep(0.5)
        assert policy.others_runnable() >= 0.9
    finally:
        for p in spinners:
            p.kill()
