"""SIGTERM (``docker stop``, SLURM preemption) writes the run's history record, and the process
still ends killed by SIGTERM: real subprocesses, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TRAIN = """
import signal, sys, time
import torch
import chuck
from tests.conftest import make_net, run_steps

{before}
model = make_net()
opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), "constant", model=model)
run_steps(model, opt, 0, 10)
print("ready", flush=True)
time.sleep(120)
"""


def _run_until_ready(tmp_path: Path, before: str = "") -> subprocess.Popen:
    env = dict(os.environ, CHUCK_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(TRAIN.format(before=before))],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        pytest.fail(f"the training process did not start: {line}{proc.communicate()[1][-2000:]}")
    return proc


def _records(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "home" / "history").glob("run-*.parquet"))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_writes_the_record_and_the_process_still_dies_of_sigterm(tmp_path) -> None:
    proc = _run_until_ready(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, err[-2000:]
    assert len(_records(tmp_path)) == 1


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_handler_the_program_installed_is_left_alone(tmp_path) -> None:
    """A program's own SIGTERM handler decides; its sys.exit runs atexit, which writes the record."""
    proc = _run_until_ready(tmp_path, before="signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err[-2000:]
    assert len(_records(tmp_path)) == 1


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_an_ignored_sigterm_stays_ignored(tmp_path) -> None:
    proc = _run_until_ready(tmp_path, before="signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    try:
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=2)
        assert _records(tmp_path) == []
    finally:
        proc.kill()
        proc.communicate()
