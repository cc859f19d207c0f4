"""`tripwire dashboard`: a live page for operators and the SOC, on the starlette
and uvicorn the decide API runs on.

It reads Kafka (decisions, customer alerts and their pause and resume, SOC alerts,
quarantine) from ``lookback`` ago on, and the workers' metrics endpoints (lag, and
events in per second from two scrapes), and serves:

* ``/``: one page, no outside scripts (it opens offline), that asks for the
  summary every two seconds: throughput and lag; the decision mix of the last
  hour; customer alerts per 10 minutes against a trailing baseline (the mean of
  the six windows before), with the windows in which alerts were paused marked;
  the SOC's latest alerts; the top rule hits; quarantine reasons;
* ``/api/summary``: the same as JSON.

:class:`Board` is the counting, a pure function of the records it is given.

>>> b = Board()
>>> b.add("decisions", {"outcome": "DENY", "event_time": 60_000,
...                     "rule_hits": [{"control_id": "card_testing"}]}, 60_000)
>>> s = b.summary(now_ms=120_000)
>>> s["decisions"], s["mix"], s["top_hits"]
(1, {'DENY': 1}, [['card_testing', 1]])
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from tripwire.schemas.codec import AvroCodec

__all__ = ["Board", "Feed", "create_app"]

WINDOW_MS = 10 * 60_000
TOPICS = ("decisions", "customer_alerts", "alert_control", "soc_alerts", "quarantine")


class Board:
    """The dashboard's numbers, from the records read so far."""

    def __init__(self) -> None:
        self.decisions = 0
        self.per_minute: Counter[int] = Counter()  # minute → decisions (record time)
        self.recent: deque[tuple[int, str]] = deque()  # (event time, outcome), last hour
        self.hits: Counter[str] = Counter()
        self.alerts: Counter[int] = Counter()  # 10-minute window → customer alerts
        self.pauses: list[tuple[int, str]] = []  # (at, "pause" | "resume")
        self.soc: deque[dict[str, Any]] = deque(maxlen=10)
        self.quarantine: Counter[str] = Counter()
        self.lock = threading.Lock()

    def add(self, key: str, rec: dict[str, Any], ts_ms: int) -> None:
        with self.lock:
            if key == "decisions":
                if rec.get("repeat"):
                    return
                self.decisions += 1
                self.per_minute[ts_ms // 60_000] += 1
                self.recent.append((rec["event_time"], rec["outcome"]))
                for h in rec.get("rule_hits") or ():
                    self.hits[h["control_id"]] += 1
            elif key == "customer_alerts":
                self.alerts[rec["created_at"] // WINDOW_MS] += 1
            elif key == "alert_control":
                action = rec.get("action", "")
                if action.endswith(".pause") or action.endswith(".resume"):
                    self.pauses.append((rec["at"], action.rsplit(".", 1)[1]))
            elif key == "soc_alerts":
                self.soc.appendleft({k: rec.get(k) for k in (
                    "raised_at", "state", "summary", "ratio", "customer_alerts_paused")})
            elif key == "quarantine":
                for r in rec.get("reasons") or ():
                    self.quarantine[r["code"]] += 1

    def paused_at(self, t_ms: int) -> bool:
        state = False
        for at, what in sorted(self.pauses):
            if at > t_ms:
                break
            state = what == "pause"
        return state

    def summary(self, now_ms: int, windows: int = 18) -> dict[str, Any]:
        with self.lock:
            hour_ago = now_ms - 3_600_000
            newest = max((t for t, _ in self.recent), default=now_ms)
            while self.recent and self.recent[0][0] < min(hour_ago, newest - 3_600_000):
                self.recent.popleft()
            mix = Counter(o for t, o in self.recent if t >= newest - 3_600_000)
            last = max(self.alerts, default=now_ms // WINDOW_MS)
            last = max(last, now_ms // WINDOW_MS)
            series = []
            for w in range(last - windows + 1, last + 1):
                before = [self.alerts.get(b, 0) for b in range(w - 6, w)]
                series.append({"start": w * WINDOW_MS, "alerts": self.alerts.get(w, 0),
                               "baseline": sum(before) / len(before),
                               "paused": any(self.paused_at(t) for t in (
                                   w * WINDOW_MS, (w + 1) * WINDOW_MS - 1))
                               or self._paused_within(w)})
            minute = now_ms // 60_000
            per_min = sum(self.per_minute.get(m, 0) for m in range(minute - 4, minute + 1)) / 5
            return {"decisions": self.decisions, "per_minute": round(per_min, 1),
                    "mix": dict(mix), "alerts": series,
                    "paused": self.paused_at(now_ms) if self.pauses else False,
                    "soc": list(self.soc), "top_hits": [list(x) for x in self.hits.most_common(8)],
                    "quarantine": dict(self.quarantine.most_common(8))}

    def _paused_within(self, w: int) -> bool:
        lo, hi = w * WINDOW_MS, (w + 1) * WINDOW_MS
        return any(lo <= at < hi and what == "pause" for at, what in self.pauses)


class Feed:
    """Reads the topics into a :class:`Board` in a thread, and scrapes ``metrics``
    (the workers' /metrics URLs) for lag and events per second."""

    def __init__(self, bootstrap: str, topic_of: Callable[[str], str], codec: AvroCodec,
                 metrics: Sequence[str] = (), lookback_ms: int = 6 * 3_600_000) -> None:
        self.bootstrap, self.topic_of, self.codec = bootstrap, topic_of, codec
        self.metrics = list(metrics)
        self.lookback_ms = lookback_ms
        self.board = Board()
        self.stop = threading.Event()
        self.errors: list[str] = []
        self._scraped: tuple[float, float] | None = None  # (monotonic, events in)
        self.workers: dict[str, Any] = {"lag": None, "events_per_s": None, "up": 0}
        self.thread = threading.Thread(target=self._run, name="dashboard-feed", daemon=True)

    def start(self) -> Feed:
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)

    def _run(self) -> None:
        from confluent_kafka import TopicPartition

        from tripwire.connectors.kafka import consume_available, consumer, offsets_by_time

        c = consumer(self.bootstrap, f"tripwire-dashboard-{uuid.uuid4().hex[:8]}")
        keys = {self.topic_of(k): k for k in TOPICS}
        try:
            since = int(time.time() * 1000) - self.lookback_ms
            wanted = []
            for name in keys:
                md = c.list_topics(name, timeout=10).topics.get(name)
                if md is None or md.error is not None:
                    self.errors.append(f"no topic {name}")
                    continue
                wanted += [TopicPartition(name, p, since) for p in md.partitions]
            c.assign(offsets_by_time(c, wanted) if wanted else [])
            while not self.stop.is_set():
                for m in consume_available(c, 1000, 0.5):
                    if m.error() is not None or m.value() is None:
                        continue
                    try:
                        _, rec = self.codec.decode(m.value())
                    except Exception:
                        continue
                    self.board.add(keys[m.topic() or ""], rec, m.timestamp()[1])
        except Exception as exc:  # shown on the page, never a crash of the server
            self.errors.append(f"reading Kafka: {exc}")
        finally:
            c.close()

    def scrape(self) -> dict[str, Any]:
        """Lag (records behind, summed) and events in per second since the last scrape,
        from every worker that answers."""
        from prometheus_client.parser import text_string_to_metric_families

        lag, events_in, up = 0.0, 0.0, 0
        for url in self.metrics:
            try:
                text = httpx.get(url, timeout=2).text
            except httpx.HTTPError:
                continue
            up += 1
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    if s.name == "tripwire_consumer_lag":
                        lag += s.value
                    elif s.name == "tripwire_stage_events_in_total":
                        events_in += s.value
        now = time.monotonic()
        rate = None
        if self._scraped is not None and now > self._scraped[0] and up:
            rate = max(0.0, (events_in - self._scraped[1]) / (now - self._scraped[0]))
        if up:
            self._scraped = (now, events_in)
        self.workers = {"lag": lag if up else None,
                        "events_per_s": None if rate is None else round(rate, 1), "up": up,
                        "of": len(self.metrics)}
        return self.workers


def create_app(feed: Feed) -> Starlette:
    async def page(_: Request) -> HTMLResponse:
        return HTMLResponse(_PAGE)

    async def summary(_: Request) -> JSONResponse:
        import asyncio

        workers = await asyncio.to_thread(feed.scrape)
        return JSONResponse({**feed.board.summary(int(time.time() * 1000)),
                             "workers": workers, "errors": feed.errors[-5:]})

    return Starlette(routes=[Route("/", page), Route("/api/summary", summary)])


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>tripwire</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.3em;margin:0 0 .6em}h2{font-size:1em;margin:1.2em 0 .4em}
.tiles{display:flex;gap:1em;flex-wrap:wrap}
.tile{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:9em}
.tile b{display:block;font-size:1.6em}.paused b{color:#c00}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}
.box{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em 1em}
table{border-collapse:collapse;width:100%}td{padding:2px 6px;border-bottom:1px solid #eee}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{height:.8em;background:#4a7;display:inline-block}.DENY{background:#c33}
.STEP_UP,.MANUAL_REVIEW{background:#d93}
#err{color:#c00}
</style></head><body>
<h1>tripwire &mdash; live</h1>
<div class="tiles">
 <div class="tile">decisions<b id="decisions-total">-</b></div>
 <div class="tile">decisions / min (last 5)<b id="per-minute">-</b></div>
 <div class="tile">events in / s<b id="events-per-s">-</b></div>
 <div class="tile">consumer lag<b id="lag">-</b></div>
 <div class="tile" id="pause-tile">customer alerts<b id="paused">-</b></div>
</div>
<div class="grid">
 <div class="box"><h2>Decision mix, last hour</h2><table id="mix"></table></div>
 <div class="box"><h2>Customer alerts per 10 minutes (line: baseline; red: paused)</h2>
  <svg id="alerts" width="100%" height="140" viewBox="0 0 540 140"></svg></div>
 <div class="box"><h2>SOC alerts</h2><table id="soc"></table></div>
 <div class="box"><h2>Top rule hits</h2><table id="hits"></table></div>
 <div class="box"><h2>Quarantine reasons</h2><table id="quarantine"></table></div>
</div>
<p id="err"></p><p><small id="updated"></small></p>
<script>
function rows(id, pairs, cls){
  const max = Math.max(1, ...pairs.map(p => p[1]));
  document.getElementById(id).innerHTML = pairs.map(([k, v]) =>
    `<tr><td>${k}</td><td class="n" id="${id}-${k}">${v}</td>` +
    `<td><span class="bar ${cls ? k : ''}" style="width:${120 * v / max}px"></span></td></tr>`
  ).join('') || '<tr><td>none yet</td></tr>';
}
function chart(series){
  const max = Math.max(1, ...series.map(s => Math.max(s.alerts, s.baseline)));
  const w = 540 / series.length;
  let svg = '';
  series.forEach((s, i) => {
    const h = 120 * s.alerts / max;
    if (s.paused) svg += `<rect x="${i*w}" y="0" width="${w}" height="122" fill="#fdd"/>`;
    svg += `<rect x="${i*w+2}" y="${122-h}" width="${w-4}" height="${h}" fill="#48a">` +
           `<title>${new Date(s.start).toISOString().slice(11,16)}: ${s.alerts}</title></rect>`;
  });
  const pts = series.map((s, i) =>
    `${i*w + w/2},${122 - 120 * s.baseline / max}`).join(' ');
  svg += `<polyline points="${pts}" fill="none" stroke="#c33" stroke-width="2"/>`;
  svg += `<text x="0" y="138" font-size="10">${series.length ? new Date(series[0].start)
    .toISOString().slice(11,16) : ''} UTC</text>`;
  document.getElementById('alerts').innerHTML = svg;
}
async function tick(){
  try {
    const s = await (await fetch('/api/summary')).json();
    const set = (id, v) => document.getElementById(id).textContent = v;
    set('decisions-total', s.decisions);
    set('per-minute', s.per_minute);
    set('events-per-s', s.workers.events_per_s ?? '-');
    set('lag', s.workers.lag ?? '-');
    set('paused', s.paused ? 'PAUSED' : 'sending');
    document.getElementById('pause-tile').className = 'tile' + (s.paused ? ' paused' : '');
    rows('mix', Object.entries(s.mix), true);
    chart(s.alerts);
    document.getElementById('soc').innerHTML = s.soc.map(a =>
      `<tr><td>${new Date(a.raised_at).toISOString().slice(0,16)}</td><td>${a.state}</td>` +
      `<td>${a.summary}</td></tr>`).join('') || '<tr><td>none</td></tr>';
    rows('hits', s.top_hits, false);
    rows('quarantine', Object.entries(s.quarantine), false);
    set('err', s.errors.join('; '));
    set('updated', 'updated ' + new Date().toISOString().slice(11,19) + ' UTC; workers ' +
        s.workers.up + ' of ' + s.workers.of);
  } catch (e) { document.getElementById('err').textContent = 'no answer: ' + e; }
}
tick(); setInterval(tick, 2000);
</script></body></html>
"""
