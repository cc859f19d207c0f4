"""Kafka clients and administration (confluent-kafka), configured in one place."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


class TopicShape(Protocol):
    """What creating a topic needs (tripwire.streams.topics.TopicSpec has it)."""

    @property
    def name(self) -> str: ...
    @property
    def partitions(self) -> int: ...
    def config(self) -> dict[str, str]: ...

__all__ = ["admin", "answer_producer", "closed_on_failure", "consume_available", "consumer",
           "create_topics", "delete_topics", "offsets_by_time", "produce_waiting", "producer",
           "settled", "watermarks"]

logger = logging.getLogger(__name__)

# librdkafka's own log lines (connection churn, coordinator retries) go through
# Python logging under this name instead of straight to stderr.
client_logger = logging.getLogger("tripwire.librdkafka")


class RepeatsBackOff(logging.Filter):
    """Lets a kind of client log line through once, then again only after a delay
    that doubles each time (1 s up to ``max_delay_s``), saying how many were held
    back: a broker away for 20 s cost one line per reconnect attempt of every
    client (1,758 lines from two workers), where one says it all. A kind is the
    line without its numbers, bracketed client names and parenthesised details;
    one not seen for ``max_delay_s`` starts afresh.

    >>> f = RepeatsBackOff(clock=iter([0.0, 0.5, 0.7, 1.2]).__next__)
    >>> def rec(msg):
    ...     return logging.LogRecord("x", logging.ERROR, "", 0, msg, None, None)
    >>> [f.filter(rec(f"FAIL [rdkafka#consumer-{i}]: Connection refused (after {i}ms)"))
    ...  for i in range(4)]
    [True, False, False, True]
    """

    _NOISE = re.compile(r"\[[^\]]*\]|\([^)]*\)|\d+")

    def __init__(self, max_delay_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.max_delay_s = max_delay_s
        self.clock = clock
        self._kinds: dict[str, list[float]] = {}  # kind -> [next allowed, delay, held, last]

    def filter(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        kind = self._NOISE.sub("", record.getMessage())
        seen = self._kinds.get(kind)
        if seen is None or now - seen[3] > self.max_delay_s:
            self._kinds[kind] = [now + 1.0, 1.0, 0, now]
            return True
        seen[3] = now
        if now < seen[0]:
            seen[2] += 1
            return False
        if seen[2]:
            record.msg = f"{record.getMessage()} ({int(seen[2])} more like this held back)"
            record.args = None
        seen[1] = min(seen[1] * 2, self.max_delay_s)
        seen[0], seen[2] = now + seen[1], 0
        return True


client_logger.addFilter(RepeatsBackOff())


def _base(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "logger": client_logger}


def producer(bootstrap: str, **overrides: Any) -> Producer:
    """An idempotent producer (acks=all, no duplicates on retry)."""
    conf: dict[str, Any] = {
        **_base(bootstrap),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
    }
    conf.update(overrides)
    return Producer(conf)


def answer_producer(bootstrap: str, **overrides: Any) -> Producer:
    """A producer for answers: one record per event, sent at once (acks=all,
    one request in flight, so a retry never reorders; a lost acknowledgement can
    repeat a record, which consumers drop by its id). One request in flight is
    per broker connection: the partitions a broker leads take turns, each request
    carrying everything queued for its partition meanwhile.

    Not idempotent, on purpose. librdkafka's idempotent producer counts the
    *messages* in flight on a partition against its limit of 5 requests
    (``rktp_msgs_inflight``; librdkafka PR #4989), so once a request holds 5
    answers it sends nothing more to that partition until the acknowledgement,
    and its broker thread spins meanwhile (the linger has passed, the wake-up is
    "now"). Measured on the live pipeline at 3,000 events/s: the answer
    producers' threads at 97 % of a core each for seconds at a time, 113-252 µs
    of CPU per event against 14-19 µs with this producer (docs/performance.md).
    """
    conf: dict[str, Any] = {
        **_base(bootstrap),
        "enable.idempotence": False,
        "acks": "all",
        "max.in.flight.requests.per.connection": 1,
        "linger.ms": 1,
        "compression.type": "lz4",
    }
    conf.update(overrides)
    return Producer(conf)


_QUEUE_FULL_WARNING_S = 10.0  # at most one warning this often while the queue stays full
_last_queue_full_warning = 0.0


def produce_waiting(p: Producer, topic: str, value: bytes | None, key: bytes | None = None,
                    *, partition: int | None = None, on_delivery: Any = None) -> None:
    """Produce, waiting while librdkafka's local queue is full (the broker slow or
    away): delivery reports are served meanwhile and nothing is dropped, so the
    caller is held back instead of failing with ``BufferError``."""
    global _last_queue_full_warning
    kwargs: dict[str, Any] = {}
    if partition is not None:
        kwargs["partition"] = partition
    if on_delivery is not None:
        kwargs["on_delivery"] = on_delivery
    since = time.monotonic()
    while True:
        try:
            p.produce(topic, value, key, **kwargs)
            return
        except BufferError:
            now = time.monotonic()
            if now - _last_queue_full_warning > _QUEUE_FULL_WARNING_S:
                _last_queue_full_warning = now
                logger.warning("the Kafka producer's local queue is full (broker slow or "
                               "unreachable): waiting for deliveries, nothing is dropped "
                               "(%.1f s so far)", now - since)
            p.poll(0.05)


def consumer(bootstrap: str, group_id: str, **overrides: Any) -> Consumer:
    """A consumer that commits only what it has processed, reading committed data."""
    conf: dict[str, Any] = {
        **_base(bootstrap),
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
    }
    conf.update(overrides)
    return Consumer(conf)


def consume_available(c: Consumer, max_messages: int, timeout: float) -> list[Message]:
    """What has arrived, as soon as anything has: up to ``timeout`` seconds for the
    first message, then whatever else is already fetched, up to ``max_messages``.

    ``Consumer.consume(n, timeout)`` alone waits for ``n`` messages or the whole
    timeout, so at low rates every hop would add the timeout to an event's latency
    (librdkafka #1863, confluent-kafka-python #407).
    """
    first = c.consume(1, timeout)
    if not first or max_messages <= 1:
        return first
    return first + c.consume(max_messages - 1, 0)


def serve_batches(c: Consumer, batch_size: int, handle: Callable[[list[Message]], None],
                  stop: threading.Event, *, idle_exit: float | None = None,
                  holding: Callable[[], bool] = lambda: False, what: str = "consumer") -> None:
    """Hand each batch ``c`` gives to ``handle`` until ``stop`` is set (or nothing has
    come for ``idle_exit`` seconds). While ``holding()`` nothing is consumed, and the
    group is still served (rebalances). Errors other than a partition's end are
    logged and skipped."""
    last = time.monotonic()
    while not stop.is_set():
        if holding():
            parts = c.assignment()
            if parts:
                c.pause(parts)
            c.poll(0.1)
            c.resume(c.assignment())
            last = time.monotonic()
            continue
        msgs = []
        for m in consume_available(c, batch_size, 0.2):
            err = m.error()
            if err is None:
                msgs.append(m)
            elif err.code() != KafkaError._PARTITION_EOF:
                logger.warning("%s: %s", what, err)
        if msgs:
            handle(msgs)
            last = time.monotonic()
        elif idle_exit is not None and time.monotonic() - last > idle_exit:
            return


def admin(bootstrap: str) -> AdminClient:
    return AdminClient(_base(bootstrap))


def create_topics(
    bootstrap: str,
    namespace: str,
    specs: Iterable[TopicShape],
    partitions: int | None = None,
    timeout: float = 30.0,
) -> dict[str, str]:
    """Create ``specs`` if missing; returns name -> "created" | "exists". (The
    declared topics: :func:`tripwire.streams.topics.create_topics`.)"""
    client = admin(bootstrap)
    existing = set(client.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(f"{namespace}{s.name}", num_partitions=partitions or s.partitions,
                 replication_factor=-1, config=s.config())
        for s in specs
    ]
    result = {t.topic: "exists" for t in wanted if t.topic in existing}
    todo = [t for t in wanted if t.topic not in existing]
    if todo:
        for name, fut in client.create_topics(todo, operation_timeout=timeout).items():
            try:
                fut.result(timeout)
                result[name] = "created"
            except KafkaException as exc:
                if exc.args[0].name() == "TOPIC_ALREADY_EXISTS":
                    result[name] = "exists"
                else:
                    raise
        _wait_for_leaders(client, [t.topic for t in todo], timeout)
    return result


def _wait_for_leaders(client: AdminClient, names: list[str], timeout: float) -> None:
    """New topics are usable once every partition has a leader."""
    deadline = time.monotonic() + timeout
    waiting = set(names)
    while waiting and time.monotonic() < deadline:
        md = client.list_topics(timeout=timeout)
        for name in list(waiting):
            t = md.topics.get(name)
            if t is not None and t.error is None and t.partitions and \
                    all(p.leader >= 0 and p.error is None for p in t.partitions.values()):
                waiting.discard(name)
        if waiting:
            time.sleep(0.05)
    if waiting:
        raise KafkaException(f"topics without a leader after {timeout}s: {sorted(waiting)}")


def delete_topics(bootstrap: str, names: Iterable[str], timeout: float = 30.0) -> None:
    names = list(names)
    if not names:
        return
    for fut in admin(bootstrap).delete_topics(names, operation_timeout=timeout).values():
        try:
            fut.result(timeout)
        except KafkaException as exc:
            logger.warning("could not delete topic: %s", exc)


T = TypeVar("T")

# errors of a cluster settling (a broker restarted, a topic just created: a leader or
# coordinator moving, a connection refused), asked again for a while
SETTLING = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
            KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION,
            KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT,
            KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
            KafkaError.COORDINATOR_LOAD_IN_PROGRESS)


def settled(ask: Callable[[], T], what: str, within_s: float = 60.0,
            meanwhile: Callable[[], None] = lambda: None) -> T:
    """``ask()``, asked again for up to ``within_s`` while the cluster settles (a
    retriable error or one of :data:`SETTLING`); ``meanwhile`` runs between tries
    (a stop check may raise)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return ask()
        except KafkaException as exc:
            err = exc.args[0]
            if not (err.retriable() or err.code() in SETTLING) or time.monotonic() > deadline:
                raise
            meanwhile()
            logger.info("waiting for %s: %s", what, err)
            time.sleep(0.2)


class Closable(Protocol):
    def close(self) -> Any: ...


@contextlib.contextmanager
def closed_on_failure(c: Closable) -> Iterator[None]:
    """Closes ``c`` (a consumer, or what holds one) if the block raises, so that a
    start that fails leaves nothing open: a consumer left to the garbage collector
    can hang the process for good in librdkafka's destroy (seen: the main thread
    joining, ``rdk:main`` spinning). The block's error is what is raised."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            c.close()
        raise


# a partition or topic the client's metadata does not hold
UNKNOWN = (KafkaError._UNKNOWN_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART,
           KafkaError._UNKNOWN_TOPIC)


def _refreshing(c: Consumer, topics: Iterable[str], ask: Callable[[], T]) -> Callable[[], T]:
    """``ask``, which after an error of :data:`UNKNOWN` first asks the broker for
    the topics' metadata, then raises (for :func:`settled` to ask again).
    librdkafka answers offset queries from the metadata it holds and does not ask
    again by itself: a client whose first metadata came from a broker shutting
    down held a topic with no partitions, and "Unknown partition" for every ask,
    until it was asked for (seen after a broker restart: a restore failed after
    60 s of it; tests/integration/test_consume.py)."""
    names = sorted(set(topics))

    def asked() -> T:
        try:
            return ask()
        except KafkaException as exc:
            if exc.args[0].code() in UNKNOWN:
                for name in names:
                    with contextlib.suppress(KafkaException):
                        c.list_topics(name, timeout=2)
            raise
    return asked


def watermarks(c: Consumer, tp: TopicPartition, within_s: float = 30.0,
               meanwhile: Callable[[], None] = lambda: None) -> tuple[int, int]:
    """(low, high) offsets of ``tp``, asked again while leadership settles (a topic
    just made, a broker just restarted): :func:`settled`; each ask waits at most 2 s."""
    def ask() -> tuple[int, int]:
        low, high = c.get_watermark_offsets(tp, timeout=min(2.0, within_s))
        return int(low), int(high)
    return settled(_refreshing(c, [tp.topic], ask),
                   f"the offsets of {tp.topic}[{tp.partition}]", within_s, meanwhile)


def offsets_by_time(c: Consumer, tps: list[TopicPartition], within_s: float = 30.0,
                    meanwhile: Callable[[], None] = lambda: None) -> list[TopicPartition]:
    """The earliest offset of each partition whose record time is at least its
    ``offset`` field (-1: none that recent), asked again while the cluster settles
    (:func:`settled`, :func:`_refreshing`)."""
    def ask() -> list[TopicPartition]:
        return list(c.offsets_for_times(tps, timeout=min(10.0, within_s)))
    return settled(_refreshing(c, (tp.topic for tp in tps), ask), "offsets by time",
                   within_s, meanwhile)
