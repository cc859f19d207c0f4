"""Settings that depend on one another."""

from __future__ import annotations

import pytest

from tripwire.config import Settings


def test_the_commit_interval_follows_what_waits_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second between commits when no event waits for them; 100 ms when every hop
    does (committed hops, or transactional delivery); a set value always wins."""
    for var in ("TRIPWIRE_HOPS", "TRIPWIRE_DELIVERY", "TRIPWIRE_COMMIT_INTERVAL_MS"):
        monkeypatch.delenv(var, raising=False)
    assert Settings().commit_interval() == 1000
    assert Settings(hops="committed").commit_interval() == 100
    assert Settings(delivery="transactional").commit_interval() == 100
    monkeypatch.setenv("TRIPWIRE_COMMIT_INTERVAL_MS", "250")
    assert Settings(hops="committed").commit_interval() == 250


def test_nodes_apart_are_known_entities(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIPWIRE_NODES_APART", " ip, card ")
    assert Settings().apart() == {"ip", "card"}
    monkeypatch.setenv("TRIPWIRE_NODES_APART", "ip,cards")
    with pytest.raises(ValueError, match=r"unknown entities \['cards'\]"):
        Settings()


def test_a_features_worker_serves_apart_only_what_the_intake_routes_apart(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`run stage features --entities ip` without TRIPWIRE_NODES_APART=ip would wait
    on a topic no intake writes to: refused at once, before any broker is sought."""
    from typer.testing import CliRunner

    from tripwire.cli import app
    from tripwire.errors import TripwireError

    monkeypatch.delenv("TRIPWIRE_NODES_APART", raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # never reached
    result = CliRunner().invoke(app, ["run", "stage", "features", "--entities", "ip"])
    assert isinstance(result.exception, TripwireError)
    assert "--entities ip: not served apart" in str(result.exception)


def test_workers_remember_as_many_control_answers_as_the_engine_and_bench_say(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`tripwire run stage` keeps TRIPWIRE_CONTROLS_REMEMBER answers per control;
    unset, the engine's REMEMBER, which bench's workers use to run as it does."""
    from tripwire.controls.engine import REMEMBER

    monkeypatch.delenv("TRIPWIRE_CONTROLS_REMEMBER", raising=False)
    assert Settings().controls_remember == REMEMBER
    monkeypatch.setenv("TRIPWIRE_CONTROLS_REMEMBER", "0")
    assert Settings().controls_remember == 0
