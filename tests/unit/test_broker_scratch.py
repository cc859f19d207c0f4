"""Where throw-away brokers keep their data (no broker needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tripwire.broker import scratch


def test_a_disk_folder_is_not_memory(tmp_path: Path) -> None:
    assert scratch.memory_dir(tmp_path) is None


@pytest.mark.skipif(not scratch._is_tmpfs(scratch.MEMORY_DIR), reason="no tmpfs /dev/shm here")
def test_tmpfs_with_room_is_memory_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    assert scratch.memory_dir(scratch.MEMORY_DIR, min_free=1) == scratch.MEMORY_DIR
    # too little room (a container's 64 MB /dev/shm): the disk it is
    assert scratch.memory_dir(scratch.MEMORY_DIR, min_free=1 << 60) is None
    monkeypatch.setenv("TRIPWIRE_SCRATCH_ON_DISK", "1")
    home = scratch.scratch_home("unit")
    try:
        assert not str(home).startswith(str(scratch.MEMORY_DIR))
    finally:
        scratch.release(home)


def test_homes_left_by_dead_processes_are_swept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    left = tmp_path / f"tripwire-unit-{dead}-abc_12"
    (left / "data").mkdir(parents=True)
    mine = tmp_path / f"tripwire-unit-{os.getpid()}-xyz_34"
    mine.mkdir()
    other = tmp_path / f"tripwire-other-{dead}-def_56"  # another purpose: not ours to sweep
    other.mkdir()
    scratch._sweep(tmp_path, "unit")
    assert not left.exists()
    assert mine.exists() and other.exists()


def test_scratch_home_is_new_and_released() -> None:
    a, b = scratch.scratch_home("unit"), scratch.scratch_home("unit")
    try:
        assert a != b and a.is_dir() and not any(a.iterdir())
        if scratch.memory_dir() is not None:
            assert a.parent == scratch.MEMORY_DIR and f"-{os.getpid()}-" in a.name
    finally:
        scratch.release(a)
        scratch.release(b)
    assert not a.exists() and not b.exists()
