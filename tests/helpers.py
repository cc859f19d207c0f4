"""Small helpers the broker tests share: publishing events to their input topics,
reading what a group has committed on one, and worker processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import TopicPartition

from tripwire.broker import KafkaCluster
from tripwire.connectors.events import EventProducer
from tripwire.connectors.kafka import consumer
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.models import EVENT_MODELS
from tripwire.streams.topics import topic

T = TypeVar("T")


def send_event(prod: EventProducer, ns: str, kind: str, ev: dict[str, Any]) -> None:
    """One event of ``kind`` (``CardPayment``, ...) to its input topic, keyed as
    upstream does (the event models' topic and key field)."""
    model = EVENT_MODELS[f"tripwire.events.{kind}"]
    prod.send(topic(model.topic_key, ns), model.schema_name, ev, ev[model.key_field])


def publish(kafka: KafkaCluster, ns: str, codec: AvroCodec,
            events: Iterable[tuple[str, dict[str, Any]]]) -> None:
    """Send (kind, event) pairs to their input topics, keyed as upstream does."""
    prod = EventProducer(kafka.bootstrap, codec)
    for kind, ev in events:
        send_event(prod, ns, kind, ev)
    prod.flush()


def eventually(probe: Callable[[], T | None], timeout: float, every: float = 1.0) -> T | None:
    """``probe()`` until it gives something other than None (that), or None after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    got = probe()
    while got is None and time.monotonic() < deadline:
        time.sleep(every)
        got = probe()
    return got


def free_port() -> int:
    """A TCP port free on localhost just now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cards_with_an_attack(kafka: KafkaCluster, ns: str, seed: int, normal: int,
                         attack: int) -> list[dict[str, Any]]:
    """``normal`` everyday card payments of the last minute and a magstripe-contactless
    ``attack`` (each DENY) sent to the card topic, and one event with an invalid id
    (quarantined); the events sent that are valid."""
    from tripwire.connectors.simulator import (
        magstripe_contactless_attack,
        normal_card_payments,
    )

    now = int(time.time() * 1000)
    events = list(normal_card_payments(seed, now - 90_000, normal, cards=10)) + \
        list(magstripe_contactless_attack(seed + 1, now - 60_000, attack, cards=attack))
    prod = EventProducer(kafka.bootstrap, AvroCodec.from_url(None))
    for e in events:
        send_event(prod, ns, "CardPayment", e)
    send_event(prod, ns, "CardPayment", {**events[0], "event_id": "not-a-uuid"})
    prod.flush()
    return events


def committed_inputs(kafka: KafkaCluster, group: str, ns: str, key: str = "card_payments",
                     partitions: int = 3) -> int:
    """How many messages of input topic ``key`` the group has committed (all partitions)."""
    c = consumer(kafka.bootstrap, group)
    try:
        got = c.committed([TopicPartition(topic(key, ns), p) for p in range(partitions)],
                          timeout=10)
        return sum(max(tp.offset, 0) for tp in got)
    finally:
        c.close()


def input_order(kafka: KafkaCluster, ns: str) -> dict[str, tuple[int, str, int, int]]:
    """Event id → its place in the order the feature nodes apply a backlog in
    (tripwire.streams.align): (record timestamp, made non-decreasing along its
    partition; topic; partition; offset), read from the input topics themselves."""
    from tripwire.connectors.events import read_to_end
    from tripwire.schemas.codec import AvroCodec

    codec = AvroCodec.from_url(None)
    order: dict[str, tuple[int, str, int, int]] = {}
    for model in EVENT_MODELS.values():
        reached: dict[int, int] = {}
        for m in read_to_end(kafka.bootstrap, topic(model.topic_key, ns)):
            p, ts = m.partition() or 0, m.timestamp()[1]
            reached[p] = t = max(reached.get(p, 0), ts)
            try:
                event = codec.decode(m.value())[1]
            except Exception:  # refused at intake: never reaches a node
                continue
            order.setdefault(event["event_id"], (t, m.topic() or "", p, m.offset() or 0))
    return order


def node_order(kafka: KafkaCluster, ns: str) -> dict[tuple[str, str], list[tuple[Any, str]]]:
    """(entity, key) → [(order key, event id)] of the requests its node was sent (each
    position once; markers aside), in the order it applies them."""
    from tripwire.connectors.events import read_to_end
    from tripwire.schemas.codec import AvroCodec
    from tripwire.streams.hops import unpack

    codec = AvroCodec.from_url(None)
    seen: set[tuple[str, str, int]] = set()
    order: dict[tuple[str, str], list[tuple[Any, str]]] = {}
    for m in read_to_end(kafka.bootstrap, topic("features", ns)):  # every entity's
        for item in unpack(codec.decode(m.value())[1]):
            if str(item[0]).startswith("@"):  # progress and idle markers
                continue
            _identity, event_id, key, _time, _fields, source, offset, entity, order_ms = item
            if (source, entity, offset) in seen:  # sent again after a restart: skipped
                continue
            seen.add((source, entity, offset))
            topic_name, _, partition = source.rpartition(":")
            order.setdefault((entity, key), []).append(
                ((order_ms, topic_name, int(partition), offset), event_id))
    for requests in order.values():
        requests.sort()
    return order


def applied_order(kafka: KafkaCluster, ns: str) -> dict[tuple[str, str], list[tuple[Any, str]]]:
    """(entity, key) → [(order key, event identity)] in the order its node applied
    the requests, as its fragments on the gather topic say (the first application
    of each position: one applied again after a restore is the same request)."""
    from tripwire.connectors.events import read_to_end
    from tripwire.schemas.codec import AvroCodec
    from tripwire.streams.hops import FEATURE_FRAGMENTS, unpack

    codec = AvroCodec.from_url(None)
    seen: set[tuple[str, str, int]] = set()
    order: dict[tuple[str, str], list[tuple[Any, str]]] = {}
    for m in read_to_end(kafka.bootstrap, topic("gather", ns)):
        schema, packed = codec.decode(m.value())
        if schema.name != FEATURE_FRAGMENTS:
            continue
        for item in unpack(packed):
            if len(item) < 8:  # heartbeats
                continue
            identity, entity, key, _values, _notes, order_ms, source, offset = item
            if (entity, source, offset) in seen:
                continue
            seen.add((entity, source, offset))
            topic_name, _, partition = source.rpartition(":")
            order.setdefault((entity, key), []).append(  # the identity without its digest
                ((order_ms, topic_name, int(partition), offset), identity.partition("#")[0]))
    for applied in order.values():
        applied.sort()
    return order


class Worker:
    """One `tripwire run stage STAGE` process (``all`` by default) with a state folder
    of its own; ``env``: settings of its own."""

    def __init__(self, kafka: KafkaCluster, ns: str, home: Path, stage: str = "all",
                 **env: str) -> None:
        self.home = home
        self.stage = stage
        self.env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
                    "TRIPWIRE_TOPIC_NAMESPACE": ns, "TRIPWIRE_STATE_DIR": str(home / "state"),
                    **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.home.mkdir(parents=True, exist_ok=True)
        log = (self.home / f"stderr-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "tripwire", "run", "stage",
                                      self.stage],
                                     env=self.env, stdout=subprocess.DEVNULL, stderr=log,
                                     stdin=subprocess.DEVNULL)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        shutil.rmtree(self.home / "state", ignore_errors=True)  # its disk is lost with it

    def stop(self, within_s: float) -> tuple[int | None, float]:
        """SIGTERM; (exit code, seconds taken), None if still running after ``within_s``."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(within_s)
        except subprocess.TimeoutExpired:
            code = None
            self.proc.send_signal(signal.SIGUSR1)  # its threads' stacks, to its log
            time.sleep(1)
            self.proc.kill()
            self.proc.wait(10)
        return code, time.monotonic() - started

    def client_errors(self) -> int:
        """librdkafka's error lines in its logs (repeats are backed off)."""
        return sum(p.read_text(errors="replace").count("ERROR tripwire.librdkafka")
                   for p in self.home.glob("stderr-*.log"))

    def stderr(self) -> str:
        return "".join(p.read_text(errors="replace")[-6000:]
                       for p in sorted(self.home.glob("stderr-*.log")))

    def stacks(self) -> str:
        """The threads' stacks a stop that took too long dumped (SIGUSR1) in the
        latest log, with the log lines just before them; "" if none."""
        logs = sorted(self.home.glob("stderr-*.log"), key=lambda p: int(p.stem.split("-")[1]))
        if not logs:
            return ""
        text = logs[-1].read_text(errors="replace")
        found = [i for i in (text.find("Thread 0x"), text.find("Current thread 0x")) if i >= 0]
        return text[max(0, min(found) - 3000):] if found else ""
