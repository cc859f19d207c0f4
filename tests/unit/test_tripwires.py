"""The system-wide monitor's tripwires over simulated days of a bank's decisions
(issue 22): the Tesco Bank attack pauses customer alerts within its window and
names its pattern, normal daily peaks and a sale at one merchant do not, each
other tripwire fires on its own scenario and stays quiet on normal traffic, and a
monitor restored from its snapshot cells goes on exactly as one never stopped."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from bench import scenarios as sc
from tripwire.controls.monitor import (
    WEEK_MS,
    Observation,
    Signal,
    SystemMonitor,
    default_tripwires,
    observation_of,
)
from tripwire.streams.monitor import cells, replay, uncells

T0 = 1_790_000_000_000 - 1_790_000_000_000 % WEEK_MS  # a Monday, 00:00 UTC


def _observations(days: sc.Days) -> list[Observation]:
    out = [observation_of("tripwire.decisions.Decision", d) for d in days.decisions]
    out += [observation_of("tripwire.ops.AuditRecord", a) for a in days.overrides]
    return [o for o in out if o is not None]


def _run(days: sc.Days, scale: float) -> tuple[SystemMonitor, list[Signal]]:
    return replay(_observations(days), SystemMonitor(default_tripwires(sc.policy(scale))))


def _by(signals: list[Signal], tripwire: str) -> list[tuple[str, str, int]]:
    return [(s.key, s.transition.state, s.transition.at) for s in signals
            if s.tripwire == tripwire]


def test_two_days_then_the_tesco_attack_pause_within_ten_minutes_with_its_pattern() -> None:
    rng = random.Random(2016)
    days = sc.normal_days(T0, 2, 1.0, rng)
    sc.peak_at_one_merchant(days, T0 + sc.DAY + 16 * sc.HOUR, 30, 1.0, rng)
    wave = T0 + sc.DAY + 14 * sc.HOUR + 7 * 60_000  # 14:07 on day two: 400 normal in 10 min
    sc.card_wave(days, wave, 30, 200.0, rng)  # 2,000 more in ten minutes
    monitor, signals = _run(days, 1.0)
    alerts = [s for s in signals if s.tripwire == "customer_alerts"]
    assert [s.transition.state for s in alerts if s.transition.state != "ONGOING"] == \
        ["RAISED", "CLEARED"], "one pause, over two days with lunch, evening and sale peaks"
    raised, cleared = alerts[0].transition, alerts[-1].transition
    delay = raised.at - wave
    print(f"detection delay: {delay / 1000:.0f} s; observed {raised.observed} against a "
          f"baseline of {raised.baseline:.0f}; pattern {raised.lifts}")
    assert 0 < delay < 10 * 60_000
    assert raised.ratio >= 5 and raised.observed >= 200
    assert raised.pattern["entry_mode"] == "MAGSTRIPE_CONTACTLESS"
    assert raised.pattern["domestic"] == "false"
    assert raised.pattern_share > 0.5
    assert alerts[0].pauses and alerts[0].audience == "soc"
    assert "entry_mode=MAGSTRIPE_CONTACTLESS" in alerts[0].summary
    ongoing = [s.transition for s in alerts if s.transition.state == "ONGOING"]
    assert ongoing and all(raised.at < t.at < cleared.at for t in ongoing)
    assert wave + 30 * 60_000 < cleared.at < wave + 60 * 60_000
    # every alert asked for while paused is counted as held
    during = sum(1 for d in days.decisions if raised.at <= d["event_time"] < cleared.at
                 and "CUSTOMER_ALERT" in d["actions"])
    assert monitor.held == during


def test_no_pause_on_normal_variation() -> None:
    """Lunchtime and evening peaks of twice the hours around them, a one-off sale
    at one merchant at twice the level, and the quiet of the night: no tripwire at
    all, on a monitor with a week of history and on one warming up."""
    rng = random.Random(11)
    days = sc.normal_days(T0, 8.6, 0.25, rng)
    sc.peak_at_one_merchant(days, T0 + 8 * sc.DAY + 11 * sc.HOUR, 30, 0.25, rng)
    _, signals = _run(days, 0.25)
    assert signals == []
    fresh = sc.normal_days(T0 + 3 * sc.HOUR, 1.5, 0.25, random.Random(12))
    _, signals = _run(fresh, 0.25)
    assert signals == []


@pytest.fixture(scope="module")
def ordinary() -> sc.Days:
    """A day and a few hours of ordinary traffic (a day is the warm-up)."""
    return sc.normal_days(T0, 1.2, 1.0, random.Random(99))


def _with(base: sc.Days) -> sc.Days:
    return sc.Days(list(base.decisions), list(base.overrides))


def test_every_tripwire_stays_quiet_on_normal_traffic(ordinary: sc.Days) -> None:
    _, signals = _run(ordinary, 1.0)
    assert signals == []


@pytest.mark.parametrize("tripwire", ["outcome", "approval_drop", "new_device_payouts",
                                      "overrides"])
def test_each_tripwire_fires_on_its_scenario(tripwire: str, ordinary: sc.Days) -> None:
    rng = random.Random(len(tripwire))
    days = _with(ordinary)
    start = T0 + sc.DAY + 2 * sc.HOUR
    if tripwire == "outcome":
        sc.card_wave(days, start, 20, 30.0, rng)
        fires_at, key = start, "DENY:card.magstripe_contactless"
    elif tripwire == "approval_drop":
        sc.approval_dip(days, start, 30, 1.0, rng)
        fires_at, key = start, "fps.outbound"
    elif tripwire == "new_device_payouts":
        sc.takeover_wave(days, start, 120, rng)
        fires_at, key = start + 30 * 60_000, ""  # when the payouts start
    else:
        sc.override_run(days, start, 40, rng)
        fires_at, key = start, ""
    _, signals = _run(days, 1.0)
    got = _by(signals, tripwire)
    raised = [(k, at) for k, state, at in got if state == "RAISED"]
    assert [k for k, _ in raised] == [key], got
    assert 0 <= raised[0][1] - fires_at < 10 * 60_000
    assert [state for k, state, _ in got if state != "ONGOING"][-1] == "CLEARED"
    assert all(s.audience == ("soc" if tripwire == "new_device_payouts" else "ops")
               and not s.pauses for s in signals if s.tripwire == tripwire)


def test_payouts_without_a_wave_of_new_devices_before_them_are_not_a_takeover(
        ordinary: sc.Days) -> None:
    days = _with(ordinary)
    sc.takeover_wave(days, T0 + sc.DAY + 2 * sc.HOUR, 120, random.Random(5))
    # the same payouts, but the new devices came two days before (not this wave)
    days.decisions = [{**d, "event_time": d["event_time"] - 2 * sc.DAY}
                      if d["attributes"].get("kind") == "DEVICE_ADDED" and
                      d["subjects"]["account"].startswith("acct-ato-") else d
                      for d in days.decisions]
    _, signals = _run(days, 1.0)
    assert _by(signals, "new_device_payouts") == []


def test_a_monitor_restored_from_its_cells_goes_on_as_if_it_never_stopped(
        ordinary: sc.Days) -> None:
    rng = random.Random(3)
    days = _with(ordinary)
    sc.card_wave(days, T0 + sc.DAY + 2 * sc.HOUR, 20, 100.0, rng)
    sc.takeover_wave(days, T0 + sc.DAY + sc.HOUR, 120, rng)
    obs = sorted(_observations(days), key=lambda o: (o.t, o.id))
    whole, expected = replay(obs, SystemMonitor(default_tripwires(sc.policy(1.0))))
    assert {s.tripwire for s in expected} >= {"customer_alerts", "new_device_payouts"}
    for cut in (len(obs) // 3, len(obs) * 5 // 6 + 7):
        first = SystemMonitor(default_tripwires(sc.policy(1.0)))
        got = [s for o in obs[:cut] for s in first.observe(o)]
        # through the snapshot's cells, as JSON, as the worker writes and reads them
        stored: dict[str, Any] = {k: orjson.loads(orjson.dumps(v))
                                  for k, v in cells(first.state()).items()}
        second = SystemMonitor(default_tripwires(sc.policy(1.0)))
        second.restore(uncells(stored))
        _, rest = replay(obs[cut:], second)
        assert got + rest == expected
        assert second.held == whole.held and second.counted == whole.counted
