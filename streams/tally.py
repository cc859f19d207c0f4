"""What a worker's outputs say, counted as they leave it, for its metrics endpoint:
decisions by type and outcome, decision latency, quarantine reasons, control runs,
errors and durations, node timeouts, actions by status.

Each output may carry ``meta`` (:class:`tripwire.schemas.records.OutRecord`), set
where it is made; counting it costs no decoding. A batch that is aborted and run
again is counted again: these are rates to watch, not a ledger (the topics are).

>>> from tripwire.schemas.records import OutRecord
>>> t = Tally()
>>> t.observe([OutRecord("decisions", b"k", b"", meta=("decision", "CardPayment", "DENY",
...                                                        2_000, 0))])
>>> t.decisions[("CardPayment", "DENY")], t.latency["CardPayment"][:3]  # 2 ms: le=0.0025
(1, [0, 1, 0])
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from tripwire.schemas.records import OutRecord

__all__ = ["LATENCY_BUCKETS_S", "Tally"]

# decision latency buckets (seconds), from arrival at the worker to the decision
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                     10.0)
_BOUNDS_US = tuple(int(b * 1e6) for b in LATENCY_BUCKETS_S)


@dataclass
class Tally:
    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)  # type, outcome
    repeats: Counter[str] = field(default_factory=Counter)
    # per event type: counts per bucket (not cumulative; the last is +Inf), and the sum
    latency: dict[str, list[int]] = field(default_factory=dict)
    latency_sum_s: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[tuple[str, str]] = field(default_factory=Counter)  # stage, reason
    control_runs: Counter[str] = field(default_factory=Counter)
    control_errors: Counter[str] = field(default_factory=Counter)
    control_seconds: Counter[str] = field(default_factory=Counter)
    control_remembered: Counter[str] = field(default_factory=Counter)
    node_timeouts: int = 0
    actions: Counter[tuple[str, str]] = field(default_factory=Counter)  # action, status

    def observe(self, outputs: Iterable[OutRecord]) -> None:
        for o in outputs:
            meta = o.meta
            if meta is None:
                continue
            kind = meta[0]
            if kind == "decision":
                event_type, outcome, latency_us, timeouts = meta[1:5]
                self.decisions[(event_type, outcome)] += 1
                buckets = self.latency.get(event_type)
                if buckets is None:
                    buckets = self.latency[event_type] = [0] * (len(_BOUNDS_US) + 1)
                buckets[bisect.bisect_left(_BOUNDS_US, latency_us)] += 1
                self.latency_sum_s[event_type] += latency_us / 1e6
                self.node_timeouts += timeouts
            elif kind == "executions":
                for control_id, failed, duration_us, remembered in meta[1]:
                    self.control_runs[control_id] += 1
                    self.control_errors[control_id] += failed
                    if remembered:  # not called: no time in the control
                        self.control_remembered[control_id] += 1
                    else:
                        self.control_seconds[control_id] += duration_us / 1e6
            elif kind == "quarantine":
                for code in meta[2]:
                    self.quarantined[(meta[1], code)] += 1
            elif kind == "repeat":
                self.repeats[meta[1]] += 1
            elif kind == "action":
                self.actions[(meta[1], meta[2])] += 1
