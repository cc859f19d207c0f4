"""The records every stage takes and gives, free of any Kafka client type.

A stage is a pure function from input records (and state) to output records, so
the same code runs live, in backtests and in unit tests.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TP", "InRecord", "OutRecord", "partition_for"]

TP = tuple[str, int]  # a topic partition


@dataclass(frozen=True, slots=True)
class InRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int  # the Kafka record timestamp (producer create time)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its fields' values: a replay's batches cross to another process
        by the thousand, and a frozen dataclass's own pickling is several times slower."""
        return InRecord, (self.topic, self.partition, self.offset, self.key, self.value,
                          self.timestamp_ms)


@dataclass(frozen=True, slots=True)
class OutRecord:
    topic_key: str  # a key of tripwire.streams.topics.TOPICS
    key: bytes | None
    value: bytes
    partition: int | None = None  # None: the producer's partitioner picks it from the key
    # what the record says, for the worker's metrics (tripwire.streams.tally): set where
    # it is made, never sent, not part of its identity
    meta: Any = field(default=None, compare=False, repr=False)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of ``key`` when a stage routes records itself (packed records
    hold many keys, so the key cannot travel as the Kafka key): CRC-32 modulo
    the partition count, the same rule wherever it is used.

    >>> partition_for(b"card-1", 3) == partition_for(b"card-1", 3)
    True
    """
    return zlib.crc32(key) % partitions if partitions > 1 else 0
