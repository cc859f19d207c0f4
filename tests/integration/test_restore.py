"""A store restored from its changelog while the broker is away: the restore waits
for the broker and reads to the end. It used to take ten seconds of reading
nothing for the end, and go on with a store short of what was committed (or to
fail the worker on the client's first connection error)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from typing import Any

import pytest

from tripwire.broker import KafkaCluster
from tripwire.connectors.kafka import consumer, create_topics, producer
from tripwire.state.manager import StateManager
from tripwire.streams.loop import LoopStats
from tripwire.streams.restore import Partitions
from tripwire.streams.topics import TopicSpec

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


class _Restorer(Partitions):
    """The restoring part of a loop, on its own (a loop restores so on assignment
    and after an aborted commit)."""

    def __init__(self, bootstrap: str, state: StateManager) -> None:
        self.bootstrap, self.state, self.stats = bootstrap, state, LoopStats()

    def _stopping_by(self) -> float | None:
        return None


def _refused(bootstrap: str) -> bool:
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


def test_a_restore_waits_for_a_broker_away_and_reads_to_the_end(
        kafka: KafkaCluster, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if kafka.local is None:
        pytest.skip("restarts the broker: only one tripwire started")
    state = StateManager("restore-test", ["s"], namespace=namespace)
    tp = (f"{namespace}input", 0)
    name = state.changelog("s", tp[0])
    create_topics(kafka.bootstrap, "", [TopicSpec(name, name, "test", partitions=1)])
    p = producer(kafka.bootstrap)
    n = 20_000
    for i in range(n):
        p.produce(name, f"value {i}".encode(), f"key {i % 5_000}".encode(), partition=0)
    assert p.flush(30) == 0

    # the broker goes away once the restore knows the changelog's end, before it
    # reads anything: away for more than ten seconds (down 8 s, then its start)
    asked = Partitions._end_offset
    restarted: list[BaseException | None] = []
    threads: list[threading.Thread] = []

    def then_away(self: Partitions, *args: Any, **kwargs: Any) -> int:
        end = asked(self, *args, **kwargs)

        def restart() -> None:
            try:
                kafka.restart(down_s=8)
                restarted.append(None)
            except BaseException as exc:
                restarted.append(exc)
        threads.append(threading.Thread(target=restart, daemon=True))
        threads[0].start()
        deadline = time.monotonic() + 30
        while not _refused(kafka.bootstrap):
            assert time.monotonic() < deadline, "the broker did not stop"
            time.sleep(0.05)
        return end

    monkeypatch.setattr(Partitions, "_end_offset", then_away)
    restorer = _Restorer(kafka.bootstrap, state)
    began = time.monotonic()
    restorer._restore([tp])
    took = time.monotonic() - began
    threads[0].join(90)  # the broker back before anything else
    assert restarted == [None], restarted
    # every record applied; the store holds each key's last value
    assert restorer.stats.restored == n, \
        f"{restorer.stats.restored} of {n} records restored, in {took:.1f} s"
    assert took > 10, f"the restore was done in {took:.1f} s: the broker was not away long"
    view = state.view(*tp)
    assert all(view.get("s", f"key {k}".encode()) == f"value {n - 5_000 + k}".encode()
               for k in range(5_000))
    # the broker answers again (what comes after this test needs it)
    c = consumer(kafka.bootstrap, f"after-{uuid.uuid4().hex[:8]}")
    try:
        assert name in c.list_topics(name, timeout=30).topics
    finally:
        c.close()
