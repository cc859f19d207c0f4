"""Signed HTTP ingest for webhooks (an ASGI app, starlette).

``POST /v1/events`` with a JSON event (``event_type`` + fields) and headers:

* ``X-Tripwire-Key-Id``: which shared key signed it (several can be active: rotation);
* ``X-Tripwire-Timestamp``: Unix seconds; refused outside ``tolerance_s`` of now;
* ``X-Tripwire-Signature``: ``v1=`` + hex HMAC-SHA256 over ``"<timestamp>." + body``;
* ``Idempotency-Key`` (optional; defaults to the event id): a replay gets the
  original response and nothing is written twice.

Answers: ``202`` only after Kafka acknowledged the write; ``401`` for signature
problems, ``413`` for a body over ``max_body_bytes`` (refused from its
``Content-Length``, or as soon as a streamed body passes the limit, and after
the key id and timestamp are checked, before the body is read or hashed),
``422`` for invalid events or headers, ``409`` when an idempotency key is reused
for a different body — each with machine-readable ``reasons``. No request gets
a 500 for what it sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tripwire.connectors.sdk import InvalidEvent, TripwireProducer, sign

__all__ = ["IngestConfig", "Signed", "create_app", "parse_keys", "sign"]

logger = logging.getLogger(__name__)


def parse_keys(text: str) -> dict[str, bytes]:
    """``"kid1:secret1,kid2:secret2"`` → {key id: secret}."""
    keys = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kid, sep, secret = part.partition(":")
        if not sep or not kid or len(secret) < 16:
            raise ValueError(f"ingest key {kid or part!r}: use <key id>:<secret of 16+ chars>")
        keys[kid] = secret.encode()
    return keys


@dataclass
class IngestConfig:
    keys: Mapping[str, bytes]
    tolerance_s: int = 300
    idempotency_ttl_s: int = 24 * 3600
    idempotency_max: int = 100_000
    ack_timeout_s: float = 30.0
    # an event is ~1 KB; Kafka refuses records over 1 MB by default
    max_body_bytes: int = 256 * 1024


@dataclass(frozen=True)
class _Stored:
    body_hash: bytes
    status: int
    payload: bytes
    at: float


class _IdempotencyCache:
    """Responses by idempotency key, bounded by count and age."""

    def __init__(self, ttl_s: int, max_items: int, clock: Callable[[], float]) -> None:
        self.ttl, self.max, self.clock = ttl_s, max_items, clock
        self._d: OrderedDict[str, _Stored] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[_Stored]] = {}

    def get(self, key: str) -> _Stored | None:
        s = self._d.get(key)
        if s is not None and self.clock() - s.at > self.ttl:
            del self._d[key]
            return None
        return s

    def put(self, key: str, stored: _Stored) -> None:
        self._d[key] = stored
        self._d.move_to_end(key)
        while len(self._d) > self.max:
            self._d.popitem(last=False)


_SECONDS = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v1=[0-9a-f]{64}")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")
_LENGTH = re.compile(r"[0-9]{1,19}")


def _reply(status: int, body: dict[str, Any]) -> tuple[int, bytes]:
    return status, orjson.dumps(body)


def _problem(status: int, error: str, reasons: list[tuple[str, str | None, str]]) \
        -> tuple[int, bytes]:
    return _reply(status, {"error": error, "reasons": [
        {"code": c, "field": f, "detail": d} for c, f, d in reasons]})


class Signed:
    """Requests signed with a shared key: the headers and the size are checked
    before the body is read, the signature once it is (see the module's doc)."""

    def __init__(self, keys: Mapping[str, bytes], tolerance_s: int, max_body_bytes: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.keys, self.tolerance_s, self.max_body_bytes = keys, tolerance_s, max_body_bytes
        self.clock = clock

    async def read(self, request: Request) -> bytes | tuple[int, bytes]:
        """The body of a request whose headers and signature check out, or the
        problem answer (status, JSON) to give."""
        denied = self.admit(request)
        if denied is not None:
            return denied
        got = await self.read_body(request)
        if isinstance(got, tuple):
            return got
        return self.authenticate(request, got) or got

    def admit(self, request: Request) -> tuple[int, bytes] | None:
        """What can be checked before the body is read: the headers and the size."""
        kid = request.headers.get("x-tripwire-key-id", "")
        ts = request.headers.get("x-tripwire-timestamp", "")
        sig = request.headers.get("x-tripwire-signature", "")
        if kid not in self.keys:
            return _problem(401, "unauthenticated", [("UNKNOWN_KEY", "X-Tripwire-Key-Id",
                                                      f"no active key {kid[:64]!r}")])
        if not _SECONDS.fullmatch(ts):
            return _problem(401, "unauthenticated", [("BAD_TIMESTAMP", "X-Tripwire-Timestamp",
                                                      "Unix seconds expected")])
        skew = self.clock() - int(ts)
        if abs(skew) > self.tolerance_s:
            return _problem(401, "unauthenticated", [(
                "STALE_TIMESTAMP", "X-Tripwire-Timestamp",
                f"{abs(skew):.0f}s from the server's clock (tolerance {self.tolerance_s}s)")])
        if not _SIGNATURE.fullmatch(sig):
            return _problem(401, "unauthenticated", [("BAD_SIGNATURE", "X-Tripwire-Signature",
                                                      "v1= and 64 hex digits expected")])
        key = request.headers.get("idempotency-key")
        if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
            return _problem(422, "invalid_header", [(
                "BAD_IDEMPOTENCY_KEY", "Idempotency-Key",
                "1 to 200 printable ASCII characters expected")])
        length = request.headers.get("content-length")
        if length is not None and not _LENGTH.fullmatch(length):
            return _problem(422, "invalid_header", [("BAD_CONTENT_LENGTH", "Content-Length",
                                                     "a number of bytes expected")])
        if length is not None and int(length) > self.max_body_bytes:
            return self._too_large(int(length))
        return None

    def _too_large(self, size: int) -> tuple[int, bytes]:
        return _problem(413, "too_large", [("BODY_TOO_LARGE", None,
                                            f"{size} bytes or more; at most "
                                            f"{self.max_body_bytes} accepted")])

    async def read_body(self, request: Request) -> bytes | tuple[int, bytes]:
        """The body, or a 413 as soon as it passes the limit (chunked bodies too)."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                return self._too_large(size)
            chunks.append(chunk)
        return b"".join(chunks)

    def authenticate(self, request: Request, body: bytes) -> tuple[int, bytes] | None:
        kid = request.headers["x-tripwire-key-id"]
        ts = request.headers["x-tripwire-timestamp"]
        sig = request.headers["x-tripwire-signature"]
        if not hmac.compare_digest(sign(self.keys[kid], ts, body).encode(), sig.encode()):
            return _problem(401, "unauthenticated", [("BAD_SIGNATURE", "X-Tripwire-Signature",
                                                      "HMAC-SHA256 does not match the body")])
        return None


def create_app(producer: TripwireProducer, config: IngestConfig,
               clock: Callable[[], float] = time.time) -> Starlette:
    cache = _IdempotencyCache(config.idempotency_ttl_s, config.idempotency_max, clock)
    signed = Signed(config.keys, config.tolerance_s, config.max_body_bytes, clock)
    stop = threading.Event()

    def pump() -> None:  # serves delivery reports while the app runs
        while not stop.is_set():
            producer.poll(0.05)

    async def ingest(request: Request) -> Response:
        body = await signed.read(request)
        if isinstance(body, tuple):
            return Response(body[1], body[0], media_type="application/json")
        body_hash = hashlib.sha256(body).digest()
        key = request.headers.get("idempotency-key")
        if not key:
            try:
                key = "event:" + str(orjson.loads(body).get("event_id", ""))
            except (orjson.JSONDecodeError, AttributeError):
                key = "body:" + body_hash.hex()
        status, payload = await _once(key, body_hash, lambda: _publish(body))
        return Response(payload, status, media_type="application/json",
                        headers={"Idempotency-Key": key})

    async def _once(key: str, body_hash: bytes,
                    work: Callable[[], Any]) -> tuple[int, bytes]:
        while True:
            stored = cache.get(key)
            if stored is not None:
                if stored.body_hash != body_hash:
                    return _problem(409, "conflict", [(
                        "IDEMPOTENCY_KEY_REUSED", "Idempotency-Key",
                        "this key was used for a different body")])
                return stored.status, stored.payload
            pending = cache._inflight.get(key)
            if pending is None:
                break
            await asyncio.shield(pending)  # a concurrent first request: wait for its answer
        fut: asyncio.Future[_Stored] = asyncio.get_running_loop().create_future()
        cache._inflight[key] = fut
        try:
            status, payload = await work()
            stored = _Stored(body_hash, status, payload, clock())
            if status < 500:  # a retry after a server-side failure may succeed
                cache.put(key, stored)
            fut.set_result(stored)
            return status, payload
        except BaseException as exc:
            fut.set_exception(exc)
            raise
        finally:
            cache._inflight.pop(key, None)

    async def _publish(body: bytes) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[tuple[str | None, int, int]] = loop.create_future()

        def on_delivery(err: Any, msg: Any) -> None:
            result = (None if err is None else str(err), msg.partition(), msg.offset())

            def settle() -> None:
                if not acked.done():
                    acked.set_result(result)

            loop.call_soon_threadsafe(settle)

        try:
            model = producer.send(body, on_delivery=on_delivery)
        except InvalidEvent as exc:
            return _problem(422, "invalid_event", exc.reasons)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                return _problem(413, "too_large", [("EVENT_TOO_LARGE", None, error.str())])
            return _problem(503, "not_acknowledged", [("KAFKA_ERROR", None, str(exc))])
        except BufferError as exc:  # the producer's queue is full: back-pressure
            return _problem(503, "not_acknowledged", [("KAFKA_BUSY", None, str(exc))])
        try:
            err, partition, offset = await asyncio.wait_for(acked, config.ack_timeout_s)
        except TimeoutError:
            return _problem(503, "not_acknowledged", [(
                "KAFKA_TIMEOUT", None, f"Kafka did not acknowledge in {config.ack_timeout_s}s; "
                "retry with the same Idempotency-Key")])
        if err is not None:
            return _problem(503, "not_acknowledged", [("KAFKA_ERROR", None, err)])
        return _reply(202, {"status": "accepted", "event_id": model.event_id,
                            "event_type": model.event_type, "partition": partition,
                            "offset": offset})

    async def health(_: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        pumper = threading.Thread(target=pump, name="ingest-delivery-reports", daemon=True)
        pumper.start()
        try:
            yield
        finally:
            stop.set()
            pumper.join(5)
            producer.flush(10)

    return Starlette(routes=[Route("/v1/events", ingest, methods=["POST"]),
                             Route("/healthz", health)], lifespan=lifespan)
