"""Publishing events from JSON Lines files; every refused line is written out
with its reasons, so nothing is silently dropped."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from tripwire.connectors.sdk import InvalidEvent, TripwireProducer

__all__ = ["FileSummary", "publish_jsonl"]


@dataclass
class FileSummary:
    lines: int = 0
    sent: int = 0
    refused: int = 0
    delivered: int = 0
    failed: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    refused_path: Path | None = None


def publish_jsonl(path: Path, producer: TripwireProducer, refused_path: Path,
                  progress: Callable[[int], None] = lambda n: None) -> FileSummary:
    """Send every valid line of ``path``; refused lines go to ``refused_path`` as
    ``{"line": n, "reasons": [...], "raw": "..."}``."""
    summary = FileSummary(refused_path=refused_path)
    with path.open("rb") as src, refused_path.open("wb") as bad:
        for n, raw in enumerate(src, start=1):
            raw = raw.strip()
            if not raw:
                progress(1)
                continue
            summary.lines += 1
            try:
                producer.send(raw)
                summary.sent += 1
            except InvalidEvent as exc:
                summary.refused += 1
                summary.reasons.update(c for c, _, _ in exc.reasons)
                bad.write(orjson.dumps({
                    "line": n, "raw": raw.decode(errors="replace"),
                    "reasons": [{"code": c, "field": f, "detail": d} for c, f, d in exc.reasons],
                }) + b"\n")
            progress(1)
    delivery = producer.flush()
    summary.delivered, summary.failed = delivery.delivered, delivery.failed
    if summary.refused == 0:
        refused_path.unlink(missing_ok=True)
        summary.refused_path = None
    return summary
