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
