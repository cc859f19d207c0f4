"""The producer SDK: typed events → validation → Avro → Kafka, with delivery
confirmation. Refusals are raised before anything is sent, with every reason.

>>> p = TripwireProducer("127.0.0.1:9092")                        # doctest: +SKIP
>>> p.send({"event_type": "CardPayment", ...}); p.flush()         # doctest: +SKIP
"""

from __future__ import annotations

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

__all__ = ["Delivery", "InvalidEvent", "TripwireProducer", "model_reasons"]

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
        self._out.send_raw(topic(model.topic_key, self.namespace),
                           self.codec.encode(model.schema_name, record), model.key, on_delivery)
        return model

    def poll(self, timeout: float = 0) -> None:
        self._out.poll(timeout)

    def flush(self, timeout: float = 30.0) -> Delivery:
        """Wait for acknowledgements; what was delivered and what failed, so far."""
        self._out.drain(timeout)
        return Delivery(self._out.delivered, list(self._out.failed))
