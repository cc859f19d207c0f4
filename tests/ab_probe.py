"""What a process started by :func:`bench.ab.at_commit` imported: where its
tripwire came from. Imported by that process, never by pytest itself."""

from __future__ import annotations

from pathlib import Path


def where(out: str) -> None:
    import tripwire.streams.backtest as b

    Path(out).write_text(b.__file__ or "")
