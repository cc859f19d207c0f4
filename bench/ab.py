"""Another commit's code, run beside today's in the same benchmark (an A/B of two
commits on the same machine at the same time, as the performance targets ask).

The commit is extracted with ``git archive`` into ``.build/ab/<commit>/src`` and
laid out as setuptools installs it (``tripwire`` from ``app/``, ``tripwire.streams``
from ``streams/``... as its own ``pyproject.toml`` maps them) under
``.build/ab/<commit>/site``. A Python of the same virtual environment with that
folder first on ``PYTHONPATH`` imports the commit's ``tripwire``: path entries are
searched before the editable install's finder, which comes last.

>>> python_env("56d46b9")["PYTHONPATH"].endswith("/site")           # doctest: +SKIP
True
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["FILED", "at_commit", "python_env", "resolve", "run_python", "site_of"]

REPO = Path(__file__).resolve().parent.parent
# the code as it was when issues 25 and 26 were filed (2026-12-03, 10:51): their
# "today", the baseline of their A/B figures
FILED = "56d46b9"
AB = REPO / ".build" / "ab"


def resolve(rev: str) -> str:
    """The full commit id of ``rev`` (a clear error when it is unknown)."""
    got = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=REPO,
                         capture_output=True, text=True)
    if got.returncode:
        raise SystemExit(f"bench: {rev!r} is not a commit of this repository "
                         f"({got.stderr.strip()})")
    return got.stdout.strip()


def site_of(rev: str) -> Path:
    """The folder to import ``rev``'s tripwire from (made once per commit)."""
    commit = resolve(rev)
    root = AB / commit
    site = root / "site"
    if (site / "tripwire" / "__init__.py").exists():
        return site
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=REPO,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    mapping = tomllib.loads((src / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"]
    tmp = root / "site.tmp"
    if tmp.exists():
        subprocess.run(["rm", "-rf", str(tmp)], check=True)
    top = tmp / "tripwire"
    top.mkdir(parents=True)
    for entry in (src / mapping["tripwire"]).iterdir():  # the top package's files
        (top / entry.name).symlink_to(entry)
    for name, folder in mapping.items():
        if name != "tripwire":  # tripwire.streams → <site>/tripwire/streams
            link = top / name.removeprefix("tripwire.")
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(src / folder)
    tmp.rename(site)
    return site


def at_commit(site: str, module: str, name: str, *args: Any) -> Any:
    """``module.name(*args)`` with the tripwire of ``site`` (:func:`site_of`): the
    target of a process of multiprocessing's spawn, which starts with nothing of
    tripwire imported (this module imports none of it)."""
    import importlib

    if "tripwire" in sys.modules:
        raise RuntimeError("at_commit: tripwire is imported already; start a new process")
    sys.path.insert(0, site)
    return getattr(importlib.import_module(module), name)(*args)


def python_env(rev: str | None) -> dict[str, str]:
    """The environment of a Python that imports ``rev``'s tripwire (None: today's,
    the working tree)."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if rev is not None:
        env["PYTHONPATH"] = str(site_of(rev))
    return env


def run_python(rev: str | None, args: list[str]) -> str:
    """``python ARGS`` with ``rev``'s tripwire (None: today's); its output. A failure
    raises with what it printed."""
    got = subprocess.run([sys.executable, *args], env=python_env(rev), cwd=REPO,
                         capture_output=True, text=True)
    if got.returncode:
        raise RuntimeError(f"{args} at {rev or 'the working tree'} failed "
                           f"({got.returncode}):\n{got.stderr[-4000:]}")
    return got.stdout
