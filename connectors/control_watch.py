"""Pause switches on the compacted ``tripwire.alert-control.v1`` topic: the latest
record of a key says whether what it names is paused (``alerts.pause`` /
``sink.pause``) or not (``*.resume``), by whom and why. Customer alerts use the
key ``customer_alerts``; each sink its own (``sink:<group>``). Every worker
that honours a key reads the topic from the beginning and sees a change within
``poll_s``."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from tripwire.connectors.kafka import closed_on_failure, consumer, watermarks
from tripwire.schemas.codec import AvroCodec

__all__ = ["CONTROL_KEY", "ControlWatch", "paused_state", "sink_control_key"]

logger = logging.getLogger(__name__)

CONTROL_KEY = b"customer_alerts"  # the key of the customer alerts' switch


def sink_control_key(group: str) -> bytes:
    return f"sink:{group}".encode()


def paused_state(codec: AvroCodec, value: bytes | None) -> dict[str, Any] | None:
    """The pause a control record sets (None: not paused)."""
    if value is None:
        return None
    _, rec = codec.decode(value)
    return rec if str(rec["action"]).endswith(".pause") else None


class ControlWatch:
    """Follows one key's switch."""

    def __init__(self, bootstrap: str, topic_name: str, codec: AvroCodec, key: bytes,
                 poll_s: float = 0.5) -> None:
        self.codec, self.key, self.poll_s = codec, key, poll_s
        self.pause: dict[str, Any] | None = None
        self.paused_s = 0.0  # time spent waiting while paused
        self._at = 0.0
        # the broker answers a fetch as soon as the switch flips, not after its usual wait
        self.consumer = consumer(bootstrap, f"tripwire-control-{uuid.uuid4().hex[:8]}",
                                 **{"enable.auto.commit": False,
                                    "fetch.wait.max.ms": max(10, int(poll_s * 500))})
        with closed_on_failure(self.consumer):
            self._catch_up(topic_name)

    def _catch_up(self, topic_name: str) -> None:
        # one key: its records on one partition, in order
        parts = self.consumer.list_topics(topic_name, timeout=30).topics[topic_name].partitions
        tps = [TopicPartition(topic_name, p, OFFSET_BEGINNING) for p in parts]
        self.consumer.assign(tps)
        # the switch as it is now, before the first delivery: read to the end (a
        # topic just made may not have its leader yet: asked again while it settles)
        ends = {tp.partition: watermarks(self.consumer, tp)[1] for tp in tps}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.read(force=True)
            pos = {tp.partition: tp.offset for tp in self.consumer.position(tps)}
            if all(end <= 0 or pos[p] >= end for p, end in ends.items()):
                break

    def read(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._at < self.poll_s:
            return
        self._at = now
        for m in self.consumer.consume(100, 0.2 if force else 0):
            if m.error() is None and m.key() == self.key:
                was = self.pause
                self.pause = paused_state(self.codec, m.value())
                if (was is None) != (self.pause is None):
                    logger.warning("%s %s", self.key.decode(), "paused: " + self.pause["reason"]
                                   if self.pause else "resumed")

    def paused(self) -> bool:
        self.read()
        return self.pause is not None

    def wait_while_paused(self, stop: threading.Event) -> None:
        started = time.monotonic()
        while self.paused() and not stop.is_set():
            stop.wait(self.poll_s)
        self.paused_s += time.monotonic() - started

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.consumer.close()
