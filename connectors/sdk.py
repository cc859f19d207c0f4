"""The SDK: typed events → validation → Avro → Kafka, with delivery confirmation
(refusals are raised before anything is sent, with every reason); and a client
of the inline decide API.

>>> p = TripwireProducer("127.0.0.1:9092")                        # doctest: +SKIP
>>> p.send({"event_type": "CardPayment", ...}); p.flush()         # doctest: +SKIP
>>> d = DecideClient("http://127.0.0.1:8081", "k1", secret)       # doctest: +SKIP
>>> d.decide({"event_type": "CardPayment", ...})["outcome"]       # doctest: +SKIP
'ALLOW'
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message
from pydantic import ValidationError

from tripwire.connectors.events import EventProducer
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.models import EVENT_MODELS, CardPayment, FpsMessage, LoginEvent, parse_event
from tripwire.schemas.validate import Reason, Validator
from tripwire.streams.topics import topic

__all__ = ["DecideClient", "DecideError", "Delivery", "InvalidEvent", "TripwireProducer",
           "model_reasons", "sign"]

Event = CardPayment | LoginEvent | FpsMessage


class InvalidEvent(ValueError):
    """The event was refused; ``reasons`` holds (code, field, detail) for each problem."""

    def __init__(self, reasons: list[Reason]) -> None:
        super().__init__("; ".join(f"{c} {f or ''}: {d}" for c, f, d in reasons))
        self.reasons = reasons


_EVENT_TYPES = frozenset(m.__name__ for m in EVENT_MODELS.values())


def model_reasons(exc: ValidationError) -> list[Reason]:
    """pydantic errors as quarantine-style reasons with dotted field paths."""
    out: list[Reason] = []
    for e in exc.errors():
        loc = e["loc"]
        if loc and loc[0] in _EVENT_TYPES:  # the union's tag: the event names its type
            loc = loc[1:]
        path = ".".join(str(p) for p in loc) or None
        code = "MISSING_FIELD" if e["type"] == "missing" else \
            "UNKNOWN_FIELD" if e["type"] == "extra_forbidden" else "INVALID_TYPE"
        out.append((code, path, e["msg"]))
    return out


@dataclass
class Delivery:
    delivered: int = 0
    failed: list[str] = field(default_factory=list)


class TripwireProducer:
    """Publish inbound events to their topics, keyed by their entity."""

    def __init__(self, bootstrap: str, *, namespace: str = "", codec: AvroCodec | None = None,
                 validator: Validator | None = None,
                 clock: Callable[[], float] = time.time, **overrides: Any) -> None:
        self.codec = codec or AvroCodec.from_url(None)
        self.validator = validator or Validator()
        self.namespace = namespace
        self.clock = clock
        self._out = EventProducer(bootstrap, self.codec, **overrides)

    def check(self, event: Event | dict[str, Any] | str | bytes) -> tuple[Event, dict[str, Any]]:
        """Parse and validate; returns the model and its Avro record or raises InvalidEvent."""
        if not isinstance(event, (CardPayment, LoginEvent, FpsMessage)):
            try:
                event = parse_event(event)
            except ValidationError as exc:
                raise InvalidEvent(model_reasons(exc)) from None
        record = event.to_avro()
        reasons = self.validator.validate(event.schema_name, record, int(self.clock() * 1000))
        if reasons:
            raise InvalidEvent(reasons)
        return event, record

    def send(self, event: Event | dict[str, Any] | str | bytes,
             on_delivery: Callable[[KafkaError | None, Message], None] | None = None) -> Event:
        model, record = self.check(event)
        self.publish(model, record, on_delivery)
        return model

    def publish(self, model: Event, record: dict[str, Any],
                on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
                wait: bool = True) -> None:
        """Send what :meth:`check` returned (``wait`` False: ``BufferError`` at once
        when the local queue is full)."""
        self._out.send_raw(topic(model.topic_key, self.namespace),
                           self.codec.encode(model.schema_name, record), model.key, on_delivery,
                           wait=wait)

    @property
    def events(self) -> EventProducer:
        """The producer underneath (other records, sent alongside the events)."""
        return self._out

    def poll(self, timeout: float = 0) -> None:
        self._out.poll(timeout)

    def flush(self, timeout: float = 30.0) -> Delivery:
        """Wait for acknowledgements; what was delivered and what failed, so far."""
        self._out.drain(timeout)
        return Delivery(self._out.delivered, list(self._out.failed))


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


class DecideError(RuntimeError):
    """The decide API refused a request: its HTTP status and ``reasons``."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status, self.reasons = status, body.get("reasons", [])
        super().__init__(f"{status} {body.get('error', '')}: " + "; ".join(
            f"{r.get('code')} {r.get('field') or ''}: {r.get('detail')}" for r in self.reasons))


class DecideClient:
    """``POST /v1/decide``, signed: the decision, or the stand-in past the deadline
    (``stand_in`` true). The same ``reference`` (default: the event id) always
    gets the same answer, so a call that timed out is simply made again."""

    def __init__(self, url: str, key_id: str, secret: bytes, timeout_s: float = 5.0) -> None:
        import httpx

        self.url = url.rstrip("/") + "/v1/decide"
        self.key_id, self.secret = key_id, secret
        self._http = httpx.Client(timeout=timeout_s)

    def decide(self, event: Event | dict[str, Any], reference: str | None = None) \
            -> dict[str, Any]:
        import orjson

        body = event.model_dump_json().encode() if isinstance(
            event, (CardPayment, LoginEvent, FpsMessage)) else orjson.dumps(event)
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-Tripwire-Key-Id": self.key_id,
                   "X-Tripwire-Timestamp": ts,
                   "X-Tripwire-Signature": sign(self.secret, ts, body)}
        if reference is not None:
            headers["Idempotency-Key"] = reference
        r = self._http.post(self.url, content=body, headers=headers)
        answer: dict[str, Any] = r.json()
        if r.status_code != 200:
            raise DecideError(r.status_code, answer)
        return answer

    def close(self) -> None:
        self._http.close()
