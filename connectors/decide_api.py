"""Inline decisions: ``POST /v1/decide`` answers within a deadline, over the same
Kafka pipeline (an ASGI app, starlette; ``tripwire decide serve`` runs it on
uvicorn with several workers).

A request is signed as for ``POST /v1/events`` (:mod:`tripwire.connectors.http_ingest`:
``X-Tripwire-Key-Id``, ``X-Tripwire-Timestamp``, ``X-Tripwire-Signature``, an
optional ``Idempotency-Key``, the *reference*, by default the event id). Then:

1. the event is validated (``422`` with every reason otherwise) and published to
   its input topic, as the ingest endpoint does;
2. the worker waits for its decision on the decisions topic: one reply consumer
   per worker reads every partition and decodes only the records of the entity
   keys it waits for, matching by the event's identity (a repeat's decision
   carries the first event's);
3. past its event type's deadline (less ``margin_ms`` to record the answer), or
   when Kafka does not take the event, the answer is the **stand-in**
   (:mod:`tripwire.controls.standin`), marked ``stand_in``;
4. the answer is recorded (an ANSWER record on ``tripwire.decide-answers.v1``) and
   the worker reads that topic up to its record: the **first** answer recorded
   for a reference is its answer for good, whichever worker gave it. Every worker
   reads the topic from ``remember_s`` ago on start, so a repeat gets the same
   answer from any worker and after restarts (``repeat: true``); a reference
   reused for another body gets ``409``.

The pipeline decides a stand-in's event all the same; the reconcile stage
(:mod:`tripwire.streams.reconcile`) writes that decision beside the stand-in and
raises an ops alert when they disagree.

Answers: ``200`` with ``{reference, event_id, event_type, outcome, actions,
stand_in, reason, decision_id, deadline_ms, latency_ms, repeat, event_taken}``
(``event_taken``: Kafka acknowledged the event; false or null only with a stand-in,
when Kafka is away); ``401``/``413``/``422``/``409`` as the ingest endpoint;
``503`` while the worker is starting. ``GET /metrics``: the latency per event
type and answer (pipeline, stand-in, repeat) and the answers counted, for
Prometheus; ``GET /healthz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tripwire.connectors.http_ingest import Signed, _problem
from tripwire.connectors.kafka import (
    closed_on_failure,
    consume_available,
    consumer,
    offsets_by_time,
    watermarks,
)
from tripwire.connectors.sdk import InvalidEvent, TripwireProducer
from tripwire.controls.decider import DECISION_SCHEMA
from tripwire.controls.standin import (
    ANSWER_SCHEMA,
    DEFAULT_STAND_IN,
    StandInPolicy,
    decision_identity,
    event_identity,
    parse_deadlines,
)
from tripwire.schemas.codec import AvroCodec, DecodeError
from tripwire.streams.topics import topic

__all__ = ["DecideConfig", "Served", "create_app", "from_environment"]

logger = logging.getLogger(__name__)

# seconds: what a histogram bucket holds (a deadline is 1 ms to 30 s)
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
            5.0, 10.0, 30.0)


@dataclass
class DecideConfig:
    keys: Mapping[str, bytes]
    deadlines_ms: Mapping[str, int] = field(default_factory=lambda: parse_deadlines(""))
    policy: StandInPolicy = field(default_factory=lambda: StandInPolicy.parse(DEFAULT_STAND_IN))
    margin_ms: int = 20  # kept from each deadline to record the answer and read it back
    remember_s: int = 3600  # how long a reference's answer is kept for its repeats
    tolerance_s: int = 300
    max_body_bytes: int = 256 * 1024
    ack_timeout_s: float = 5.0  # an answer's record: how long Kafka is waited for
    start_timeout_s: float = 60.0
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


class _Replies:
    """The worker's one reply consumer: every partition of the decisions topic,
    from its end when the worker starts; a waiter is woken with its decision."""

    def __init__(self, bootstrap: str, name: str, codec: AvroCodec) -> None:
        self.bootstrap, self.name, self.codec = bootstrap, name, codec
        self.consumer: Consumer  # made when the app starts (assign), closed by run
        self.keys: dict[bytes, int] = {}  # entity key -> waiters
        self.waiting: dict[str, list[Callable[[dict[str, Any]], None]]] = {}
        self.lock = threading.Lock()

    def assign(self) -> None:
        """Opens the consumer at the topic's end (closed again if that fails)."""
        self.consumer = consumer(self.bootstrap,
                                 f"tripwire-decide-replies-{uuid.uuid4().hex[:12]}",
                                 **{"fetch.wait.max.ms": 50, "enable.partition.eof": False})
        with closed_on_failure(self.consumer):
            md = self.consumer.list_topics(self.name, timeout=30).topics[self.name]
            if md.error is not None:
                raise RuntimeError(f"{self.name}: {md.error}")
            # explicit offsets: a decision written before the first fetch is not missed
            tps = [TopicPartition(self.name, p) for p in md.partitions]
            for tp in tps:
                tp.offset = watermarks(self.consumer, tp)[1]
            self.consumer.assign(tps)

    def watch(self, key: bytes, identity: str,
              wake: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Call ``wake`` with the decision of ``identity`` (its entity: ``key``) when it
        comes; returns what stops the watch."""
        with self.lock:
            self.keys[key] = self.keys.get(key, 0) + 1
            self.waiting.setdefault(identity, []).append(wake)

        def forget() -> None:
            with self.lock:
                left = self.keys.get(key, 0) - 1
                if left > 0:
                    self.keys[key] = left
                else:
                    self.keys.pop(key, None)
                wakes = self.waiting.get(identity, [])
                if wake in wakes:
                    wakes.remove(wake)
                if not wakes:
                    self.waiting.pop(identity, None)
        return forget

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                for m in consume_available(self.consumer, 1000, 0.1):
                    if m.error() is not None:
                        continue
                    if m.key() not in self.keys:
                        continue
                    try:
                        schema, decision = self.codec.decode(m.value())
                    except DecodeError:
                        continue
                    if schema.name != DECISION_SCHEMA:
                        continue
                    with self.lock:
                        wakes = list(self.waiting.get(decision_identity(decision), ()))
                    for wake in wakes:
                        wake(decision)
        finally:
            self.consumer.close()


class _Book:
    """The answers every worker gave, read from ``remember_s`` ago: the first per
    reference is its answer. Read uncommitted: ANSWER records are written outside
    transactions, and a reconcile stage's open transaction must not hold them up."""

    def __init__(self, bootstrap: str, name: str, codec: AvroCodec, remember_s: int) -> None:
        self.bootstrap, self.name, self.codec = bootstrap, name, codec
        self.remember_ms = remember_s * 1000
        self.consumer: Consumer  # made when the app starts (assign), closed by run
        self.first: dict[str, dict[str, Any]] = {}  # reference -> its first answer
        self._order: deque[tuple[int, str]] = deque()  # (answered_at, reference)
        self.position: dict[int, int] = {}  # partition -> next offset to read
        self._until: dict[int, int] = {}  # what was there at the start
        self.ready = threading.Event()
        self._waits: list[tuple[int, int, Callable[[], None]]] = []
        self.lock = threading.Lock()

    def assign(self, now_ms: int) -> None:
        """Opens the consumer ``remember_s`` back (closed again if that fails)."""
        self.consumer = consumer(self.bootstrap,
                                 f"tripwire-decide-answers-{uuid.uuid4().hex[:12]}",
                                 **{"fetch.wait.max.ms": 50,
                                    "isolation.level": "read_uncommitted"})
        with closed_on_failure(self.consumer):
            md = self.consumer.list_topics(self.name, timeout=30).topics[self.name]
            if md.error is not None:
                raise RuntimeError(f"{self.name}: {md.error}")
            since = [TopicPartition(self.name, p, now_ms - self.remember_ms)
                     for p in md.partitions]
            starts = offsets_by_time(self.consumer, since)
            tps = []
            for tp in starts:
                low, high = watermarks(self.consumer, TopicPartition(self.name, tp.partition))
                start = high if tp.offset < 0 else max(tp.offset, low)
                self.position[tp.partition] = start
                if high > start:
                    self._until[tp.partition] = high
                tps.append(TopicPartition(self.name, tp.partition, start))
            self.consumer.assign(tps)
        if not self._until:
            self.ready.set()

    def when_read(self, partition: int, offset: int, then: Callable[[], None]) -> None:
        """Call ``then`` once the record at ``offset`` of ``partition`` has been read."""
        with self.lock:
            if self.position.get(partition, 0) > offset:
                then()
            else:
                self._waits.append((partition, offset, then))

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                msgs = consume_available(self.consumer, 1000, 0.1)
                for m in msgs:
                    if m.error() is None:
                        self._take(m.partition() or 0, m.offset() or 0, m.value())
                if msgs or not self.ready.is_set():
                    self._progress()
                self._forget(int(time.time() * 1000) - self.remember_ms)
        finally:
            self.consumer.close()

    def _take(self, partition: int, offset: int, value: bytes | None) -> None:
        self.position[partition] = offset + 1
        if value is None:
            return
        try:
            schema, rec = self.codec.decode(value)
        except DecodeError:
            return
        if schema.name != ANSWER_SCHEMA or rec["kind"] != "ANSWER":
            return
        ref = rec["reference"]
        if ref not in self.first:
            self.first[ref] = rec
            self._order.append((rec["answered_at"], ref))

    def _progress(self) -> None:
        with self.lock:
            ready = [w for w in self._waits if self.position.get(w[0], 0) > w[1]]
            self._waits = [w for w in self._waits if self.position.get(w[0], 0) <= w[1]]
        for _, _, then in ready:
            then()
        if not self.ready.is_set():
            # a transaction's marker takes the last offset: positions, not records
            at = {tp.partition: tp.offset for tp in self.consumer.position(
                [TopicPartition(self.name, p) for p in self._until])}
            if all(at.get(p, 0) >= high for p, high in self._until.items()):
                self.ready.set()

    def _forget(self, before_ms: int) -> None:
        while self._order and self._order[0][0] < before_ms:
            _, ref = self._order.popleft()
            self.first.pop(ref, None)


class _Metrics:
    def __init__(self) -> None:
        multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        if multiprocess:  # several uvicorn workers: a scrape reads them all
            from prometheus_client import multiprocess as mp

            mp.MultiProcessCollector(self.registry)
        own = None if multiprocess else self.registry
        self.latency = Histogram("tripwire_decide_seconds", "Time to answer a decide request, "
                                 "by event type and answer (pipeline, stand_in, repeat)",
                                 ["event_type", "answer"], buckets=_BUCKETS, registry=own)
        self.answers = Counter("tripwire_decide_answers", "Decide requests answered, by event "
                               "type and answer (stand-in rate: stand_in / all)",
                               ["event_type", "answer"], registry=own)
        self.unrecorded = Counter("tripwire_decide_unrecorded", "Answers Kafka did not take "
                                  "in time (a repeat may get another answer)", registry=own)

    def observe(self, event_type: str, answer: str, seconds: float) -> None:
        self.latency.labels(event_type, answer).observe(seconds)
        self.answers.labels(event_type, answer).inc()


def create_app(producer: TripwireProducer, bootstrap: str, config: DecideConfig,
               namespace: str = "", clock: Callable[[], float] = time.time) -> Starlette:
    codec = producer.codec
    signed = Signed(config.keys, config.tolerance_s, config.max_body_bytes, clock)
    replies = _Replies(bootstrap, topic("decisions", namespace), codec)
    book = _Book(bootstrap, topic("decide_answers", namespace), codec, config.remember_s)
    answers_topic = topic("decide_answers", namespace)
    metrics = _Metrics()
    stop = threading.Event()
    inflight: dict[str, asyncio.Future[tuple[int, bytes]]] = {}

    def pump() -> None:  # delivery reports, while the app runs
        while not stop.is_set():
            producer.poll(0.05)

    async def decide(request: Request) -> Response:
        started = time.monotonic()
        body = await signed.read(request)
        if isinstance(body, tuple):
            return Response(body[1], body[0], media_type="application/json")
        if not book.ready.is_set():
            return _json(503, {"error": "starting", "reasons": [{
                "code": "STARTING", "field": None,
                "detail": "the worker is still reading the answers already given"}]})
        try:
            model, record = producer.check(body)
        except InvalidEvent as exc:
            return _json(*_problem(422, "invalid_event", exc.reasons))
        reference = request.headers.get("idempotency-key") or model.event_id
        digest = hashlib.sha256(body).hexdigest()
        while True:
            known = book.first.get(reference)
            if known is not None:
                return _repeat(known, digest, model.event_type, started)
            pending = inflight.get(reference)
            if pending is None:
                break
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        inflight[reference] = fut
        try:
            status, payload = await _decide(model, record, reference, digest, started)
            fut.set_result((status, payload))
            return Response(payload, status, media_type="application/json")
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: a concurrent repeat asks again
            raise
        finally:
            inflight.pop(reference, None)

    def _repeat(answer: dict[str, Any], digest: str, event_type: str,
                started: float) -> Response:
        if answer["request_hash"] != digest:
            return _json(*_problem(409, "conflict", [(
                "IDEMPOTENCY_KEY_REUSED", "Idempotency-Key",
                "this reference was answered for a different body")]))
        metrics.observe(event_type, "repeat", time.monotonic() - started)
        return _json(200, _body(answer, started, repeat=True, taken=True))

    async def _decide(model: Any, record: dict[str, Any], reference: str, digest: str,
                      started: float) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        event_type = model.event_type
        deadline = config.deadlines_ms[event_type]
        requested_at = int(clock() * 1000)
        decided: asyncio.Future[dict[str, Any]] = loop.create_future()
        taken: asyncio.Future[str | None] = loop.create_future()

        def wake(decision: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(_settle, decided, decision)

        def on_taken(err: Any, _msg: Any) -> None:
            loop.call_soon_threadsafe(_settle, taken, None if err is None else str(err))

        identity = event_identity(model.schema_name, record)
        forget = replies.watch(model.key.encode(), identity, wake)
        unavailable = ""
        try:
            try:
                producer.publish(model, record, on_taken, wait=False)
            except (KafkaException, BufferError) as exc:
                unavailable = f"Kafka did not take the event ({exc})"
            left = (deadline - config.margin_ms) / 1000 - (time.monotonic() - started)
            if not unavailable:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(decided), max(0.0, left))
        finally:
            forget()
        if taken.done() and taken.result() is not None:
            unavailable = f"Kafka refused the event ({taken.result()})"
        if decided.done():
            d = decided.result()
            outcome, actions, reason = d["outcome"], list(d["actions"]), ""
            decision_id, stand_in = d["decision_id"], False
        else:
            s = config.policy.answer(event_type, record)
            why = unavailable or f"no decision within the {deadline} ms deadline"
            outcome, actions, reason = s.outcome, list(s.actions), f"{why}; {s.reason}"
            decision_id, stand_in = None, True
            if unavailable:
                logger.error("%s %s: %s; stand-in %s", event_type, model.event_id, why, outcome)
        answer = {
            "kind": "ANSWER", "reference": reference, "event_id": model.event_id,
            "event_type": model.schema_name, "entity_key": model.key,
            "identity": identity, "outcome": outcome,
            "actions": actions, "stand_in": stand_in, "reason": reason,
            "decision_id": decision_id, "stand_in_outcome": None, "agreed": None,
            "request_hash": digest, "requested_at": requested_at,
            "answered_at": int(clock() * 1000), "deadline_ms": deadline,
            "worker": config.worker}
        answer = await _claim(answer)
        label = "repeat" if answer["worker"] != config.worker or \
            answer["requested_at"] != requested_at else \
            "stand_in" if answer["stand_in"] else "pipeline"
        metrics.observe(event_type, label, time.monotonic() - started)
        ok = None if not taken.done() else taken.result() is None
        return 200, orjson.dumps(_body(answer, started, repeat=label == "repeat", taken=ok))

    async def _claim(answer: dict[str, Any]) -> dict[str, Any]:
        """Record the answer; the first recorded for its reference is the answer."""
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[tuple[str | None, int, int]] = loop.create_future()

        def on_ack(err: Any, msg: Any) -> None:
            loop.call_soon_threadsafe(_settle, acked, (
                None if err is None else str(err), msg.partition(), msg.offset()))

        try:
            producer.events.send_raw(answers_topic, codec.encode(ANSWER_SCHEMA, answer),
                                     answer["entity_key"], on_ack, wait=False)
            err, partition, offset = await asyncio.wait_for(acked, config.ack_timeout_s)
            if err is not None:
                raise RuntimeError(err)
            read: asyncio.Future[None] = loop.create_future()
            book.when_read(partition, offset,
                           lambda: _settle_from_thread(loop, read, None))
            await asyncio.wait_for(read, config.ack_timeout_s)
        except (KafkaException, BufferError, RuntimeError, TimeoutError) as exc:
            metrics.unrecorded.inc()
            logger.error("answer to %s not recorded (%s): a repeat may get another",
                         answer["reference"], exc)
            return answer
        known = book.first.get(answer["reference"])
        return answer if known is None else known

    async def metrics_page(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def health(_: Request) -> Response:
        ready = book.ready.is_set()
        return _json(200 if ready else 503, {"status": "ok" if ready else "starting",
                                             "worker": config.worker})

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        replies.assign()
        with closed_on_failure(replies.consumer):  # its run, which closes it, is not begun
            book.assign(int(clock() * 1000))
        threads = [threading.Thread(target=pump, name="decide-delivery-reports", daemon=True),
                   threading.Thread(target=replies.run, args=(stop,), name="decide-replies",
                                    daemon=True),
                   threading.Thread(target=book.run, args=(stop,), name="decide-answers",
                                    daemon=True)]
        for t in threads:
            t.start()
        if not await asyncio.to_thread(book.ready.wait, config.start_timeout_s):
            logger.warning("the answers already given were not all read in %.0f s; "
                           "requests get 503 until they are", config.start_timeout_s)
        try:
            yield
        finally:
            stop.set()
            for t in threads:
                t.join(5)
            producer.flush(10)

    app = Starlette(routes=[Route("/v1/decide", decide, methods=["POST"]),
                            Route("/metrics", metrics_page), Route("/healthz", health)],
                    lifespan=lifespan)
    app.state.replies, app.state.book, app.state.metrics = replies, book, metrics
    return app


def _settle_from_thread(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any],
                        value: Any) -> None:
    loop.call_soon_threadsafe(_settle, fut, value)


def _settle(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _json(status: int, body: dict[str, Any] | bytes) -> Response:
    return Response(body if isinstance(body, bytes) else orjson.dumps(body), status,
                    media_type="application/json")


def _body(answer: dict[str, Any], started: float, repeat: bool,
          taken: bool | None) -> dict[str, Any]:
    return {"reference": answer["reference"], "event_id": answer["event_id"],
            "event_type": answer["event_type"].rsplit(".", 1)[-1],
            "outcome": answer["outcome"], "actions": answer["actions"],
            "stand_in": answer["stand_in"], "reason": answer["reason"],
            "decision_id": answer["decision_id"], "deadline_ms": answer["deadline_ms"],
            "latency_ms": round((time.monotonic() - started) * 1000, 3), "repeat": repeat,
            "event_taken": taken}


class Served:
    """An app on uvicorn in a thread of this process, on a free port (the demo's and
    the tests' API workers; `tripwire decide serve` runs worker processes)."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1") -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=0,
                                                    log_level="warning", lifespan="on"))
        self.exit_code: int | str | None = None  # uvicorn's, when its start failed
        self.thread = threading.Thread(target=self._run, name="decide-api", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the decide API did not start (exit {self.exit_code}; "
                                   "its log says why)")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{host}:{port}"

    def _run(self) -> None:
        try:
            self.server.run()
        except SystemExit as exc:  # a failed start: uvicorn exits, here only its thread
            self.exit_code = exc.code

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def from_environment() -> Starlette:
    """The app as `tripwire decide serve` configures it (one per uvicorn worker):
    the settings from the environment, Kafka at ``KAFKA_BOOTSTRAP_SERVERS``."""
    from tripwire.config import Settings
    from tripwire.connectors.http_ingest import parse_keys
    from tripwire.controls.engine import ControlSet

    settings = Settings()
    if not settings.kafka_bootstrap_servers:
        raise RuntimeError("KAFKA_BOOTSTRAP_SERVERS is not set")
    controls = ControlSet.from_dir(settings.decide_controls_dir) \
        if settings.decide_controls_dir else ControlSet.from_dir()
    config = DecideConfig(
        parse_keys(settings.ingest_keys), parse_deadlines(settings.decide_deadlines),
        StandInPolicy.parse(DEFAULT_STAND_IN if settings.decide_stand_in is None
                            else settings.decide_stand_in, controls),
        margin_ms=settings.decide_margin_ms, remember_s=settings.decide_remember_s,
        tolerance_s=settings.ingest_tolerance_s, max_body_bytes=settings.ingest_max_body_bytes)
    codec = AvroCodec.from_url(settings.schema_registry_url)
    producer = TripwireProducer(settings.kafka_bootstrap_servers,
                                namespace=settings.topic_namespace, codec=codec,
                                **{"linger.ms": 1})  # type: ignore[arg-type]
    return create_app(producer, settings.kafka_bootstrap_servers, config,
                      settings.topic_namespace)
