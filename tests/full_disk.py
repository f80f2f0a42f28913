"""A real full disk for tests: a 64 KiB tmpfs filled to the last block.

Mounting needs root; without it the tests that use it are skipped, saying why.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def full_disk(tmp_path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a 64k tmpfs, which needs root to mount")
    mnt = tmp_path / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs failed (not permitted in this container)")
    try:
        with open(mnt / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:  # ENOSPC: the disk is full
                pass
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
