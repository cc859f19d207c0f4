"""A blocking transactional call that times out with a retriable error is called
again (librdkafka: "retry call to resume") instead of failing the worker; errors
that need an abort, fatal ones and a spent patience are raised."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka import KafkaError, KafkaException

from tripwire.streams.txn import _resuming


def _failing(errors: list[KafkaError]) -> tuple[list[int], Callable[[], None]]:
    calls: list[int] = []

    def call() -> None:
        calls.append(1)
        if len(calls) <= len(errors):
            raise KafkaException(errors[len(calls) - 1])
    return calls, call


def test_a_retriable_timeout_is_resumed_until_it_succeeds() -> None:
    timeout = KafkaError(KafkaError._TIMED_OUT, "retry call to resume", retriable=True)
    calls, call = _failing([timeout, timeout])
    _resuming(call, "committing")
    assert len(calls) == 3


@pytest.mark.parametrize("err", [
    KafkaError(KafkaError._TIMED_OUT, "needs abort", retriable=True, txn_requires_abort=True),
    KafkaError(KafkaError._FENCED, "fenced", fatal=True),
    KafkaError(KafkaError._STATE, "not retriable"),
])
def test_other_errors_are_raised_at_once(err: KafkaError) -> None:
    calls, call = _failing([err])
    with pytest.raises(KafkaException):
        _resuming(call, "committing")
    assert len(calls) == 1


def test_patience_runs_out() -> None:
    timeout = KafkaError(KafkaError._TIMED_OUT, "retry call to resume", retriable=True)
    calls, call = _failing([timeout] * 100)
    with pytest.raises(KafkaException):
        _resuming(call, "committing", patience=0.0)
    assert len(calls) == 1


def test_a_stop_gives_up_a_commit_stuck_in_the_client_at_its_deadline() -> None:
    """A commit that never returns (librdkafka after a broker restart) while the loop
    waits for it in a rebalance callback: a stop that comes meanwhile gives it up at
    the stop's deadline, not after COMMIT_STUCK_S (a worker took 30 s to stop)."""
    import threading
    import time
    from concurrent.futures import Future
    from types import SimpleNamespace

    from tripwire.streams.commits import Commits
    from tripwire.streams.loop import LoopStats
    from tripwire.streams.txn import COMMIT_STUCK_S, _Chunk

    class Loop(Commits):
        STOP_S = 0.5

    loop = Loop.__new__(Loop)
    loop._inflight = Future()  # never done
    loop._inflight_since = time.monotonic()
    loop._inflight_chunk = None
    loop._stop_event, loop._stop_by = threading.Event(), None
    loop.stats, loop._chunk = LoopStats(), _Chunk()
    loop.processor = SimpleNamespace(name="t")  # type: ignore[assignment]
    threading.Timer(0.3, loop._stop_event.set).start()
    started = time.monotonic()
    assert loop._commit_all() is False  # nothing known to be committed
    took = time.monotonic() - started
    assert 0.7 < took < 2.0 < COMMIT_STUCK_S, took
    assert loop.stats.aborted == 1 and loop._inflight is None


def test_a_commit_stuck_adding_its_offsets_is_given_up_sooner(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """send_offsets_to_transaction is where librdkafka hangs after a broker restart
    (#5511): a commit that has sat there for OFFSETS_STUCK_S is given up then, not
    at COMMIT_STUCK_S; one in another phase waits the whole COMMIT_STUCK_S. Given
    up, its chunk is marked so that its own thread stops retrying."""
    import threading
    import time
    from concurrent.futures import Future
    from types import SimpleNamespace

    import tripwire.streams.commits as commits
    from tripwire.streams.commits import Commits
    from tripwire.streams.loop import LoopStats
    from tripwire.streams.txn import COMMIT_STUCK_S, OFFSETS_STUCK_S, _Chunk

    assert OFFSETS_STUCK_S < COMMIT_STUCK_S / 2
    monkeypatch.setattr(commits, "OFFSETS_STUCK_S", 0.4)
    loop = Commits.__new__(Commits)
    loop._stop_event, loop._stop_by = threading.Event(), None
    loop._inflight = Future()  # never done
    chunk = loop._inflight_chunk = _Chunk()
    started = loop._inflight_since = time.monotonic()
    assert loop._stuck_at() == started + COMMIT_STUCK_S  # acknowledgements, producing
    assert loop._check_committer() is True  # not stuck yet: the loop goes on
    chunk.phase, chunk.offsets_since = "adding the input offsets", started + 0.2
    # (started + 0.2) + 0.4 can differ from started + 0.6 in the last bit
    assert loop._stuck_at() == pytest.approx(started + 0.6, abs=1e-6)

    calls: list[set[object]] = []
    unstick = Commits._unstick
    monkeypatch.setattr(Commits, "_unstick",
                        lambda self, leaving: calls.append(leaving) or unstick(self, leaving))
    loop._stop_event.set()  # given up while stopping: abandoned, no new producer made
    loop.stats, loop._chunk = LoopStats(), _Chunk()
    loop.processor = SimpleNamespace(name="t")  # type: ignore[assignment]
    assert loop._check_committer(wait=True) is False
    took = time.monotonic() - started
    assert calls == [set()] and 0.55 < took < 2.0, took
    assert chunk.given_up and loop._inflight is None and loop.stats.aborted == 1
