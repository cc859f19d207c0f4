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
