"""The customer-alert sender: alerts from ``tripwire.customer-alerts.v1`` to an SMS
or push gateway over HTTP, each ending sent, summarised, expired or dead — and
recorded so, once, on ``tripwire.alert-deliveries.v1``.

* **Idempotent delivery.** Each POST carries the alert's id as its
  ``Idempotency-Key`` (the id is derived from the decision and the action, so a
  resend is recognisable). A 2xx is delivered; a 5xx, 408, 429, a timeout or a
  refused connection is tried again with exponential backoff, up to
  ``give_up_after_s``; a 4xx that retrying cannot cure, or the time running out,
  sends the alert to the dead-letter topic with the reason
  (``tripwire alerts replay-dead`` sends it again).
* **Nothing lost, memory bounded.** The sender holds one batch; a slow or down
  gateway stops it there and the rest waits in Kafka, visible as the group's
  lag. Outcome records and the input offsets commit in one transaction after
  the batch's deliveries, so a crash sends the unfinished batch again — the
  gateway sees the same idempotency keys — and records each outcome once.
* **A global pause.** The latest record on the compacted
  ``tripwire.alert-control.v1`` says whether customer alerts are paused (by the
  system-wide monitor, an applier action, or ``tripwire alerts pause``). While
  paused no delivery starts: alerts stay in Kafka, in order, and are counted
  (``tripwire alerts status``). Every sender sees the pause within
  ``control_poll_s``.
* **Stale alerts.** An alert older than ``stale_after_ms`` when its turn comes —
  after a pause, or a long outage — is handled by ``on_stale``: ``summarise`` (one
  message per customer for all of theirs in the batch, "we stopped some unusual
  activity"), ``expire`` (recorded, not sent) or ``send``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from confluent_kafka import Message, TopicPartition

from tripwire.connectors.control_watch import CONTROL_KEY, ControlWatch
from tripwire.connectors.http_post import post_until_taken
from tripwire.connectors.kafka import closed_on_failure, consumer, producer, serve_batches
from tripwire.schemas.codec import AvroCodec, DecodeError

__all__ = ["DELIVERY_SCHEMA", "AlertSender", "SenderConfig",
           "SenderStats"]

logger = logging.getLogger(__name__)

DELIVERY_SCHEMA = "tripwire.alerts.AlertDelivery"


@dataclass(frozen=True)
class SenderConfig:
    gateway_url: str
    timeout_s: float = 5.0  # one HTTP attempt
    give_up_after_s: float = 3600.0  # of failed attempts, then the dead-letter topic
    backoff_s: tuple[float, float] = (0.2, 30.0)  # first wait, longest wait
    concurrency: int = 16  # customers sent to at once (each customer's alerts in order)
    batch_size: int = 200
    stale_after_ms: int = 60 * 60_000
    on_stale: Literal["summarise", "expire", "send"] = "summarise"
    control_poll_s: float = 0.5


@dataclass
class SenderStats:
    outcomes: Counter[str] = field(default_factory=Counter)  # SENT, SUMMARISED, ...
    attempts: int = 0
    failures: int = 0  # attempts that failed and were tried again
    batches: int = 0
    paused_s: float = 0.0


@dataclass
class _Outcome:
    status: str  # SENT, SUMMARISED, EXPIRED, DEAD
    attempts: int = 0
    detail: str = ""
    summary_id: str | None = None


class AlertSender:
    """One sender worker (several share the group: partitions spread over them)."""

    def __init__(self, bootstrap: str, topics: Callable[[str], str], codec: AvroCodec,
                 config: SenderConfig, group: str, *,
                 now_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self.codec, self.config, self.topic, self.now_ms = codec, config, topics, now_ms
        self.stats = SenderStats()
        self.consumer = consumer(bootstrap, group, **{"enable.partition.eof": False})
        self.consumer.subscribe([topics("customer_alerts")])
        # a start that fails closes what it opened (kafka.closed_on_failure)
        with closed_on_failure(self.consumer):
            self.control = ControlWatch(bootstrap, topics("alert_control"), codec,
                                        CONTROL_KEY, config.control_poll_s)
            with closed_on_failure(self.control):
                self.producer = producer(bootstrap, **{
                    "transactional.id": f"{group}-{uuid.uuid4().hex[:12]}"})
                self.producer.init_transactions(30)
        self.http = httpx.Client(timeout=config.timeout_s)
        self.pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="alert-send")

    def wait_while_paused(self, stop: threading.Event) -> None:
        self.control.wait_while_paused(stop)
        self.stats.paused_s = self.control.paused_s

    # -- the loop -----------------------------------------------------------------
    def run(self, stop: threading.Event, idle_exit: float | None = None) -> SenderStats:
        """Send until ``stop`` is set (or, with ``idle_exit``, nothing came for that long)."""
        try:
            serve_batches(self.consumer, self.config.batch_size,
                          lambda msgs: self._batch(msgs, stop), stop, idle_exit=idle_exit,
                          holding=self.control.paused, what="alert consumer")
        finally:
            self.close()
        return self.stats

    def _batch(self, msgs: list[Message], stop: threading.Event) -> None:
        alerts: list[tuple[Message, dict[str, Any]]] = []
        outcomes: dict[int, _Outcome] = {}
        for i, m in enumerate(msgs):
            try:
                _, alert = self.codec.decode(m.value() or b"")
                alerts.append((m, alert))
            except DecodeError as exc:
                outcomes[i] = _Outcome("DEAD", 0, f"unreadable: {exc}")
                alerts.append((m, {"alert_id": f"unreadable@{m.partition()}:{m.offset()}",
                                   "account_id": ""}))
        by_account: dict[str, list[int]] = defaultdict(list)
        now = self.now_ms()
        stale: dict[str, list[int]] = defaultdict(list)
        for i, (_, a) in enumerate(alerts):
            if i in outcomes:
                continue
            if self.config.on_stale != "send" and \
                    now - a["created_at"] > self.config.stale_after_ms:
                stale[a["account_id"]].append(i)
            else:
                by_account[a["account_id"]].append(i)
        for account, idx in stale.items():
            if self.config.on_stale == "expire":
                for i in idx:
                    outcomes[i] = _Outcome("EXPIRED", 0, "stale: older than "
                                           f"{self.config.stale_after_ms // 60_000} min")
                continue
            ids = sorted(alerts[i][1]["alert_id"] for i in idx)
            summary_id = hashlib.sha256("|".join(ids).encode()).hexdigest()[:32]
            body = {"alert_id": summary_id, "account_id": account, "template": "alerts_summary",
                    "parameters": {"count": str(len(idx))}, "summarises": ids}
            got = self._deliver(summary_id, body, stop)
            for i in idx:
                outcomes[i] = _Outcome("SUMMARISED" if got.status == "SENT" else got.status,
                                       got.attempts, got.detail, summary_id)
        futures = {account: self.pool.submit(self._send_in_order, [alerts[i][1] for i in idx],
                                             stop)
                   for account, idx in by_account.items()}
        for account, idx in by_account.items():
            for i, got in zip(idx, futures[account].result(), strict=True):
                outcomes[i] = got
        self._commit(alerts, outcomes)

    def _send_in_order(self, alerts: list[dict[str, Any]], stop: threading.Event) \
            -> list[_Outcome]:
        """One customer's alerts, one after the other."""
        return [self._deliver(a["alert_id"], {
            "alert_id": a["alert_id"], "account_id": a["account_id"],
            "channel": a["channel"], "template": a["template"],
            "parameters": dict(a["parameters"])}, stop) for a in alerts]

    def _deliver(self, key: str, body: dict[str, Any], stop: threading.Event) -> _Outcome:
        def attempt() -> None:
            self.wait_while_paused(stop)  # no delivery starts while paused
            self.stats.attempts += 1

        def failed() -> None:
            self.stats.failures += 1

        got = post_until_taken(self.http, self.config.gateway_url, body, key,
                               backoff_s=self.config.backoff_s,
                               give_up_after_s=self.config.give_up_after_s, stop=stop,
                               before_attempt=attempt, on_failure=failed)
        return _Outcome("SENT" if got.taken else "DEAD", got.attempts, got.detail)

    def _commit(self, alerts: list[tuple[Message, dict[str, Any]]],
                outcomes: dict[int, _Outcome]) -> None:
        """The batch's outcomes (and dead letters) with its offsets, in one transaction."""
        p = self.producer
        p.begin_transaction()
        deliveries, dead = self.topic("alert_deliveries"), self.topic("customer_alerts_dead")
        now = self.now_ms()
        offsets: dict[tuple[str, int], int] = {}
        for i, (m, a) in enumerate(alerts):
            o = outcomes[i]
            self.stats.outcomes[o.status] += 1
            key = (a.get("account_id") or "").encode()
            p.produce(deliveries, self.codec.encode(DELIVERY_SCHEMA, {
                "alert_id": a["alert_id"], "account_id": a.get("account_id") or "",
                "status": o.status, "attempts": o.attempts, "at": now,
                "detail": o.detail or None, "summary_id": o.summary_id}), key)
            if o.status == "DEAD":
                p.produce(dead, m.value(), key, headers=[("reason", o.detail.encode())])
            offsets[(m.topic() or "", m.partition() or 0)] = (m.offset() or 0) + 1
        p.send_offsets_to_transaction(
            [TopicPartition(t, part, off) for (t, part), off in offsets.items()],
            self.consumer.consumer_group_metadata(), 30)
        p.commit_transaction(30)
        self.stats.batches += 1

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.http.close()
        with contextlib.suppress(RuntimeError):  # already closed
            self.consumer.close()
        self.control.close()
        self.producer.flush(10)
