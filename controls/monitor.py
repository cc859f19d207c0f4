"""The system-wide velocity monitor's core: is the whole bank seeing an abnormal
number of something (customer alerts, declines, decisions of an outcome) right
now, compared with what is normal for this time of the week — and if so, what do
the events of the spike have in common?

Pure and in event time: :meth:`SpikeMonitor.add` takes each counted event's time
and attributes and returns the transitions it causes (a spike raised, cleared),
so a replay of the same events gives the same transitions.

* **Counts.** Events go into one-minute buckets; the observed value is the sum
  of the ``window_ms`` ending at the newest bucket (sliding by the minute).
* **Baseline.** With history at the same time of the week (the same window 1 to
  ``weeks`` weeks before), the median of those windows; without it (a new
  installation warming up, or a week with no data), an EWMA of the windows seen
  so far, updated as each minute closes and frozen during a spike (an attack
  must not become normal); never below ``floor`` (a quiet night does not trip on
  a handful of alerts).
* **A spike** is ``observed >= ratio x baseline`` and ``observed >= minimum``;
  it clears when the observed value falls to ``clear_ratio x baseline``.
* **The common pattern** is the attribute values a large share of the spike's
  events have (``pattern_share``) and few normal events do (``lift`` times
  their normal share, an EWMA per value outside spikes): for the Tesco Bank
  attack, ``entry_mode=MAGSTRIPE_CONTACTLESS`` and ``domestic=false``.

>>> m = SpikeMonitor(MonitorPolicy(minimum=20, floor=2.0))
>>> t0 = 1_790_000_000_000
>>> quiet = [m.add(t0 + i * 60_000, {"entry_mode": "CHIP"}) for i in range(120)]
>>> attack = [m.add(t0 + 120 * 60_000 + i * 1_000, {"entry_mode": "MAGSTRIPE"})
...           for i in range(40)]
>>> raised = [e for es in attack for e in es]
>>> raised[0].state, raised[0].pattern
('RAISED', {'entry_mode': 'MAGSTRIPE'})
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["MINUTE_MS", "WEEK_MS", "MonitorPolicy", "SpikeMonitor", "Transition"]

MINUTE_MS = 60_000
WEEK_MS = 7 * 24 * 60 * MINUTE_MS


@dataclass(frozen=True)
class MonitorPolicy:
    window_ms: int = 10 * MINUTE_MS
    ratio: float = 5.0  # observed / baseline that makes a spike
    minimum: int = 200  # ... and at least this many in the window
    clear_ratio: float = 2.0  # a spike clears at or below this x baseline
    floor: float = 20.0  # the baseline is never below this
    ewma_alpha: float = 0.02  # per minute: ~50 minutes of memory
    weeks: int = 4  # time-of-week history used for the baseline
    pattern_share: float = 0.5  # a value in at least this share of the spike's events
    lift: float = 3.0  # ... and this many times its normal share

    def __post_init__(self) -> None:
        if self.window_ms % MINUTE_MS or self.window_ms <= 0:
            raise ValueError("the window is a whole number of minutes")
        if not (self.ratio > self.clear_ratio >= 1.0):
            raise ValueError("ratio > clear_ratio >= 1")


@dataclass(frozen=True)
class Transition:
    state: str  # RAISED, CLEARED
    at: int  # event time of the event that caused it
    window_ms: int
    observed: int
    baseline: float
    ratio: float
    pattern: dict[str, str] = field(default_factory=dict)
    pattern_share: float = 0.0  # share of the window's events matching every pattern value


class SpikeMonitor:
    """One counted stream (customer alerts, say), system-wide."""

    def __init__(self, policy: MonitorPolicy | None = None) -> None:
        self.policy = p = policy or MonitorPolicy()
        self.buckets: dict[int, int] = {}  # minute -> events
        # minute -> events by their attribute values (a signature: sorted pairs)
        self.values: dict[int, Counter[tuple[tuple[str, str], ...]]] = {}
        self.minute: int | None = None  # the newest minute seen
        self.first: int | None = None  # the first minute seen (how much history there is)
        self.ewma: float | None = None
        self.normal_share: dict[tuple[str, str], float] = {}
        self.spike: Transition | None = None
        self._kept_from: int | None = None  # buckets before this minute are forgotten
        self._baseline: tuple[int, float] | None = None  # (minute, baseline) last computed
        self._n = p.window_ms // MINUTE_MS

    # -- counting -------------------------------------------------------------------
    def add(self, t_ms: int, attributes: Mapping[str, object] | None = None) \
            -> list[Transition]:
        """Count one event; the transitions it causes."""
        minute = t_ms // MINUTE_MS
        self._advance_to(minute)
        if self._kept_from is not None and minute < self._kept_from:
            return []  # older than any window a baseline reads
        self.buckets[minute] = self.buckets.get(minute, 0) + 1
        if minute <= (self.minute or minute) - self._n:
            self._baseline = None  # history changed
            return []  # behind the window: history only (the same in a replay)
        items = tuple(sorted((str(k), str(v).lower() if isinstance(v, bool) else str(v))
                             for k, v in (attributes or {}).items()))
        self.values.setdefault(minute, Counter())[items] += 1
        return self._evaluate(t_ms)

    def advance(self, t_ms: int) -> list[Transition]:
        """Event time has reached ``t_ms`` with nothing counted (a spike ends when its
        events stop, not at the next event)."""
        minute = t_ms // MINUTE_MS
        if self.minute is None or minute <= self.minute:
            return []
        self._advance_to(minute)
        return self._evaluate(t_ms)

    def _advance_to(self, minute: int) -> None:
        if self.first is None:
            self.first = minute
        if self.minute is None or minute > self.minute:
            if self.minute is not None:
                self._close_minutes(self.minute, minute)
            self.minute = minute

    def observed(self, minute: int | None = None) -> int:
        """Events in the window ending at ``minute`` (default: the newest)."""
        end = self.minute if minute is None else minute
        if end is None:
            return 0
        return sum(self.buckets.get(m, 0) for m in range(end - self._n + 1, end + 1))

    def baseline(self, minute: int | None = None) -> float:
        """What is normal for the window ending at ``minute``."""
        end = self.minute if minute is None else minute
        p = self.policy
        if end is None:
            return p.floor
        if self._baseline is not None and self._baseline[0] == end:
            return self._baseline[1]  # history and the EWMA change as minutes close
        week = WEEK_MS // MINUTE_MS
        history = [self.observed(end - k * week) for k in range(1, p.weeks + 1)
                   if self.first is not None and end - k * week - self._n + 1 >= self.first]
        if history:
            base = max(p.floor, float(statistics.median(history)))
        else:
            base = max(p.floor, self.ewma if self.ewma is not None else 0.0)
        if end == self.minute:
            self._baseline = (end, base)
        return base

    # -- minutes closing --------------------------------------------------------------
    def _close_minutes(self, last: int, now: int) -> None:
        """Minutes ``last`` .. ``now - 1`` are over: learn from them (not during a
        spike), forget what no baseline will read again."""
        p = self.policy
        learning = self.spike is None
        upto = min(now, last + self._n + 1)
        for m in range(last, upto):
            if learning:
                w = self.observed(m)
                self.ewma = float(w) if self.ewma is None else \
                    p.ewma_alpha * w + (1 - p.ewma_alpha) * self.ewma
                self._learn_shares(m)
        if learning and self.ewma is not None and now > upto:
            self.ewma *= (1 - p.ewma_alpha) ** (now - upto)  # the empty windows of a gap
        keep_from = now - (p.weeks * WEEK_MS // MINUTE_MS) - self._n
        old = self._kept_from if self._kept_from is not None else keep_from
        if keep_from - old > len(self.buckets):  # a long gap: fewer buckets than minutes
            for m in [m for m in self.buckets if m < keep_from]:
                del self.buckets[m]
        else:  # minute by minute, not a scan of weeks of buckets per minute
            for m in range(old, keep_from):
                self.buckets.pop(m, None)
        self._kept_from = max(old, keep_from)
        for m in [m for m in self.values if m <= now - self._n]:
            del self.values[m]  # attribute values matter within the window only

    def _learn_shares(self, minute: int) -> None:
        total = self.buckets.get(minute, 0)
        if not total:
            return
        a = self.policy.ewma_alpha
        seen = _value_counts(self.values.get(minute, Counter()))
        for kv in set(self.normal_share) | set(seen):
            # a value never seen starts from nothing: one minute of it is not normal
            self.normal_share[kv] = a * seen.get(kv, 0) / total + \
                (1 - a) * self.normal_share.get(kv, 0.0)

    # -- spikes --------------------------------------------------------------------------
    def _evaluate(self, t_ms: int) -> list[Transition]:
        p = self.policy
        observed, base = self.observed(), self.baseline()
        ratio = observed / base
        if self.spike is None and observed >= p.minimum and ratio >= p.ratio:
            pattern, share = self.pattern()
            self.spike = Transition("RAISED", t_ms, p.window_ms, observed, base, ratio,
                                    pattern, share)
            return [self.spike]
        if self.spike is not None and ratio <= p.clear_ratio:
            self.spike = None
            return [Transition("CLEARED", t_ms, p.window_ms, observed, base, ratio)]
        return []

    def pattern(self) -> tuple[dict[str, str], float]:
        """What the window's events have in common that normal events do not, and the
        share of the window's events that have all of it."""
        p = self.policy
        end = self.minute or 0
        signatures: Counter[tuple[tuple[str, str], ...]] = Counter()
        for m in range(end - self._n + 1, end + 1):
            signatures.update(self.values.get(m, Counter()))
        total = sum(signatures.values())
        if not total:
            return {}, 0.0
        counts = _value_counts(signatures)
        chosen = {k: v for (k, v), n in sorted(counts.items(), key=lambda x: (-x[1], x[0]))
                  if n / total >= p.pattern_share and
                  n / total >= p.lift * self.normal_share.get((k, v), 0.0)}
        if not chosen:
            return {}, 0.0
        want = set(chosen.items())
        matching = sum(n for sig, n in signatures.items() if want <= set(sig))
        return chosen, matching / total


def _value_counts(signatures: Counter[tuple[tuple[str, str], ...]]) \
        -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for sig, n in signatures.items():
        for kv in sig:
            out[kv] += n
    return out
