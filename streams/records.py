"""The records every stage takes and gives, free of any Kafka client type.

A stage is a pure function from input records (and state) to output records, so
the same code runs live, in backtests and in unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["InRecord", "OutRecord"]


@dataclass(frozen=True, slots=True)
class InRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int  # the Kafka record timestamp (producer create time)


@dataclass(frozen=True, slots=True)
class OutRecord:
    topic_key: str  # a key of tripwire.streams.topics.TOPICS
    key: bytes | None
    value: bytes
