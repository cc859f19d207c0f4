"""Sinks: every record of a tripwire topic forwarded to where people look — the
SOC's webhook or SIEM file, the engineers' on-call webhook, a case tool.

A sink reads one topic as a consumer group, decodes each record (Avro, to JSON)
and delivers it to a webhook (:func:`~tripwire.connectors.http_post.post_until_taken`:
the record's id as its idempotency key, retried with backoff) and/or appends it,
one JSON line each, to a file (flushed and synced before the offsets commit).
Offsets commit after the batch is delivered, so a crash delivers the batch again:
at least once, with the same keys (a webhook keeps one of each; a file line
carries the key for the reader to do the same). A receiver that stays down holds
the sink where it is, one batch in memory, the rest waiting in Kafka; none is
skipped. A record the receiver refuses for good (a 4xx) is logged with its
position and counted, and the sink goes on.

    tripwire sink run ops_alerts --webhook https://oncall.example/hook
    tripwire sink run soc_alerts --webhook https://soc.example/hook \
        --file /var/log/tripwire-soc.jsonl
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from confluent_kafka import Message

from tripwire.connectors.control_watch import ControlWatch, sink_control_key
from tripwire.connectors.http_post import post_until_taken
from tripwire.connectors.kafka import closed_on_failure, consumer, serve_batches
from tripwire.schemas.codec import AvroCodec, DecodeError

__all__ = ["ID_FIELDS", "Sink", "SinkStats"]

logger = logging.getLogger(__name__)

# the field that identifies a record of each schema (its idempotency key)
ID_FIELDS = ("alert_id", "action_id", "audit_id", "decision_id", "quarantine_id", "case_id")


@dataclass
class SinkStats:
    delivered: int = 0
    refused: int = 0  # refused for good by the webhook (logged with their position)
    unreadable: int = 0
    attempts: int = 0
    batches: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class Sink:
    """One sink worker for ``topic_name``."""

    def __init__(self, bootstrap: str, topic_name: str, codec: AvroCodec, group: str, *,
                 webhook: str | None = None, file: Path | None = None,
                 backoff_s: tuple[float, float] = (0.2, 30.0), timeout_s: float = 5.0,
                 batch_size: int = 200, control_topic: str | None = None) -> None:
        if not webhook and file is None:
            raise ValueError("a sink needs a webhook, a file, or both")
        self.codec, self.webhook, self.file = codec, webhook, file
        self.backoff_s, self.batch_size = backoff_s, batch_size
        self.stats = SinkStats()
        self.consumer = consumer(bootstrap, group)
        self.consumer.subscribe([topic_name])
        self.http = httpx.Client(timeout=timeout_s) if webhook else None
        # `tripwire sink pause GROUP`: a sink whose retries misbehave (a reversal loop
        # hammering a bank system) stops sending, holding where it is, until resumed
        with closed_on_failure(self.consumer):
            self.control = None if control_topic is None else \
                ControlWatch(bootstrap, control_topic, codec, sink_control_key(group))

    def run(self, stop: threading.Event, idle_exit: float | None = None) -> SinkStats:
        try:
            serve_batches(self.consumer, self.batch_size, lambda msgs: self._batch(msgs, stop),
                          stop, idle_exit=idle_exit, what="sink consumer")
        finally:
            self.consumer.close()
            if self.control is not None:
                self.control.close()
            if self.http is not None:
                self.http.close()
        return self.stats

    def _record(self, m: Message) -> dict[str, Any] | None:
        try:
            schema, rec = self.codec.decode(m.value())
        except DecodeError as exc:
            self.stats.unreadable += 1
            logger.error("%s[%d]@%d unreadable (%s); skipped", m.topic(), m.partition(),
                         m.offset(), exc)
            return None
        key = next((str(rec[f]) for f in ID_FIELDS if rec.get(f)),
                   f"{m.topic()}:{m.partition()}:{m.offset()}")
        if rec.get("status"):  # an action done, then undone: two deliveries, two keys
            key = f"{key}:{rec['status']}"
        return {"key": key, "schema": schema.name, "topic": m.topic(),
                "partition": m.partition(), "offset": m.offset(), "record": rec}

    def _batch(self, msgs: list[Message], stop: threading.Event) -> None:
        items = [r for r in (self._record(m) for m in msgs) if r is not None]
        if self.file is not None and items:
            with self.file.open("ab") as f:
                for it in items:
                    f.write(orjson.dumps(it) + b"\n")
                f.flush()
                os.fsync(f.fileno())
        if self.http is not None and self.webhook:
            def attempt() -> None:
                if self.control is not None:
                    self.control.wait_while_paused(stop)

            for it in items:
                got = post_until_taken(self.http, self.webhook, it, it["key"],
                                       backoff_s=self.backoff_s, give_up_after_s=float("inf"),
                                       stop=stop, before_attempt=attempt)
                self.stats.attempts += got.attempts
                if not got.taken:
                    if stop.is_set():
                        return  # not committed: delivered again by whoever runs next
                    self.stats.refused += 1
                    logger.error("%s refused for good by %s (%s[%d]@%d): %s", it["key"],
                                 self.webhook, it["topic"], it["partition"], it["offset"],
                                 got.detail)
        for it in items:
            kind = it["record"].get("kind") or it["schema"].rsplit(".", 1)[-1]
            self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0) + 1
        self.stats.delivered += len(items)
        self.consumer.commit(asynchronous=False)
        self.stats.batches += 1
