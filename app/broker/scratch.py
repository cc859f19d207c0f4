"""Where a throw-away broker keeps its data: memory when the machine has room.

A broker started for a test session or a benchmark is deleted when it stops, so
its log segments need not survive a reboot. On an ext4 disk, the broker's
memory-mapped offset and time indexes fault on every page written back (every
few seconds): on the project's 2-core VM, 39 % of the broker's sampled CPU was
in ``TimeIndex.maybeAppend`` / ``OffsetIndex.append``. With the broker's data and
the benchmark workers' RocksDB state both on tmpfs the live pipeline decided
1.21x more events per second (the broker's data alone: within noise;
docs/performance.md, 2026-11-29). A broker a person starts with
``tripwire broker start`` keeps its data on disk as before.

>>> home = scratch_home("doc")
>>> home.name.startswith("tripwire-doc-")
True
>>> release(home)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from tripwire.broker.local import _pid_alive
from tripwire.config import Settings

__all__ = ["MEMORY_DIR", "MIN_FREE_BYTES", "memory_dir", "release", "scratch_home"]

logger = logging.getLogger(__name__)

MEMORY_DIR = Path("/dev/shm")
MIN_FREE_BYTES = 4 << 30  # a benchmark's broker writes a few hundred MB; keep a margin


def _is_tmpfs(path: Path) -> bool:
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return False
    return any(len(f) > 2 and f[1] == str(path) and f[2] == "tmpfs"
               for f in (line.split() for line in mounts))


def memory_dir(base: Path = MEMORY_DIR, min_free: int = MIN_FREE_BYTES) -> Path | None:
    """``base`` if it is a writable tmpfs with ``min_free`` bytes free, else None
    (containers often give /dev/shm 64 MB: then the disk it is)."""
    try:
        if not (_is_tmpfs(base) and os.access(base, os.W_OK)):
            return None
        return base if shutil.disk_usage(base).free >= min_free else None
    except OSError:
        return None


def _sweep(base: Path, purpose: str) -> None:
    """Remove scratch homes left by processes that died before cleaning up (memory
    is not given back otherwise)."""
    for old in base.glob(f"tripwire-{purpose}-*"):
        pid = old.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            logger.info("removing %s, left by process %s", old, pid)
            shutil.rmtree(old, ignore_errors=True)


def scratch_home(purpose: str, on_disk: bool | None = None) -> Path:
    """A new, empty folder for a throw-away broker (or other scratch state): in
    memory when :func:`memory_dir` allows, else in the temporary directory.
    ``on_disk`` (default: the ``TRIPWIRE_SCRATCH_ON_DISK`` setting) keeps it on
    disk. :func:`release` it."""
    if on_disk is None:
        on_disk = Settings().scratch_on_disk
    base = None if on_disk else memory_dir()
    if base is None:
        return Path(tempfile.mkdtemp(prefix=f"tripwire-{purpose}-"))
    _sweep(base, purpose)
    return Path(tempfile.mkdtemp(prefix=f"tripwire-{purpose}-{os.getpid()}-", dir=base))


def release(home: Path) -> None:
    """Delete a scratch home (and the memory it holds)."""
    shutil.rmtree(home, ignore_errors=True)
