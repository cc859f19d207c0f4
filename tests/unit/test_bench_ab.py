"""The benches' A/B of two commits (bench.ab): another commit's tripwire is what a
fresh Python, or a spawned worker, imports first; today's is what it imports
otherwise. (HEAD stands for the other commit: a shallow checkout has no other.)"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from bench.ab import at_commit, resolve, run_python, site_of

PROBE = "import tripwire.streams.backtest as b; print(b.__file__)"


def test_a_fresh_python_imports_the_commit_asked_for() -> None:
    site = site_of("HEAD")
    assert site.parent.name == resolve("HEAD") and (site / "tripwire" / "streams").is_dir()
    assert (site / "tripwire" / "__init__.py").resolve().parent.name == "app"  # as installed
    assert run_python("HEAD", ["-c", PROBE]).strip().startswith(f"{site}/")
    assert not run_python(None, ["-c", PROBE]).strip().startswith(f"{site}/")
    assert site_of("HEAD") == site  # laid out once


def test_a_spawned_worker_runs_the_commit(tmp_path: Path) -> None:
    out = tmp_path / "where"
    child = mp.get_context("spawn").Process(target=at_commit, args=(
        str(site_of("HEAD")), "ab_probe", "where", str(out)))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert out.read_text().startswith(f"{site_of('HEAD')}/")
