"""The system-wide velocity monitor's core: is the whole bank seeing an abnormal
number of something (customer alerts, declines, decisions of an outcome) right
now, compared with what is normal for this time of the week — and if so, what do
the events of the spike have in common?

Pure and in event time: :meth:`SpikeMonitor.add` takes each counted event's time
and attributes and returns the transitions it causes (a spike raised, ongoing,
cleared), so a replay of the same events gives the same transitions.

* **Counts.** Events go into one-minute buckets; the observed value is the sum
  of the ``window_ms`` ending at the newest bucket (sliding by the minute).
* **Baseline.** With history at the same time of the week (the same window 1 to
  ``weeks`` weeks before), the median of those windows; with less than a week
  of it, the median of the same window 1 to ``days`` days before; with less than
  a day (a new installation warming up), an EWMA of the windows that
  ended before the judged window began (the start of an attack must not raise
  the bar it is judged against), updated as each minute closes and frozen during
  a spike (an attack must not become normal); never below ``floor`` (a quiet
  night does not trip on a handful of alerts).
* **Warm-up.** Nothing is raised in the first ``warmup_minutes`` (a day) after
  the first event: a new installation, or a new series such as a new payment
  method, learns a day of its rhythm first (a morning's rise is five times the
  night, and an EWMA alone cannot know that). A warm-up of a day or more lasts
  a window less a minute longer, until the window a day before the judged one
  is all history: before that the judged window would have only the EWMA to go
  on, and a morning's rise just after the warm-up would be a spike. The EWMA
  starts from the first full window.
* **A spike** is ``observed >= ratio x baseline`` and ``observed >= minimum``,
  checked at every event (an attack is seen within the minute it crosses the
  line) and as each minute closes. It is **cleared** with hysteresis: the closed
  window at or below ``clear_ratio x baseline`` for ``clear_minutes`` minutes in
  a row. While it lasts, an ``ONGOING`` update every ``ongoing_minutes``.
* **The common pattern** is the attribute values a large share of the spike's
  events have (``pattern_share``) and few normal events do (``lift`` times
  their normal share, an EWMA per value outside spikes): for the Tesco Bank
  attack, ``entry_mode=MAGSTRIPE_CONTACTLESS`` and ``domestic=false``.

>>> m = SpikeMonitor(MonitorPolicy(minimum=20, floor=2.0, warmup_minutes=60))
>>> t0 = 1_790_000_000_000
>>> quiet = [m.add(t0 + i * 60_000, {"entry_mode": "CHIP"}) for i in range(120)]
>>> attack = [m.add(t0 + 120 * 60_000 + i * 1_000, {"entry_mode": "MAGSTRIPE"})
...           for i in range(50)]
>>> raised = [e for es in attack for e in es]
>>> raised[0].state, raised[0].pattern
('RAISED', {'entry_mode': 'MAGSTRIPE'})

:class:`SystemMonitor` runs the tripwires (:func:`default_tripwires`) over
decisions and audit records, as :class:`Observation` s: the customer-alert spike
(which pauses customer alerts and tells the SOC), spikes of each outcome per
payment method, a drop in approval rate per payment method, new-device logins
followed by high-value payouts from the same accounts, and a rise in manual
overrides.
"""

from __future__ import annotations

import array
import base64
import bisect
import statistics
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = [
    "MINUTE_MS",
    "WEEK_MS",
    "ApprovalDrop",
    "MonitorPolicy",
    "NewDevicePayouts",
    "Observation",
    "Signal",
    "Spike",
    "SpikeMonitor",
    "SystemMonitor",
    "Transition",
    "Tripwire",
    "default_tripwires",
    "emergency_control",
    "observation_of",
]

MINUTE_MS = 60_000
WEEK_MS = 7 * 24 * 60 * MINUTE_MS
_DAY_MINUTES = 24 * 60
_SHARE_EPSILON = 1e-4  # a value's normal share below this is forgotten (IPs come and go)


@dataclass(frozen=True)
class MonitorPolicy:
    window_ms: int = 10 * MINUTE_MS
    ratio: float = 5.0  # observed / baseline that makes a spike
    minimum: int = 200  # ... and at least this many in the window
    clear_ratio: float = 2.0  # a spike clears at or below this x baseline ...
    clear_minutes: int = 10  # ... for this many closed windows in a row
    ongoing_minutes: int = 10  # an ONGOING update this often while a spike lasts
    floor: float = 20.0  # the baseline is never below this
    warmup_minutes: int = 24 * 60  # nothing is raised before this much has been seen
    ewma_alpha: float = 0.02  # per minute: ~50 minutes of memory
    weeks: int = 4  # time-of-week history used for the baseline
    days: int = 7  # time-of-day history, used while there is no week of it
    pattern_share: float = 0.5  # a value in at least this share of the spike's events
    lift: float = 3.0  # ... and this many times its normal share

    def __post_init__(self) -> None:
        if self.window_ms % MINUTE_MS or self.window_ms <= 0:
            raise ValueError("the window is a whole number of minutes")
        if not (self.ratio > self.clear_ratio >= 1.0):
            raise ValueError("ratio > clear_ratio >= 1")
        if self.clear_minutes < 1 or self.ongoing_minutes < 1:
            raise ValueError("clear_minutes and ongoing_minutes are at least 1")


@dataclass(frozen=True)
class Transition:
    state: str  # RAISED, ONGOING, CLEARED
    at: int  # event time: of the event that caused it, or the minute that closed
    window_ms: int
    observed: int
    baseline: float
    ratio: float
    pattern: dict[str, str] = field(default_factory=dict)
    pattern_share: float = 0.0  # share of the window's events matching every pattern value
    # each pattern value: (attribute, value, its share of the window, its lift over normal)
    lifts: tuple[tuple[str, str, float, float], ...] = ()


_Sig = tuple[tuple[str, str], ...]


class SpikeMonitor:
    """One counted stream (customer alerts, say), system-wide."""

    def __init__(self, policy: MonitorPolicy | None = None, first: int | None = None,
                 background: bool = False) -> None:
        """``first``: the minute counting began (default: this series' first event's).
        ``background``: what is normal for an attribute value is learnt from every event
        :meth:`note` d (all decisions, say), not only from the counted ones."""
        self.policy = p = policy or MonitorPolicy()
        self.background = background
        self._bg: dict[int, Counter[tuple[str, str]]] = {}  # minute -> values noted
        self._bg_n: dict[int, int] = {}  # minute -> events noted
        self.buckets: dict[int, int] = {}  # minute -> events
        # each day's counts as last packed for a snapshot, and the days changed since
        self._packed: dict[int, str] = {}
        self._touched: set[int] = set()
        # minute -> events by their attribute values (a signature: sorted pairs)
        self.values: dict[int, Counter[_Sig]] = {}
        self.minute: int | None = None  # the newest minute seen
        self.first = first  # the minute counting began (how much history there is)
        self.ewma: float | None = None
        # the EWMA as each minute closed: (minute, value, decaying from there on); a
        # window is judged against the EWMA of the windows before it, not one that has
        # already learnt the start of the spike it is judging
        self._ewmas: list[tuple[int, float, bool]] = []
        # a value's share of normal events: (share, as of which minute learnt from),
        # decaying by the minutes learnt from since (a value is updated only where seen)
        self.normal_share: dict[tuple[str, str], tuple[float, int]] = {}
        self.learnt = 0  # minutes learnt from
        self._window: tuple[int, int] | None = None  # (end minute, events): the newest
        self.spike: Transition | None = None
        self.calm = 0  # closed windows in a row at or below the clear ratio
        self.reported = 0  # event time of the spike's last RAISED or ONGOING
        self._kept_from: int | None = None  # buckets before this minute are forgotten
        self._baseline: tuple[int, float] | None = None  # (minute, baseline) last computed
        self._n = p.window_ms // MINUTE_MS

    # -- counting -------------------------------------------------------------------
    def add(self, t_ms: int, attributes: Mapping[str, object] | None = None) \
            -> list[Transition]:
        """Count one event; the transitions it causes (with those of the minutes its
        time closes)."""
        minute = t_ms // MINUTE_MS
        out = self._advance_to(minute)
        if self._kept_from is not None and minute < self._kept_from:
            return out  # older than any window a baseline reads
        self.buckets[minute] = self.buckets.get(minute, 0) + 1
        self._touched.add(minute // _DAY_MINUTES)
        if minute <= (self.minute or minute) - self._n:
            self._baseline = None  # history changed (an event in the window changes none)
        w = self._window
        if w is not None and w[0] - self._n < minute <= w[0]:
            self._window = (w[0], w[1] + 1)
        if minute <= (self.minute or minute) - self._n:
            return out  # behind the window: history only (the same in a replay)
        if attributes:  # a count-only series keeps no values
            values = self.values.get(minute)
            if values is None:
                values = self.values[minute] = Counter()
            values[_items(attributes)] += 1
        if self.spike is None:
            out += self._raise(t_ms, self.minute or minute)
        return out

    def note(self, t_ms: int, attributes: Mapping[str, object]) -> list[Transition]:
        """An event of the background (counted or not): what is normal for a value."""
        minute = t_ms // MINUTE_MS
        out = self._advance_to(minute) if minute != self.minute else []
        if minute < (self.minute or minute):
            return out  # a minute already learnt from
        seen = self._bg.get(minute)
        if seen is None:
            seen = self._bg[minute] = Counter()
        for k, v in attributes.items():
            seen[(k, v) if isinstance(v, str) else (str(k), _text(v))] += 1
        self._bg_n[minute] = self._bg_n.get(minute, 0) + 1
        return out

    def advance(self, t_ms: int) -> list[Transition]:
        """Event time has reached ``t_ms`` with nothing counted: the minutes before it
        are closed (a spike ends when its events stop, not at the next event)."""
        minute = t_ms // MINUTE_MS
        if self.minute is None or minute <= self.minute:
            return []
        return self._advance_to(minute)

    def _advance_to(self, minute: int) -> list[Transition]:
        if self.first is None:
            self.first = minute
        out: list[Transition] = []
        if self.minute is None or minute > self.minute:
            if self.minute is not None:
                out = self._close_minutes(self.minute, minute)
            self.minute = minute
        return out

    def observed(self, minute: int | None = None) -> int:
        """Events in the window ending at ``minute`` (default: the newest)."""
        end = self.minute if minute is None else minute
        if end is None:
            return 0
        if self._window is not None and self._window[0] == end:
            return self._window[1]
        n = sum(self.buckets.get(m, 0) for m in range(end - self._n + 1, end + 1))
        if end == self.minute:
            self._window = (end, n)
        return n

    def baseline(self, minute: int | None = None) -> float:
        """What is normal for the window ending at ``minute``."""
        end = self.minute if minute is None else minute
        p = self.policy
        if end is None:
            return p.floor
        if self._baseline is not None and self._baseline[0] == end:
            return self._baseline[1]  # history and the EWMA change as minutes close
        history = self._history(end, WEEK_MS // MINUTE_MS, p.weeks) or \
            self._history(end, _DAY_MINUTES, p.days)
        if history:
            base = max(p.floor, float(statistics.median(history)))
        else:
            base = max(p.floor, self._ewma_before(end - self._n))
        self._baseline = (end, base)
        return base

    @property
    def _warmup(self) -> int:
        """Minutes from the first event before anything is raised (see the module)."""
        p = self.policy
        return p.warmup_minutes + (self._n - 1 if p.warmup_minutes >= _DAY_MINUTES else 0)

    def _history(self, end: int, period: int, count: int) -> list[int]:
        """The windows ending at ``end`` less 1 .. ``count`` periods that are all history."""
        first = self.first if self.first is not None else end
        return [self.observed(end - k * period) for k in range(1, count + 1)
                if end - k * period - self._n + 1 >= first]

    def _ewma_before(self, minute: int) -> float:
        """The EWMA as it was when ``minute`` closed (0 before there was one)."""
        i = bisect.bisect_right(self._ewmas, (minute, float("inf"), True)) - 1
        if i < 0:
            return 0.0
        m, value, decaying = self._ewmas[i]
        return value * (1 - self.policy.ewma_alpha) ** (minute - m) if decaying else value

    # -- minutes closing --------------------------------------------------------------
    def _close_minutes(self, last: int, now: int) -> list[Transition]:
        """Minutes ``last`` .. ``now - 1`` are over: judge each closed window, then
        learn from it (not during a spike); forget what no baseline will read again.
        After an idle stretch the window is empty and any spike cleared, so only its
        first minutes are walked one by one."""
        p = self.policy
        out: list[Transition] = []
        upto = min(now, last + self._n + p.clear_minutes + 2)
        for m in range(last, upto):
            out += self._judge_closed(m)
            if self.spike is None and m - (self.first or m) >= self._n - 1:  # full windows
                w = self.observed(m)
                self.ewma = float(w) if self.ewma is None else \
                    p.ewma_alpha * w + (1 - p.ewma_alpha) * self.ewma
                self._ewmas.append((m, self.ewma, False))
                self._learn_shares(m)
                self._baseline = None
        if self.spike is None and self.ewma is not None and now > upto:
            self._ewmas.append((upto - 1, self.ewma, True))  # the empty windows of a gap
            self.ewma *= (1 - p.ewma_alpha) ** (now - upto)
            # ... up to the gap's last minute: what comes next may be a spike, during
            # which the EWMA learns nothing (it must not go on decaying there)
            self._ewmas.append((now - 1, self.ewma, False))
        # keep what windows from now on can be judged against
        i = bisect.bisect_right(self._ewmas, (now - self._n - 1, float("inf"), True)) - 1
        if i > 0:
            del self._ewmas[:i]
        self._baseline = None
        keep_from = now - (p.weeks * WEEK_MS // MINUTE_MS) - self._n
        old = self._kept_from if self._kept_from is not None else keep_from
        if keep_from - old > len(self.buckets):  # a long gap: fewer buckets than minutes
            for m in [m for m in self.buckets if m < keep_from]:
                del self.buckets[m]
                self._touched.add(m // _DAY_MINUTES)
        else:  # minute by minute, not a scan of weeks of buckets per minute
            for m in range(old, keep_from):
                if self.buckets.pop(m, None) is not None:
                    self._touched.add(m // _DAY_MINUTES)
        self._kept_from = max(old, keep_from)
        for m in [m for m in self.values if m <= now - self._n]:
            del self.values[m]  # attribute values matter within the window only
        for m in [m for m in self._bg if m < now]:  # learnt from, or not (a spike)
            del self._bg[m]
            self._bg_n.pop(m, None)
        return out

    def _judge_closed(self, m: int) -> list[Transition]:
        """The window ending at minute ``m`` is complete (its end is ``(m+1)`` minutes)."""
        p = self.policy
        at = (m + 1) * MINUTE_MS
        if self.spike is None:
            return self._raise(at, m)
        observed, base = self.observed(m), self.baseline(m)
        ratio = observed / base
        self.calm = self.calm + 1 if ratio <= p.clear_ratio else 0
        if self.calm >= p.clear_minutes:
            self.spike, self.calm = None, 0
            return [Transition("CLEARED", at, p.window_ms, observed, base, ratio)]
        if at - self.reported >= p.ongoing_minutes * MINUTE_MS:
            self.reported = at
            return [self._transition("ONGOING", at, m, observed, base)]
        return []

    def _raise(self, at: int, end: int) -> list[Transition]:
        p = self.policy
        observed = self.observed(end)
        if observed < p.minimum or end - (self.first or end) < self._warmup:
            return []
        base = self.baseline(end)
        if observed / base < p.ratio:
            return []
        self.spike = self._transition("RAISED", at, end, observed, base)
        self.calm, self.reported = 0, at
        return [self.spike]

    def _transition(self, state: str, at: int, end: int, observed: int,
                    base: float) -> Transition:
        pattern, share, lifts = self.pattern(end)
        return Transition(state, at, self.policy.window_ms, observed, base, observed / base,
                          pattern, share, lifts)

    def _learn_shares(self, minute: int) -> None:
        if self.background:
            total, seen = self._bg_n.pop(minute, 0), self._bg.pop(minute, Counter())
        else:
            total = self.buckets.get(minute, 0)
            seen = _value_counts(self.values.get(minute, Counter())) if total else Counter()
        if not total:
            return
        a = self.policy.ewma_alpha
        self.learnt += 1
        for kv, n in seen.items():
            # a value never seen starts from nothing: one minute of it is not normal
            self.normal_share[kv] = (a * n / total + (1 - a) * self.share(kv, self.learnt - 1),
                                     self.learnt)
        if self.learnt % 60 == 0:  # now and then: forget values hardly seen (IPs come and go)
            for kv in [kv for kv in self.normal_share if self.share(kv) < _SHARE_EPSILON]:
                del self.normal_share[kv]

    def share(self, kv: tuple[str, str], learnt: int | None = None) -> float:
        """The normal share of an attribute value: as of the ``learnt``-th minute learnt
        from (default: the latest). It decays by the minutes learnt from where the value
        was not seen; not during a spike, when nothing is learnt."""
        got = self.normal_share.get(kv)
        if got is None:
            return 0.0
        value, at = got
        now = self.learnt if learnt is None else learnt
        return value * (1 - self.policy.ewma_alpha) ** max(0, now - at)

    def pattern(self, end: int | None = None) \
            -> tuple[dict[str, str], float, tuple[tuple[str, str, float, float], ...]]:
        """What the window's events have in common that normal events do not, the
        share of the window's events that have all of it, and each value's share and
        lift (its share over its normal share)."""
        p = self.policy
        end = (self.minute or 0) if end is None else end
        signatures: Counter[_Sig] = Counter()
        for m in range(end - self._n + 1, end + 1):
            signatures.update(self.values.get(m, Counter()))
        total = sum(signatures.values())
        if not total:
            return {}, 0.0, ()
        counts = _value_counts(signatures)
        lifts = []
        for (k, v), n in sorted(counts.items(), key=lambda x: (-x[1], x[0])):
            share, normal = n / total, self.share((k, v))
            if share >= p.pattern_share and share >= p.lift * normal:
                lifts.append((k, v, round(share, 4),
                              round(share / max(normal, _SHARE_EPSILON), 1)))
        if not lifts:
            return {}, 0.0, ()
        want = {(k, v) for k, v, _, _ in lifts}
        matching = sum(n for sig, n in signatures.items() if want <= set(sig))
        return {k: v for k, v, _, _ in lifts}, matching / total, tuple(lifts)

    # -- persistence ----------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything it knows, as JSON-able values (a snapshot to restore from). The
        counts are in day chunks under ``"days"`` (a day's minutes, dense, zlib and
        base64): a snapshot writer need only write again the days that changed."""
        for d in self._touched:  # only the days counted in or forgotten since: packed again
            start = d * _DAY_MINUTES
            counts = [self.buckets.get(m, 0) for m in range(start, start + _DAY_MINUTES)]
            if any(counts):
                self._packed[d] = base64.b64encode(zlib.compress(
                    array.array("Q", counts).tobytes(), 6)).decode()
            else:
                self._packed.pop(d, None)
        self._touched.clear()
        return {
            "days": {str(d): packed for d, packed in self._packed.items()},
            "values": [[m, [[list(map(list, sig)), n] for sig, n in c.items()]]
                       for m, c in sorted(self.values.items())],
            "minute": self.minute, "first": self.first, "ewma": self.ewma,
            "normal_share": [[k, v, s, m] for (k, v), (s, m) in sorted(self.normal_share.items())],
            "spike": None if self.spike is None else asdict(self.spike),
            "learnt": self.learnt,
            "bg": [[m, self._bg_n[m], [[k, v, n] for (k, v), n in c.items()]]
                   for m, c in sorted(self._bg.items())],
            "calm": self.calm, "reported": self.reported, "kept_from": self._kept_from,
            "ewmas": [list(x) for x in self._ewmas]}

    def restore(self, st: Mapping[str, Any]) -> None:
        self.buckets, self._touched = {}, set()
        self._packed = {int(d): packed for d, packed in st["days"].items()}
        for d, packed in st["days"].items():
            counts = array.array("Q")
            counts.frombytes(zlib.decompress(base64.b64decode(packed)))
            self.buckets.update((int(d) * _DAY_MINUTES + i, n)
                                for i, n in enumerate(counts) if n)
        self.values = {m: Counter({tuple((k, v) for k, v in sig): n for sig, n in c})
                       for m, c in st["values"]}
        self.minute, self.first, self.ewma = st["minute"], st["first"], st["ewma"]
        self.normal_share = {(k, v): (s, m) for k, v, s, m in st["normal_share"]}
        self.spike = _transition(st["spike"])
        self.calm, self.reported, self._kept_from = st["calm"], st["reported"], st["kept_from"]
        self._ewmas = [(m, v, d) for m, v, d in st["ewmas"]]
        self._bg = {m: Counter({(k, v): n for k, v, n in c}) for m, _, c in st["bg"]}
        self.learnt = st["learnt"]
        self._bg_n = {m: total for m, total, _ in st["bg"]}
        self._baseline = self._window = None


def _transition(st: Mapping[str, Any] | None) -> Transition | None:
    return None if st is None else Transition(**{
        **st, "lifts": tuple(tuple(x) for x in st["lifts"])})


def _text(v: object) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _items(attributes: Mapping[str, object] | None) -> _Sig:
    return tuple(sorted((str(k), _text(v)) for k, v in (attributes or {}).items()))


def _value_counts(signatures: Counter[_Sig]) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for sig, n in signatures.items():
        for kv in sig:
            out[kv] += n
    return out


# -- what the monitor watches ------------------------------------------------------------
@dataclass(frozen=True)
class Observation:
    """One decision or audit record, as the tripwires see it."""

    t: int  # event time (a decision's event's time; an audit record's time)
    id: str  # ties at one time are broken by this, in a replay as live
    kind: str  # "decision" or "override"
    outcome: str = ""
    actions: tuple[str, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=dict)
    account: str = ""

    @property
    def method(self) -> str:
        """The payment method: card by entry mode, FPS by direction, or login."""
        a = self.attributes
        what = a.get("entry_mode") or a.get("direction") or ""
        return f"{a.get('method', 'unknown')}.{what.lower()}" if what else \
            a.get("method", "unknown")


def observation_of(schema_name: str, record: Mapping[str, Any]) -> Observation | None:
    """A decided event (a repeat's decision is not a new event) or an override."""
    if schema_name.endswith(".Decision"):
        if record.get("repeat"):
            return None
        return Observation(record["event_time"], record["decision_id"], "decision",
                           record["outcome"], tuple(record["actions"]),
                           dict(record.get("attributes") or {}),
                           (record.get("subjects") or {}).get("account", ""))
    if schema_name.endswith(".AuditRecord") and record["action"] == "override":
        return Observation(record["at"], record["audit_id"], "override")
    return None


@dataclass(frozen=True)
class Signal:
    """A tripwire's transition, and what it asks for."""

    tripwire: str
    key: str  # which of its series (a payment method, say; "" when it has one)
    audience: str  # "soc" or "ops"
    pauses: bool  # RAISED pauses customer alerts, CLEARED resumes them
    transition: Transition
    summary: str


class Tripwire:
    """Watches the observations it selects; says when its series spike and clear."""

    name: str = ""
    audience: str = "ops"
    pauses: bool = False
    started: int | None = None  # the minute the monitor began: when every series' history starts

    def observe(self, obs: Observation) -> list[Signal]:
        raise NotImplementedError

    def advance(self, t_ms: int) -> list[Signal]:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        raise NotImplementedError

    def restore(self, st: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def active(self) -> dict[str, Transition]:
        """The series spiking now, by key."""
        raise NotImplementedError

    def _signal(self, key: str, tr: Transition, what: str) -> Signal:
        where = f" ({key})" if key else ""
        if tr.state == "CLEARED":
            text = f"{what}{where} back to normal: {tr.observed} in the window, " \
                   f"baseline {tr.baseline:.0f}"
        else:
            pattern = ", ".join(f"{k}={v} ({s:.0%} of them, {lift}x normal)"
                                for k, v, s, lift in tr.lifts) or "no common pattern"
            text = (f"{what}{where}: {tr.observed} in {tr.window_ms // MINUTE_MS} min, "
                    f"{tr.ratio:.1f}x the baseline of {tr.baseline:.0f}; common pattern: "
                    f"{pattern}")
        return Signal(self.name, key, self.audience, self.pauses, tr, text)


class Spike(Tripwire):
    """A spike in the number of selected observations, one series per ``by`` value
    (one series when ``by`` is None)."""

    def __init__(self, name: str, select: Callable[[Observation], bool], policy: MonitorPolicy,
                 what: str, *, by: Callable[[Observation], str] | None = None,
                 audience: str = "ops", pauses: bool = False,
                 background: Callable[[Observation], bool] | None = None) -> None:
        """``background``: the observations what is normal is learnt from (every decision,
        for customer alerts: a spike's pattern is what sets its events apart from the
        bank's traffic); by default, the counted ones."""
        self.name, self.select, self.policy, self.what = name, select, policy, what
        self.by, self.audience, self.pauses = by, audience, pauses
        self.background = background
        self.series: dict[str, SpikeMonitor] = {}

    def observe(self, obs: Observation) -> list[Signal]:
        selected = self.select(obs)
        if self.background is not None and self.by is None and self.background(obs):
            out = self._series("").note(obs.t, obs.attributes)
            if not selected:
                return [self._signal("", tr, self.what) for tr in out]
        elif not selected:
            return []
        else:
            out = []
        key = self.by(obs) if self.by else ""
        out += self._series(key).add(obs.t, obs.attributes)
        return [self._signal(key, tr, self.what) for tr in out]

    def _series(self, key: str) -> SpikeMonitor:
        m = self.series.get(key)
        if m is None:
            m = self.series[key] = SpikeMonitor(self.policy, self.started,
                                                self.background is not None)
        return m

    def advance(self, t_ms: int) -> list[Signal]:
        return [self._signal(k, tr, self.what) for k, m in sorted(self.series.items())
                for tr in m.advance(t_ms)]

    def active(self) -> dict[str, Transition]:
        return {k: m.spike for k, m in self.series.items() if m.spike is not None}

    def state(self) -> dict[str, Any]:
        return {k: m.state() for k, m in self.series.items()}

    def restore(self, st: Mapping[str, Any]) -> None:
        self.series = {}
        for k, s in st.items():
            self.series[k] = m = SpikeMonitor(self.policy, None, self.background is not None)
            m.restore(s)


class ApprovalDrop(Tripwire):
    """The approval rate (decisions allowed / all decisions) of a payment method falls
    to ``1 - drop`` of its normal rate, with at least ``policy.minimum`` decisions in
    the window; it clears when back above ``1 - drop / 2`` of normal for
    ``clear_minutes`` closed windows."""

    name = "approval_drop"

    def __init__(self, policy: MonitorPolicy, drop: float = 0.5) -> None:
        self.policy, self.drop = policy, drop
        # counts only: the series never spike by themselves
        self._count_policy = replace(policy, ratio=float("inf"), minimum=2 ** 62, floor=0.0)
        self.total: dict[str, SpikeMonitor] = {}
        self.approved: dict[str, SpikeMonitor] = {}
        self.dropped: dict[str, Transition] = {}
        self.calm: dict[str, int] = {}

    def observe(self, obs: Observation) -> list[Signal]:
        if obs.kind != "decision" or obs.attributes.get("method") in (None, "login"):
            return []
        key = obs.method
        if key not in self.total:
            self.total[key] = SpikeMonitor(self._count_policy, self.started)
            self.approved[key] = SpikeMonitor(self._count_policy, self.started)
        total, approved = self.total[key], self.approved[key]
        out = self._close(key, obs.t)
        total.add(obs.t)
        if obs.outcome == "ALLOW":
            approved.add(obs.t)
        else:
            approved.advance(obs.t)
        return out + self._judge(key, obs.t, closed=False)

    def advance(self, t_ms: int) -> list[Signal]:
        return [s for key in sorted(self.total) for s in self._close(key, t_ms)]

    def _close(self, key: str, t_ms: int) -> list[Signal]:
        """Judge each window of ``key`` that closes before ``t_ms`` (after an idle
        stretch only the first: then the window is empty and any drop cleared)."""
        total, approved = self.total[key], self.approved[key]
        if total.minute is None:
            return []
        out = []
        now, last = t_ms // MINUTE_MS, total.minute
        for m in range(last, min(now, last + total._n + self.policy.clear_minutes + 2)):
            out += self._judge(key, (m + 1) * MINUTE_MS, closed=True)
            total.advance((m + 1) * MINUTE_MS)
            approved.advance((m + 1) * MINUTE_MS)
        total.advance(t_ms)
        approved.advance(t_ms)
        return out

    def _rates(self, key: str) -> tuple[int, float, float]:
        total, approved = self.total[key], self.approved[key]
        end = total.minute
        n = total.observed(end)
        now = approved.observed(end) / n if n else 1.0
        base_total = total.baseline(end)
        normal = min(1.0, approved.baseline(end) / base_total) if base_total else 1.0
        return n, now, normal

    def _judge(self, key: str, t: int, closed: bool) -> list[Signal]:
        p = self.policy
        n, now, normal = self._rates(key)
        ratio = now / normal if normal else 1.0
        tr_args = (p.window_ms, n, normal, ratio)
        if key not in self.dropped:
            if n >= p.minimum and ratio <= 1 - self.drop:
                tr = self.dropped[key] = Transition("RAISED", t, *tr_args, {"method": key})
                self.calm[key] = 0
                return [Signal(self.name, key, self.audience, False, tr,
                               f"approval rate of {key}: {now:.0%} of {n} decisions in "
                               f"{p.window_ms // MINUTE_MS} min, against a normal "
                               f"{normal:.0%}")]
            return []
        if not closed:
            return []
        self.calm[key] = self.calm.get(key, 0) + 1 if ratio >= 1 - self.drop / 2 else 0
        if self.calm[key] >= p.clear_minutes:
            del self.dropped[key]
            return [Signal(self.name, key, self.audience, False,
                           Transition("CLEARED", t, *tr_args),
                           f"approval rate of {key} back to normal: {now:.0%} of {n} "
                           f"decisions, against a normal {normal:.0%}")]
        return []

    def active(self) -> dict[str, Transition]:
        return dict(self.dropped)

    def state(self) -> dict[str, Any]:
        return {"total": {k: m.state() for k, m in self.total.items()},
                "approved": {k: m.state() for k, m in self.approved.items()},
                "dropped": {k: asdict(t) for k, t in self.dropped.items()},
                "calm": self.calm}

    def restore(self, st: Mapping[str, Any]) -> None:
        for name in ("total", "approved"):
            series: dict[str, SpikeMonitor] = {}
            for k, s in st[name].items():
                series[k] = m = SpikeMonitor(self._count_policy)
                m.restore(s)
            setattr(self, name, series)
        self.dropped = {k: t for k, v in st["dropped"].items() if (t := _transition(v))}
        self.calm = dict(st["calm"])


class NewDevicePayouts(Tripwire):
    """A spike of new-device logins, then a spike of high-value outbound payments
    from the accounts that had one (within ``horizon_ms``): an account-takeover
    wave. The logins' spike may have cleared by the time the payouts come."""

    name = "new_device_payouts"
    audience = "soc"

    def __init__(self, logins: MonitorPolicy, payouts: MonitorPolicy,
                 horizon_ms: int = 24 * 3_600_000) -> None:
        self.logins, self.payouts = SpikeMonitor(logins), SpikeMonitor(payouts)
        self.horizon_ms = horizon_ms
        self.new_device: dict[str, int] = {}  # account -> its latest new-device login
        self.login_spike_at: int | None = None  # the latest RAISED of the logins
        self.raised: Transition | None = None
        self._pruned = 0

    def observe(self, obs: Observation) -> list[Signal]:
        a = obs.attributes
        if obs.kind != "decision":
            return []
        for series in (self.logins, self.payouts):
            if series.first is None:
                series.first = self.started
        if a.get("method") == "login" and a.get("kind") == "DEVICE_ADDED":
            for tr in self.logins.add(obs.t, a):
                if tr.state == "RAISED":
                    self.login_spike_at = tr.at
            if obs.account:
                self.new_device[obs.account] = max(obs.t, self.new_device.get(obs.account, 0))
            return self._tick(obs.t)
        if a.get("method") == "fps" and a.get("direction") == "OUTBOUND" and \
                a.get("value_band") == "high" and obs.account and \
                0 <= obs.t - self.new_device.get(obs.account, -self.horizon_ms - 1) \
                <= self.horizon_ms:
            return self._judge(self.payouts.add(obs.t, {"kind": a.get("kind", "")}))
        return self._tick(obs.t)

    def advance(self, t_ms: int) -> list[Signal]:
        return self._tick(t_ms)

    def _tick(self, t_ms: int) -> list[Signal]:
        for tr in self.logins.advance(t_ms):
            if tr.state == "RAISED":
                self.login_spike_at = tr.at
        if self.payouts.minute is None or t_ms // MINUTE_MS <= self.payouts.minute:
            return []
        out = self._judge(self.payouts.advance(t_ms))
        if t_ms - self._pruned >= 3_600_000:  # hourly: accounts whose horizon has passed
            self._pruned = t_ms
            cutoff = t_ms - self.horizon_ms
            self.new_device = {k: v for k, v in self.new_device.items() if v >= cutoff}
        return out

    def _judge(self, transitions: list[Transition]) -> list[Signal]:
        out = []
        for tr in transitions:
            logins_before = self.login_spike_at is not None and \
                0 <= tr.at - self.login_spike_at <= self.horizon_ms
            if tr.state == "RAISED" and logins_before:
                self.raised = tr
            elif tr.state == "RAISED" or self.raised is None:
                continue  # payouts without a wave of new devices before them: not this
            elif tr.state == "CLEARED":
                self.raised = None
            out.append(self._signal("", tr, "high-value payouts from accounts with a "
                                            "new device, after a wave of new-device logins"))
        return out

    def active(self) -> dict[str, Transition]:
        return {"": self.raised} if self.raised else {}

    def state(self) -> dict[str, Any]:
        return {"logins": self.logins.state(), "payouts": self.payouts.state(),
                "new_device": self.new_device, "login_spike_at": self.login_spike_at,
                "raised": None if self.raised is None else asdict(self.raised)}

    def restore(self, st: Mapping[str, Any]) -> None:
        self.logins.restore(st["logins"])
        self.payouts.restore(st["payouts"])
        self.new_device = dict(st["new_device"])
        self.login_spike_at = st["login_spike_at"]
        self.raised = _transition(st["raised"])


def default_tripwires(alerts: MonitorPolicy | None = None) -> list[Tripwire]:
    """The customer-alert spike (pauses alerts, tells the SOC) with ``alerts`` as its
    policy, and the other tripwires with theirs (ops alerts unless said)."""
    alerts = alerts or MonitorPolicy()
    per_method = replace(alerts, minimum=max(50, alerts.minimum // 4), floor=alerts.floor / 2)
    return [
        Spike("customer_alerts", lambda o: o.kind == "decision" and
              "CUSTOMER_ALERT" in o.actions, alerts, "customer alerts system-wide",
              audience="soc", pauses=True, background=lambda o: o.kind == "decision"),
        Spike("outcome", lambda o: o.kind == "decision" and o.outcome != "ALLOW", per_method,
              "decisions", by=lambda o: f"{o.outcome}:{o.method}"),
        ApprovalDrop(per_method),
        NewDevicePayouts(replace(alerts, minimum=max(20, alerts.minimum // 10),
                                 floor=alerts.floor / 4),
                         replace(alerts, minimum=max(10, alerts.minimum // 20),
                                 floor=alerts.floor / 10)),
        Spike("overrides", lambda o: o.kind == "override",
              replace(alerts, minimum=max(10, alerts.minimum // 20), floor=2.0,
                      ratio=4.0), "manual overrides"),
    ]


class SystemMonitor:
    """Every tripwire over one stream of observations, in event time."""

    def __init__(self, tripwires: Iterable[Tripwire] | None = None) -> None:
        self.tripwires = list(tripwires) if tripwires is not None else default_tripwires()
        self.t = 0  # the newest event time observed or advanced to
        self.counted = 0
        self.held = 0  # customer alerts asked for while alerts were paused
        self.started: int | None = None  # the first observation's minute

    def observe(self, obs: Observation) -> list[Signal]:
        self.counted += 1
        self.t = max(self.t, obs.t)
        if self.started is None:
            self.started = obs.t // MINUTE_MS
            for tw in self.tripwires:
                tw.started = self.started
        out = [s for tw in self.tripwires for s in tw.observe(obs)]
        if "CUSTOMER_ALERT" in obs.actions and self.paused:
            self.held += 1
        return out

    def advance(self, t_ms: int) -> list[Signal]:
        """Event time has reached ``t_ms``: every series closes its minutes before it
        (a series sees only its own observations, so its clock may be far behind)."""
        self.t = max(self.t, t_ms)
        return [s for tw in self.tripwires for s in tw.advance(t_ms)]

    @property
    def paused(self) -> bool:
        """Whether a pausing tripwire is raised (customer alerts should be paused)."""
        return any(tw.pauses and tw.active() for tw in self.tripwires)

    def active(self) -> dict[str, dict[str, Transition]]:
        return {tw.name: a for tw in self.tripwires if (a := tw.active())}

    def state(self) -> dict[str, Any]:
        return {"t": self.t, "counted": self.counted, "held": self.held,
                "started": self.started,
                "tripwires": {tw.name: tw.state() for tw in self.tripwires}}

    def restore(self, st: Mapping[str, Any]) -> None:
        self.t, self.counted, self.held = st["t"], st["counted"], st["held"]
        self.started = st["started"]
        for tw in self.tripwires:
            tw.started = self.started
        for tw in self.tripwires:
            if tw.name in st["tripwires"]:
                tw.restore(st["tripwires"][tw.name])


# -- the emergency control ------------------------------------------------------------------
EMERGENCY_ID = "emergency_systemic_attack"  # the control the monitor releases in auto mode
MODES = ("off", "suggest", "auto")  # what the monitor does with a spike's pattern
MODE_KEY = b"monitor_mode"  # its switch on the alert-control topic (latest wins)
# attribute -> the Starlark expression of it, for a card payment
_CARD_FIELDS = {
    "entry_mode": 'event["entry_mode"]',
    "merchant_country": 'event["merchant_country"]',
    "mcc": 'event["mcc"]',
    "merchant": 'event["merchant_id"]',
    "channel": '("card_present" if event["card_present"] else "card_not_present")',
    "wallet": 'str(event.get("wallet"))',
}


def emergency_control(pattern: Mapping[str, str], expires_at: int, why: str) -> str | None:
    """A detector (Starlark) that finds card payments with every value of ``pattern``
    until ``expires_at`` (event time: a replay ends it where live did), with the
    signal ``systemic_attack`` (declined by the response table). None when the
    pattern says nothing a card payment's fields can be checked for."""
    checks = {k: v for k, v in sorted(pattern.items()) if k in _CARD_FIELDS or k == "domestic"}
    if not checks:
        return None
    condition = " and ".join(
        f'event["merchant_country"] {"==" if v == "true" else "!="} "GB"' if k == "domestic"
        else f'{_CARD_FIELDS[k]} == "{v}"' for k, v in checks.items())
    matching = {"event_time": expires_at - 1, "merchant_country": "GB",
                "card_present": True, "wallet": None, "entry_mode": "CHIP", "mcc": "0000",
                "merchant_id": "m-0"}
    for k, v in checks.items():
        if k == "domestic":
            matching["merchant_country"] = "GB" if v == "true" else "XX"
        elif k == "channel":
            matching["card_present"] = v == "card_present"
        elif k == "merchant":
            matching["merchant_id"] = v
        else:
            matching[k] = v
    expired = {**matching, "event_time": expires_at}
    examples = [(matching, '"systemic_attack"'), (expired, "None")]
    lines = [
        f"# Emergency control from the system-wide monitor: {why}",
        "# Declines the spike's common pattern until it expires (event time).",
        "",
        'APPLIES_TO = ["CardPayment"]',
        f"EXPIRES_AT = {expires_at}",
        "",
        "def detect(event, features):",
        "    if event[\"event_time\"] >= EXPIRES_AT:",
        "        return None",
        f"    if {condition}:",
        '        return {"signal": "systemic_attack", "score": 1.0,',
        '                "reason": "the common pattern of a systemic attack"}',
        "    return None",
        "",
        "EXAMPLES = [",
        *[f'    {{"event": {_starlark(e)}, "features": {{}}, "signal": {s}}},'
          for e, s in examples],
        "]",
        "",
    ]
    return "\n".join(lines)


def _starlark(value: Mapping[str, Any]) -> str:
    parts = []
    for k, v in value.items():
        lit = "None" if v is None else "True" if v is True else "False" if v is False \
            else str(v) if isinstance(v, int) else f'"{v}"'
        parts.append(f'"{k}": {lit}')
    return "{" + ", ".join(parts) + "}"
