"""The system-wide monitor as a stream processor: decisions and audit records in,
in event time; SOC alerts, ops alerts and the customer-alert pause out.

    decisions (every partition) ─┐                        ┌─► soc alerts (RAISED/ONGOING/CLEARED)
                                 ├─► watermark ─► tripwires├─► ops alerts
    audit (overrides) ───────────┘                        └─► alert control (pause, resume)

* **Event time, in one order.** The monitor counts the whole bank, so one worker
  reads every partition of its inputs (a second one started fences the first:
  they share a transactional id). Records wait in a buffer until the
  **watermark** — the lowest of the partitions' newest event times, less
  ``lateness_ms`` — has passed them, then go to the tripwires sorted by (event
  time, id): the order a replay of the same records sorts them in
  (:func:`replay`), whatever order the partitions arrived in. A partition read to
  its end holds the watermark for ``idle_s``, then nothing back; one running
  more than ``max_skew_ms`` ahead of the watermark is paused until the others
  catch up, so a backlog is caught up in event time and the buffer stays small.
  A record behind the watermark (later than ``lateness_ms``: say, a decide
  worker that was down while the others went on) is still counted, at once, and
  counted as late: the window counts stay exact, a transition may come at
  another time than a replay's.
* **Exactly once, by Kafka's transactions.** Outputs, the monitor's state
  (compacted ``tripwire.monitor-state.v1``: each series' head, its counts in day
  chunks written only when they change, and the cursor — watermark, read
  positions, restart offsets) and the input offsets commit in one transaction
  every ``commit_s``. After a crash the worker restores the state, reads again
  from the oldest record still in the buffer, and skips what the restored state
  has counted (read before, at or behind its watermark).
* **Warm-up.** A new installation reads the decisions topic from its start (30
  days kept): the baseline is built from that history before the monitor
  reaches the present.
* **The emergency control.** In ``auto`` mode (``tripwire monitor mode``, armed
  by two people) a spike that pauses the alerts also releases its common pattern
  as a control declining it (:func:`~tripwire.controls.monitor.emergency_control`)
  on the controls topic, in the same transaction; the control is retired when
  the spike clears or its expiry passes in event time. The decide workers apply
  and audit both, as any release.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import logging
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition

from tripwire.connectors.events import read_to_end
from tripwire.connectors.kafka import closed_on_failure, consume_available, consumer, producer
from tripwire.controls.actions import OPS_ALERT_SCHEMA
from tripwire.controls.monitor import (
    EMERGENCY_ID,
    MODE_KEY,
    Observation,
    Signal,
    SystemMonitor,
    emergency_control,
    observation_of,
)
from tripwire.controls.plane import AUDIT_SCHEMA, RELEASE_SCHEMA, release
from tripwire.schemas.codec import AvroCodec, DecodeError

__all__ = ["MONITOR_ACTOR", "SOC_SCHEMA", "MonitorLoop", "MonitorStats", "cells", "replay",
           "stored_cells", "uncells"]

logger = logging.getLogger(__name__)

SOC_SCHEMA = "tripwire.alerts.SystemicAttackAlert"
MONITOR_ACTOR = "monitor"  # the actor of the pauses and resumes the monitor writes
_SEP = "\x1f"
# an idle worker still commits this often: a worker that a successor has fenced learns
# it only from a transaction, and an idle one would otherwise never stop
_HEARTBEAT_S = 5.0
_CURSOR = "cursor"


# -- the state as cells (one compacted record each) ---------------------------------------
def _is_series(node: Any) -> bool:
    return isinstance(node, dict) and "days" in node and "ewma" in node


def _holds_series(node: Any) -> bool:
    return isinstance(node, dict) and (_is_series(node) or
                                       any(_holds_series(v) for v in node.values()))


def cells(state: Mapping[str, Any], path: str = "m") -> dict[str, Any]:
    """The monitor's state split into cells: each series' head and each of its days
    apart, the rest of each level together.

    >>> sorted(cells({"t": 1, "a": {"days": {"5": "x"}, "ewma": 2.0}}))
    ['m', 'm\\x1fa', 'm\\x1fa\\x1fday\\x1f5']
    """
    out: dict[str, Any] = {}
    if _is_series(state):
        for d, packed in state["days"].items():
            out[f"{path}{_SEP}day{_SEP}{d}"] = packed
        out[path] = {k: v for k, v in state.items() if k != "days"}
        return out
    rest = {}
    for k, v in state.items():
        if _holds_series(v):
            out.update(cells(v, f"{path}{_SEP}{k}"))
        else:
            rest[k] = v
    out[path] = rest
    return out


def uncells(found: Mapping[str, Any]) -> dict[str, Any]:
    """The state :func:`cells` split (``{}`` when there are none)."""
    root: dict[str, Any] = {}
    for path in sorted(found, key=lambda p: p.count(_SEP)):
        parts = path.split(_SEP)[1:]
        if len(parts) >= 2 and parts[-2] == "day":
            node = root
            for p in parts[:-2]:
                node = node.setdefault(p, {})
            node.setdefault("days", {})[parts[-1]] = found[path]
            continue
        node = root
        for p in parts:
            node = node.setdefault(p, {})
        node.update(found[path])
        if "ewma" in node:
            node.setdefault("days", {})
    return root


def stored_cells(bootstrap: str, name: str) -> dict[str, tuple[bytes, Any]]:
    """The state cells a monitor worker last committed to ``name``: cell -> (as
    written, decoded); the cursor among them."""
    found: dict[str, tuple[bytes, Any]] = {}
    for m in read_to_end(bootstrap, name):
        key, packed = (m.key() or b"").decode(), m.value()
        if packed is None:
            found.pop(key, None)
        else:
            found[key] = (packed, orjson.loads(zlib.decompress(packed)))
    return found


# -- outputs -------------------------------------------------------------------------------
def signal_id(s: Signal) -> str:
    """The same transition gives the same id, live or replayed."""
    t = s.transition
    return hashlib.sha256(f"{s.tripwire}|{s.key}|{t.state}|{t.at}".encode()).hexdigest()[:32]


def soc_record(s: Signal, paused: bool) -> dict[str, Any]:
    t = s.transition
    return {"alert_id": signal_id(s), "raised_at": t.at, "state": t.state,
            "window_ms": t.window_ms, "observed": t.observed, "baseline": t.baseline,
            "ratio": t.ratio, "common_pattern": dict(t.pattern),
            "pattern_share": t.pattern_share, "customer_alerts_paused": paused,
            "summary": f"[{s.tripwire}] {s.summary}"}


def ops_record(s: Signal) -> dict[str, Any]:
    t = s.transition
    return {"alert_id": signal_id(s), "raised_at": t.at, "kind": f"TRIPWIRE_{t.state}",
            "subject": f"{s.tripwire}:{s.key}" if s.key else s.tripwire,
            "summary": s.summary, "details_json": orjson.dumps({
                "observed": t.observed, "baseline": t.baseline, "ratio": t.ratio,
                "window_ms": t.window_ms, "pattern": t.pattern,
                "lifts": [list(x) for x in t.lifts]}).decode()}


def pause_record(s: Signal) -> dict[str, Any]:
    t = s.transition
    return {"audit_id": f"monitor:{signal_id(s)}", "at": t.at, "actor": MONITOR_ACTOR,
            "action": "alerts.pause" if t.state == "RAISED" else "alerts.resume",
            "subject": "customer_alerts", "reason": s.summary,
            "details_json": orjson.dumps({"tripwire": s.tripwire,
                                          "pattern": t.pattern}).decode()}


def replay(observations: Iterable[Observation], monitor: SystemMonitor | None = None) \
        -> tuple[SystemMonitor, list[Signal]]:
    """The tripwires over recorded observations, sorted as the live worker releases
    them: the same signals (up to the last observation's time) as live."""
    m = monitor or SystemMonitor()
    out: list[Signal] = []
    last = 0
    for obs in sorted(observations, key=lambda o: (o.t, o.id)):
        out += m.observe(obs)
        last = obs.t
    out += m.advance(last)
    return m, out


@dataclass
class MonitorStats:
    read: int = 0
    counted: int = 0
    late: int = 0  # counted after the watermark had passed them
    skipped: int = 0  # read again after a restart, already counted
    unreadable: int = 0
    signals: Counter[str] = field(default_factory=Counter)  # "tripwire:STATE" -> n
    commits: int = 0
    watermark: int = 0
    buffered: int = 0
    held_partitions: int = 0  # paused: too far ahead of the watermark
    held_max: int = 0  # the most held at once
    fenced: bool = False  # another worker took over


class MonitorLoop:
    """One monitor worker."""

    def __init__(self, bootstrap: str, topics: Callable[[str], str], codec: AvroCodec,
                 monitor: SystemMonitor | None = None, *, group: str = "tripwire-monitor",
                 lateness_ms: int = 60_000, max_skew_ms: int = 10 * 60_000,
                 idle_s: float = 30.0, commit_s: float = 2.0, emergency_hours: float = 2.0,
                 now_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self.bootstrap, self.topic, self.codec = bootstrap, topics, codec
        self.monitor = monitor or SystemMonitor()
        self.lateness_ms, self.max_skew_ms, self.commit_s = lateness_ms, max_skew_ms, commit_s
        self.idle_s, self.emergency_ms = idle_s, int(emergency_hours * 3_600_000)
        self._emergency: int | None = None  # the emergency control released expires then
        self.now_ms = now_ms
        self.stats = MonitorStats()
        self.on_signal: Callable[[Signal], None] = lambda s: None
        self.inputs = [topics("decisions"), topics("audit")]
        self.producer = producer(bootstrap, **{"transactional.id": group})
        self.producer.init_transactions(30)  # fences a previous worker of this group
        self.consumer = consumer(bootstrap, group, **{"enable.partition.eof": True})
        self._written: dict[str, bytes] = {}  # cell -> what was last committed
        self._sources: dict[str, Any] = {}  # cell -> the value it was last made from
        self._heap: list[tuple[int, str, int, tuple[str, int], int, Observation]] = []
        self._seq = 0
        self._buffered: dict[tuple[str, int], Counter[int]] = {}  # offsets in the buffer
        self._pos: dict[tuple[str, int], int] = {}  # next offset to read
        self._newest: dict[tuple[str, int], int] = {}  # newest event time read
        # partition -> since when (monotonic) it has been read to its end (None: it has not)
        self._at_end: dict[tuple[str, int], float | None] = {}
        self._held: set[tuple[str, int]] = set()
        self._out: list[tuple[str, bytes | None, bytes]] = []
        self._paused_by_monitor = False
        self._advanced = 0  # the watermark the tripwires were last advanced to
        self._last_txn = time.monotonic()
        self.gauges: dict[str, Any] = {}
        with closed_on_failure(self.consumer):
            self._restore()

    # -- restore ---------------------------------------------------------------------
    def _restore(self) -> None:
        stored = stored_cells(self.bootstrap, self.topic("monitor_state"))
        self._written = {k: packed for k, (packed, _) in stored.items()}
        found = {k: value for k, (_, value) in stored.items()}
        cursor = found.pop(_CURSOR, None) or {}
        if found:
            self.monitor.restore(uncells(found))
        self.stats.watermark = cursor.get("watermark", 0)
        self._paused_by_monitor = cursor.get("paused", False)
        self._emergency = cursor.get("emergency")
        self._restored_pos = {_tp(k): v for k, v in cursor.get("pos", {}).items()}
        starts = {_tp(k): v for k, v in cursor.get("start", {}).items()}
        tps = []
        for name in self.inputs:
            md = self.consumer.list_topics(name, timeout=30).topics[name]
            for p in sorted(md.partitions):
                tp = (name, p)
                tps.append(TopicPartition(name, p, starts.get(tp, OFFSET_BEGINNING)))
                self._at_end[tp] = None
        self.consumer.assign(tps)
        if cursor:
            logger.info("monitor restored: watermark %d, %d observations counted so far",
                        self.stats.watermark, self.monitor.counted)

    # -- the loop --------------------------------------------------------------------
    def run(self, stop: threading.Event, idle_exit: float | None = None) -> MonitorStats:
        """Count until ``stop`` is set (or, with ``idle_exit``, every partition has been
        at its end and nothing was buffered for that long)."""
        try:
            self._serve(stop, idle_exit)
        except KafkaException as exc:
            if not exc.args[0].fatal():
                raise
            # another worker of this group started (a restart, a failover): it took over
            # from the last commit, and this one's transaction was refused
            logger.warning("monitor worker fenced (%s): another worker has taken over",
                           exc.args[0].str())
            self.stats.fenced = True
        finally:
            self.close()
        return self.stats

    def _serve(self, stop: threading.Event, idle_exit: float | None) -> None:
        last_commit = time.monotonic()
        idle_since: float | None = None
        while not stop.is_set():
            for m in consume_available(self.consumer, 2000, 0.2):
                self._read(m)
            self._release()
            now = time.monotonic()
            if now - last_commit >= self.commit_s:
                self._commit()
                last_commit = now
            if idle_exit is not None:
                quiet = all(v is not None for v in self._at_end.values())
                idle_since = (idle_since or now) if quiet else None
                if idle_since is not None and now - idle_since >= idle_exit:
                    self._drain()
                    break
        self._commit()

    def _drain(self) -> None:
        """The end of a bounded input: count what is buffered and close every minute up
        to the newest record (as :func:`replay` does)."""
        newest = max(self._newest.values(), default=0)
        self.stats.watermark = max(self.stats.watermark, newest)
        self._release()

    def _read(self, m: Message) -> None:
        tp = (m.topic() or "", m.partition() or 0)
        err = m.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                self._at_end[tp] = self._at_end.get(tp) or time.monotonic()
            else:
                logger.warning("monitor consumer: %s", err)
            return
        self._at_end[tp] = None
        offset = m.offset() or 0
        self._pos[tp] = offset + 1
        self.stats.read += 1
        try:
            schema, rec = self.codec.decode(m.value() or b"")
        except DecodeError as exc:
            self.stats.unreadable += 1
            logger.error("%s[%d]@%d unreadable (%s); not counted", tp[0], tp[1], offset, exc)
            return
        obs = observation_of(schema.name, rec)
        if obs is None:
            return  # event time is the time of what is counted (not of other audit records)
        self._newest[tp] = max(self._newest.get(tp, obs.t), obs.t)
        wm = self.stats.watermark
        if offset < self._restored_pos.get(tp, 0) and obs.t <= wm:
            self.stats.skipped += 1  # counted before the restart
            return
        if obs.t <= wm:
            self.stats.late += 1
            self._count(obs)
            return
        self._seq += 1
        heapq.heappush(self._heap, (obs.t, obs.id, self._seq, tp, offset, obs))
        self._buffered.setdefault(tp, Counter())[offset] += 1

    def watermark(self) -> int | None:
        """The lowest newest event time over the partitions, less the lateness (None:
        a partition has nothing read yet and has not been idle for ``idle_s``). A
        partition read to its end holds the watermark where it is for ``idle_s``
        (its writer may be a little behind the others), then not at all. Event time
        moves with the records only, never with the clock: when every partition is
        idle, the watermark is the newest record's time less the lateness."""
        idle_from = time.monotonic() - self.idle_s
        active, newest_all = [], None
        for tp, at_end in self._at_end.items():
            newest = self._newest.get(tp)
            if newest is not None:
                newest_all = max(newest_all or newest, newest)
            if at_end is not None and at_end <= idle_from:
                continue
            if newest is None:
                return None
            active.append(newest)
        edge = min(active) if active else newest_all
        return None if edge is None else edge - self.lateness_ms

    def _release(self) -> None:
        wm = self.watermark()
        if wm is not None and wm > self.stats.watermark:
            self.stats.watermark = wm
        wm = self.stats.watermark
        while self._heap and self._heap[0][0] <= wm:
            _, _, _, tp, offset, obs = heapq.heappop(self._heap)
            left = self._buffered[tp]
            left[offset] -= 1
            if not left[offset]:
                del left[offset]
            self._count(obs)
        if wm and self.monitor.t and wm > self._advanced:
            self._advanced = wm
            self._signals(self.monitor.advance(wm))
        if self._emergency is not None and wm >= self._emergency:
            self._retire(self._emergency, "it has expired")
        # a partition far ahead in event time waits for the others
        ahead = {tp for tp, t in self._newest.items() if t - wm > self.max_skew_ms and wm}
        if ahead != self._held:
            if ahead - self._held:
                self.consumer.pause([TopicPartition(*tp) for tp in ahead - self._held])
            if self._held - ahead:
                self.consumer.resume([TopicPartition(*tp) for tp in self._held - ahead])
            self._held = ahead
        self.stats.buffered, self.stats.held_partitions = len(self._heap), len(self._held)
        self.stats.held_max = max(self.stats.held_max, len(self._held))

    def _count(self, obs: Observation) -> None:
        self.stats.counted += 1
        self._signals(self.monitor.observe(obs))

    def _signals(self, signals: list[Signal]) -> None:
        for s in signals:
            self.stats.signals[f"{s.tripwire}:{s.transition.state}"] += 1
            paused = self.monitor.paused
            state = s.transition.state
            # a spike's end resumes only a pause the monitor set (not an engineer's)
            if s.pauses and (state == "RAISED" or (state == "CLEARED" and
                             self._paused_by_monitor)):
                self._emit("alert_control", b"customer_alerts", AUDIT_SCHEMA, pause_record(s))
                self._paused_by_monitor = state == "RAISED"
            if s.pauses and state == "RAISED" and self._emergency is None and \
                    self.mode() == "auto":
                self._activate(s)
            elif s.pauses and state == "CLEARED" and self._emergency is not None:
                self._retire(s.transition.at, "the spike has cleared")
            if s.audience == "soc":
                self._emit("soc_alerts", s.tripwire.encode(), SOC_SCHEMA,
                           soc_record(s, paused))
            self._emit("ops_alerts", s.tripwire.encode(), OPS_ALERT_SCHEMA, ops_record(s))
            logger.warning("tripwire %s %s: %s", s.tripwire, s.transition.state, s.summary)
            self.on_signal(s)

    # -- the emergency control (auto mode) ----------------------------------------------
    def mode(self) -> str:
        """off, suggest (the default) or auto: the latest switch an operator set
        (``tripwire monitor mode``), read when a spike is raised."""
        mode = "suggest"
        for m in read_to_end(self.bootstrap, self.topic("alert_control")):
            if m.key() == MODE_KEY and m.value() is not None:
                _, rec = self.codec.decode(m.value() or b"")
                mode = orjson.loads(rec["details_json"]).get("mode", mode)
        return mode

    def _activate(self, s: Signal) -> None:
        """Release the spike's pattern as a control declining it, until it expires."""
        t = s.transition
        expires = t.at + self.emergency_ms
        source = emergency_control(t.pattern, expires, f"[{s.tripwire}] {s.summary}")
        if source is None:
            return
        self._emergency = expires
        reason = f"auto mode: the common pattern {t.pattern} of a systemic attack"
        self._emit("controls", EMERGENCY_ID.encode(), RELEASE_SCHEMA,
                   release(EMERGENCY_ID, source, MONITOR_ACTOR, reason, t.at))
        self._emit("ops_alerts", EMERGENCY_ID.encode(), OPS_ALERT_SCHEMA, {
            "alert_id": f"emergency:{signal_id(s)}", "raised_at": t.at,
            "kind": "EMERGENCY_CONTROL_ACTIVATED", "subject": EMERGENCY_ID,
            "summary": f"{EMERGENCY_ID} released: it declines {t.pattern} until event time "
                       f"{expires} (auto mode)",
            "details_json": orjson.dumps({"pattern": t.pattern, "expires_at": expires,
                                          "source": source}).decode()})

    def _retire(self, at: int, why: str) -> None:
        self._emit("controls", EMERGENCY_ID.encode(), RELEASE_SCHEMA,
                   release(EMERGENCY_ID, None, MONITOR_ACTOR, why, at, "RETIRE"))
        self._emit("ops_alerts", EMERGENCY_ID.encode(), OPS_ALERT_SCHEMA, {
            "alert_id": f"emergency-retired:{at}", "raised_at": at,
            "kind": "EMERGENCY_CONTROL_RETIRED", "subject": EMERGENCY_ID,
            "summary": f"{EMERGENCY_ID} retired: {why}", "details_json": "{}"})
        self._emergency = None

    def _emit(self, key: str, k: bytes, schema: str, record: dict[str, Any]) -> None:
        self._out.append((self.topic(key), k, self.codec.encode(schema, record)))

    # -- commit ----------------------------------------------------------------------------
    def _commit(self) -> None:
        """Outputs, changed cells, the cursor and the restart offsets, in one transaction."""
        starts = {}
        for tp, pos in self._pos.items():
            left = self._buffered.get(tp)
            starts[tp] = min(left) if left else pos
        state = {}
        for k, v in cells(self.monitor.state()).items():
            # a day's counts unchanged since the last commit are the same packed string
            same = isinstance(v, str) and v is self._sources.get(k)
            state[k] = self._written[k] if same and k in self._written else \
                zlib.compress(orjson.dumps(v), 3)
            self._sources[k] = v
        changed = {k: v for k, v in state.items() if self._written.get(k) != v}
        gone = [k for k in self._written if k not in state and k != _CURSOR]
        if not (self._out or changed or gone) and \
                starts == getattr(self, "_committed_starts", None) and \
                time.monotonic() - self._last_txn < _HEARTBEAT_S:
            return  # nothing new (a transaction now and then all the same: see _HEARTBEAT_S)
        self._last_txn = time.monotonic()
        cursor = {"watermark": self.stats.watermark, "paused": self._paused_by_monitor,
                  "emergency": self._emergency,
                  "pos": {_key(tp): p for tp, p in self._pos.items()},
                  "start": {_key(tp): o for tp, o in starts.items()}}
        changed[_CURSOR] = zlib.compress(orjson.dumps(cursor), 3)
        p = self.producer
        p.begin_transaction()
        for name, key, value in self._out:
            p.produce(name, value, key)
        target = self.topic("monitor_state")
        for cell, packed in changed.items():
            p.produce(target, packed, cell.encode())
        for cell in gone:
            p.produce(target, None, cell.encode())
        if starts:
            p.send_offsets_to_transaction(
                [TopicPartition(t, part, off) for (t, part), off in starts.items()],
                self.consumer.consumer_group_metadata(), 30)
        p.commit_transaction(30)
        self._out = []
        for cell in gone:
            self._written.pop(cell, None)
        self._written.update(changed)
        self._committed_starts: dict[tuple[str, int], int] | None = starts
        self.stats.commits += 1
        self.gauges = self._gauges()

    def _gauges(self) -> dict[str, Any]:
        """What the monitor's metrics show, as of the last commit (read by another
        thread: a new dict each time, never changed after)."""
        m, st = self.monitor, self.stats
        series = {}
        for tw in m.tripwires:
            for key, s in getattr(tw, "series", {}).items():
                if s.minute is not None:
                    series[(tw.name, key)] = (s.observed(), s.baseline())
        return {"event_time_ms": st.watermark, "counted": st.counted, "late": st.late,
                "skipped": st.skipped, "buffered": st.buffered,
                "held_partitions": st.held_partitions, "held_alerts": m.held,
                "paused": self._paused_by_monitor,
                "raised": {(name, key) for name, spikes in m.active().items()
                           for key in spikes},
                "series": series, "signals": dict(st.signals)}

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.consumer.close()
        with contextlib.suppress(KafkaException):  # fenced: nothing of its own to send
            self.producer.flush(10)


def _key(tp: tuple[str, int]) -> str:
    return f"{tp[0]}:{tp[1]}"


def _tp(key: str) -> tuple[str, int]:
    name, _, p = key.rpartition(":")
    return name, int(p)


def new_group(prefix: str = "tripwire-monitor") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
