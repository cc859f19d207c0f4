"""The pieces of a loop's transactions: their settings, the chunk of work one
carries, the thread that runs them, blocking calls retried while the broker is
busy or away, and producing without dropping (used by
:class:`~tripwire.streams.commits.Commits`)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException

from tripwire.connectors.kafka import produce_waiting
from tripwire.schemas.records import TP, OutRecord

__all__ = ["COMMIT_STUCK_S", "HOPS", "OFFSETS_STUCK_S", "TXN_CALL_S", "TXN_RETRY",
           "TXN_TIMEOUT_MS", "Pending", "send_outputs"]

logger = logging.getLogger(__name__)


# A transaction begun just after the previous commit meets CONCURRENT_TRANSACTIONS
# until the broker has written the commit markers; librdkafka then waits its retry
# backoff, 100 ms by default. Measured (bench txn): back-to-back transactions
# p50 103 ms with the default, 10.5 ms with 5 ms.
TXN_RETRY = {"retry.backoff.ms": 5, "retry.backoff.max.ms": 100}
TXN_TIMEOUT_MS = 20_000  # see BatchLoop.__init__
# one try of a blocking transactional call: _resuming tries again (and logs why),
# and a loop told to stop notices within this long
TXN_CALL_S = 5.0
# a transaction not finished after this long is given up (BatchLoop._unstick): the
# coordinator aborts one older than TXN_TIMEOUT_MS anyway; a
# broker away for longer holds the loop in init_transactions until it is back
COMMIT_STUCK_S = 30.0
# ... and one this long in send_offsets_to_transaction (Commits._stuck_at)
OFFSETS_STUCK_S = 10.0
HOPS = {"linger.ms": 5, "message.timeout.ms": 0}  # internal records' producer: BatchLoop.__init__


def _resuming(call: Callable[[], object], what: str, patience: float = 600.0,
              until: Callable[[], float | None] = lambda: None) -> None:
    """Call a blocking transactional operation; when it times out with a retriable
    error (librdkafka: "retry call to resume", e.g. a broker busy or away), call
    it again rather than fail the worker — for up to ``patience`` seconds, or
    until the monotonic time ``until()`` gives (looked at before each try: a loop
    that is stopping gives up at its deadline). Errors that need an abort, fatal
    ones and others are raised."""
    deadline = time.monotonic() + patience
    while True:
        try:
            call()
            return
        except KafkaException as exc:
            err = exc.args[0]
            now = time.monotonic()
            stop_by = until()
            if not err.retriable() or err.txn_requires_abort() or err.fatal() or \
                    now > deadline or (stop_by is not None and now > stop_by):
                raise
            logger.warning("%s: %s; trying again", what, err)


Pending = tuple[str, TP, bytes, "bytes | None"]


@dataclass
class _Chunk:
    """What one transaction carries: the work since the previous one.

    ``outputs`` and ``changes`` are what is not produced yet: the loop produces
    them into the open transaction after each batch while the committer is idle
    (``begun``), and the committer produces the rest at hand-over."""

    started: float = field(default_factory=time.monotonic)
    events: int = 0
    outputs: list[OutRecord] = field(default_factory=list)
    # changelog records, the last write of each (store, partition, key) since the
    # last time they were produced
    changes: dict[tuple[str, TP, bytes], bytes | None] = field(default_factory=dict)
    # keys produced early into the transaction: written again, they wait for the
    # hand-over (a key written every batch goes twice per commit, not every batch)
    sent: set[tuple[str, TP, bytes]] = field(default_factory=set)
    offsets: dict[TP, int] = field(default_factory=dict)
    group: Any = None  # the consumer group metadata at hand-over
    eager_upto: int = 0  # eager outputs sent before the hand-over: acknowledged first
    begun: bool = False  # its transaction is open, some of its records in it
    failed: bool = False  # producing early failed: the committer aborts it
    produced: Counter[str] = field(default_factory=Counter)  # outputs produced, by topic key
    # where its commit is (for the message when one is given up): waiting to start,
    # acknowledgements, producing, offsets, committing, done
    phase: str = "waiting for the committer"
    offsets_since: float | None = None  # when it began adding the input offsets
    given_up: bool = False  # the loop went on without it (Commits._unstick)

    def __bool__(self) -> bool:
        return bool(self.begun or self.outputs or self.changes or self.offsets)

    def busy(self) -> bool:
        """Anything but input offsets: records to produce, state changed, or its
        transaction open."""
        return bool(self.begun or self.outputs or self.changes)

    def add(self, outputs: list[OutRecord], pending: list[Pending],
            offsets: dict[TP, int], events: int) -> None:
        self.outputs += outputs
        changes = self.changes
        for store, tp, key, value in pending:
            changes[(store, tp, key)] = value
        self.offsets.update(offsets)
        self.events += events


class _Committer:
    """One daemon thread running the loop's transactions, one at a time. Not a
    ThreadPoolExecutor: its threads are joined at interpreter exit, and a
    librdkafka call that never returns (see BatchLoop._unstick) then kept a
    stopped worker alive for ever."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Future[bool], Callable[[_Chunk], bool],
                                             _Chunk] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[_Chunk], bool], chunk: _Chunk) -> Future[bool]:
        f: Future[bool] = Future()
        self._queue.put((f, fn, chunk))
        return f

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            f, fn, chunk = job
            if f.set_running_or_notify_cancel():
                try:
                    f.set_result(fn(chunk))
                except BaseException as exc:
                    f.set_exception(exc)

    def shutdown(self, timeout: float) -> None:
        """Finish the transaction under way, waiting ``timeout`` seconds at most."""
        self._queue.put(None)
        self._thread.join(timeout)


def send_outputs(producer: Any, outputs: Sequence[OutRecord], topic_of: Callable[[str], str],
                 on_delivery: Any = None) -> None:
    """Produce ``outputs`` (``topic_of``: topic key → topic name). When librdkafka's
    local queue is full — the broker slow or away — wait for deliveries instead
    of failing: the loop is held back and nothing is dropped."""
    produce = producer.produce
    for o in outputs:
        try:
            if o.partition is None:
                produce(topic_of(o.topic_key), o.value, o.key, on_delivery=on_delivery)
            else:
                produce(topic_of(o.topic_key), o.value, o.key, partition=o.partition,
                        on_delivery=on_delivery)
        except BufferError:
            produce_waiting(producer, topic_of(o.topic_key), o.value, o.key,
                            partition=o.partition, on_delivery=on_delivery)
