"""The demo: a broker, the decision path, everyday traffic, an attack, decisions,
actions carried out, the system-wide monitor pausing customer alerts, and the
inline decide API.

Runs on its own topic namespace, so repeated runs never see each other's data.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tripwire.broker import acquire_cluster
from tripwire.config import Settings
from tripwire.connectors.alert_sender import AlertSender, SenderConfig
from tripwire.connectors.decide_api import DecideConfig, Served, create_app
from tripwire.connectors.events import EventProducer, read_to_end, read_topic
from tripwire.connectors.sdk import DecideClient, TripwireProducer
from tripwire.connectors.simulator import (
    CARD_SCHEMA,
    FPS_SCHEMA,
    as_json,
    corrupt_dates,
    fps_messages,
    magstripe_contactless_attack,
    normal_card_payments,
)
from tripwire.connectors.standin_gateway import Gateway
from tripwire.controls.actions import requests_of
from tripwire.controls.engine import ControlSet
from tripwire.controls.monitor import MonitorPolicy, SystemMonitor, default_tripwires
from tripwire.controls.standin import parse_deadlines
from tripwire.errors import TripwireError
from tripwire.features.engine import FeatureLibrary
from tripwire.schemas.codec import AvroCodec
from tripwire.streams.monitor import MonitorLoop
from tripwire.streams.runner import Pipeline
from tripwire.streams.topics import create_topics, topic

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    events: int
    decisions: int
    outcomes: Counter[str]
    bootstrap: str
    actions: Counter[str] = field(default_factory=Counter)  # (action status) -> count
    quarantined: int = 0


def run_demo(settings: Settings, console: Console, *, normal: int = 40, attack: int = 10,
             keep_broker: bool = False) -> DemoResult:
    say: Callable[[str], None] = lambda m: console.print(f"[dim]{m}[/dim]")  # noqa: E731
    t0 = time.monotonic()
    cluster = acquire_cluster(settings, stop_on_close=not keep_broker, say=say)
    try:
        console.print(f"[bold]Kafka[/bold] {cluster.bootstrap} ({cluster.detail}) "
                      f"ready in {time.monotonic() - t0:.1f}s")
        ns = f"demo-{int(time.time())}."
        create_topics(cluster.bootstrap, ns)
        console.print(f"Topics created under namespace [cyan]{ns}[/cyan]")
        codec = AvroCodec.from_url(settings.schema_registry_url)
        library = FeatureLibrary()
        gateway = Gateway()  # stands in for the bank's SMS provider
        with tempfile.TemporaryDirectory(prefix="tripwire-demo-") as state_dir:
            pipeline = Pipeline.build(cluster.bootstrap, ns, codec=codec,
                                      controls=ControlSet.from_dir().remembering(
                                          settings.controls_remember), library=library,
                                      state_dir=Path(state_dir),
                                      isolate_mb=settings.controls_memory_mb
                                      if settings.controls_isolated else None, applier=True,
                                      reconcile=True,
                                      session_timeout_ms=settings.session_timeout_ms)
            sender = AlertSender(cluster.bootstrap, lambda k: topic(k, ns), codec,
                                 SenderConfig(gateway.url, control_poll_s=0.2),
                                 f"{ns}alert-sender")
            # a bank-sized monitor waits for 200 alerts and a day of history; the demo's
            # bank is small and new
            monitor = MonitorLoop(cluster.bootstrap, lambda k: topic(k, ns), codec,
                                  SystemMonitor(default_tripwires(DEMO_POLICY)),
                                  group=f"{ns}tripwire.monitor", lateness_ms=2_000,
                                  idle_s=1.0, commit_s=0.5)
            stop = threading.Event()
            workers = [threading.Thread(target=w.run, args=(stop,), daemon=True)
                       for w in (sender, monitor)]
            for w in workers:
                w.start()
            try:
                pipeline.wait_assigned()
                console.print("Pipeline running, every stage in one loop: intake → feature nodes "
                              f"({', '.join(library.entities())}) → decide; the applier, "
                              f"the customer-alert sender (SMS gateway stand-in: {gateway.url}) "
                              "and the system-wide monitor")
                story = _Story(console, cluster.bootstrap, ns, codec, gateway, monitor)
                return story.run(normal, attack)
            finally:
                stop.set()
                for w in workers:
                    w.join(30)
                pipeline.stop()
                gateway.close()
    finally:
        cluster.close()


DEMO_POLICY = MonitorPolicy(minimum=8, floor=1.0, warmup_minutes=30)
MINUTE = 60_000


class _Story:
    """An hour and a half of a small bank, told in event time: an everyday stretch, the
    attack, the pause, the attack going on while alerts are held, the calm after."""

    def __init__(self, console: Console, bootstrap: str, ns: str, codec: AvroCodec,
                 gateway: Gateway, monitor: MonitorLoop) -> None:
        self.console, self.bootstrap, self.ns, self.codec = console, bootstrap, ns, codec
        self.gateway, self.monitor = gateway, monitor
        self.prod = EventProducer(bootstrap, codec)

    def run(self, normal: int, attack: int) -> DemoResult:
        now = int(time.time() * 1000)
        c = self.console
        c.rule("[bold]1. An everyday stretch, then the attack starts[/bold]")
        result = _traffic(c, self.bootstrap, self.ns, self.codec, normal, attack, now)
        soc = self._wait_soc("RAISED")
        c.rule("[bold]2. The system-wide monitor: a systemic attack[/bold]")
        if soc is None:
            raise TripwireError("the monitor raised nothing on the attack")
        c.print(f"[red]SOC alert ({topic('soc_alerts', self.ns)}):[/red] {soc['summary']}")
        c.print(f"customer alerts paused: [bold]{soc['customer_alerts_paused']}[/bold]; the "
                "pattern as an emergency control to release: `tripwire monitor explain "
                "--write emergency.star`")
        time.sleep(1.0)  # every sender sees the pause within its poll
        c.rule("[bold]3. The attack goes on: its alerts are held, none is lost[/bold]")
        before = self._wait_alerts(0)
        more = list(magstripe_contactless_attack(13, now - 38 * MINUTE, attack, gap_ms=4_000))
        self._send_cards(more)
        alerts = self._wait_alerts(len(before) + 1)
        sent = {d["alert_id"] for d in self._read("alert_deliveries")}
        held = len(alerts - sent)
        c.print(f"{len(more)} more magstripe-contactless payments abroad declined; "
                f"[yellow]{held} customer alerts held[/yellow] in "
                f"{topic('customer_alerts', self.ns)} while paused (`tripwire alerts status`)")
        c.rule("[bold]4. Calm again: the monitor resumes the alerts[/bold]")
        calm = list(normal_card_payments(17, now - 36 * MINUTE, 36, gap_ms=MINUTE))
        self._send_cards(calm)
        cleared = self._wait_soc("CLEARED")
        if cleared is not None:
            c.print(f"[green]SOC alert:[/green] {cleared['summary']}; customer alerts resumed")
        alerts = self._wait_alerts(0)
        deliveries = self._wait_delivered(alerts)
        wanted = {e["event_id"] for e in more + calm}
        deadline = time.monotonic() + 60
        decided: set[str] = set()
        while decided != wanted and time.monotonic() < deadline:
            decided = {d["event_id"] for d in self._read("decisions")} & wanted
        result.events += len(wanted)
        result.decisions += len(decided)
        result.actions = _carried_out(c, self.bootstrap, self.ns, self.codec, self.gateway)
        self._inline()
        self._tally(result, alerts, deliveries, held)
        return result

    def _inline(self) -> None:
        """Two API workers: one with the default deadlines, one whose deadline has
        always passed (as when the pipeline is slow): the decision, the stand-in and
        the late decision beside it, and a repeat answered the same by the other."""
        c = self.console
        c.rule("[bold]5. Inline: an answer while the customer waits[/bold]")
        keys = {"demo": b"demo-secret-0123456789"}
        workers = [Served(create_app(TripwireProducer(self.bootstrap, namespace=self.ns,
                                                      codec=self.codec), self.bootstrap,
                                     DecideConfig(keys, parse_deadlines(deadlines),
                                                  margin_ms=margin, worker=name), self.ns))
                   for name, deadlines, margin in (("api-1", "", 20),
                                                   ("api-2", "CardPayment=1", 0))]
        clients = [DecideClient(w.url, "demo", keys["demo"], timeout_s=30) for w in workers]
        try:
            now = int(time.time() * 1000)
            card, big = (as_json("CardPayment", {**e, "event_time": now})
                         for e in normal_card_payments(19, now, 2))
            big["amount_minor"] = 60_000
            first = clients[0].decide(card)
            how = "the stand-in (the pipeline was late)" if first["stand_in"] else \
                "the pipeline's decision"
            c.print(f"POST /v1/decide, a £{card['amount_minor'] / 100:.2f} card payment: "
                    f"[bold]{first['outcome']}[/bold] in {first['latency_ms']:.0f} ms "
                    f"(deadline {first['deadline_ms']} ms): {how}")
            stood = clients[1].decide(big)
            c.print(f"a £{big['amount_minor'] / 100:.2f} one, at a worker whose deadline has "
                    f"passed: [yellow]stand-in {stood['outcome']}[/yellow] in "
                    f"{stood['latency_ms']:.0f} ms ({stood['reason']})")
            late = self._found("decide_answers", lambda r: r["kind"] == "LATE" and
                               r["reference"] == stood["reference"], 60.0)
            if late is not None:
                c.print(f"the pipeline decided it all the same: [bold]{late['outcome']}[/bold],"
                        f" recorded beside the stand-in on {topic('decide_answers', self.ns)}"
                        f" ({'agreed' if late['agreed'] else 'overturned: an ops alert'})")
            again = clients[0].decide(big)
            c.print(f"the same payment asked again at the other worker: {again['outcome']}, "
                    f"stand-in {again['stand_in']} (repeat: {again['repeat']}): one answer "
                    "per reference, whichever worker is asked")
        finally:
            for cl in clients:
                cl.close()
            for w in workers:
                w.close()


    def _send_cards(self, cards: list[dict]) -> None:
        for e in cards:
            self.prod.send(topic("card_payments", self.ns), CARD_SCHEMA, e, e["card_token"])
        self.prod.flush()

    def _read(self, key: str) -> list[dict]:
        return [self.codec.decode(m.value())[1]
                for m in read_to_end(self.bootstrap, topic(key, self.ns))]

    def _found(self, key: str, match: Callable[[dict], bool], timeout: float = 90.0) \
            -> dict | None:
        """The newest record of topic ``key`` that matches, once there is one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self._read(key) if match(r)]
            if found:
                return found[-1]
            time.sleep(0.3)
        return None

    def _wait_soc(self, state: str) -> dict | None:
        return self._found("soc_alerts", lambda a: a["state"] == state)

    def _wait_alerts(self, at_least: int, timeout: float = 60.0) -> set[str]:
        """The customer alerts written so far, once the applier has caught up (no new
        one for a second)."""
        deadline = time.monotonic() + timeout
        last: set[str] = set()
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now = {a["alert_id"] for a in self._read("customer_alerts")}
            if now == last and len(now) >= at_least:
                return now
            last = now
        return last

    def _wait_delivered(self, alerts: set[str], timeout: float = 60.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            got = self._read("alert_deliveries")
            if {d["alert_id"] for d in got} >= alerts or time.monotonic() > deadline:
                return got
            time.sleep(0.3)

    def _tally(self, result: DemoResult, alerts: set[str], deliveries: list[dict],
               held: int) -> None:
        ended = Counter(d["status"] for d in deliveries)
        table = Table(title="Tally")
        table.add_column("what")
        table.add_column("count", justify="right")
        table.add_row("messages in", str(result.events))
        for outcome, n in sorted(result.outcomes.items()):
            table.add_row(f"  decided {outcome} (first stretch)", str(n))
        table.add_row("  quarantined", str(result.quarantined))
        table.add_row("customer alerts", str(len(alerts)))
        for status in ("SENT", "SUMMARISED", "EXPIRED", "DEAD"):
            table.add_row(f"  {status.lower()}", str(ended.get(status, 0)))
        table.add_row("  of them held during the pause, then sent", str(held))
        lost = len(alerts - {d["alert_id"] for d in deliveries})
        table.add_row("  lost", f"[{'green' if not lost else 'red'}]{lost}[/]")
        self.console.print(table)
        m = self.monitor.stats
        self.console.print(f"monitor: {m.counted} decisions counted in event time; signals "
                           f"{dict(sorted(m.signals.items()))}")
        if lost:
            raise TripwireError(f"{lost} customer alert(s) never ended: lost")


def _traffic(console: Console, bootstrap: str, ns: str, codec: AvroCodec, normal: int,
             attack: int, now: int) -> DemoResult:
    """Everyday traffic (from 80 minutes ago), the attack's start (40 minutes ago),
    resends and bad messages; prints what came out."""
    cards = list(normal_card_payments(7, now - 80 * MINUTE, normal, gap_ms=MINUTE))
    cards += list(magstripe_contactless_attack(11, now - 40 * MINUTE, attack, gap_ms=4_000))
    fps, corrupted = corrupt_dates(list(fps_messages(5, now - 75 * MINUTE, 10)), 0.2, seed=2)
    repeats = cards[:3]  # the card processor resends three authorisations
    prod = EventProducer(bootstrap, codec)
    for e in cards + repeats:
        prod.send(topic("card_payments", ns), CARD_SCHEMA, e, e["card_token"])
    for m in fps:
        prod.send(topic("fps", ns), FPS_SCHEMA, m, m["account_id"])
    prod.send_raw(topic("card_payments", ns), b'{"amount": 100}', "tok-json")
    sent = prod.flush()
    console.print(f"Published {sent} messages: {normal} everyday card payments, {attack} "
                  f"magstripe-contactless abroad, {len(repeats)} resent, {len(fps)} FPS "
                  f"messages ({len(corrupted)} with corrupted dates), 1 JSON by mistake")

    answers = read_topic(bootstrap, [topic("decisions", ns), topic("quarantine", ns)],
                         sent, timeout=60)
    decoded = [(m.topic(), codec.decode(m.value())[1]) for m in answers]
    decisions = [d for t, d in decoded if t == topic("decisions", ns)]
    refused = [d for t, d in decoded if t == topic("quarantine", ns)]
    _print_decisions(console, [d for d in decisions
                               if d["event_type"].endswith("CardPayment")])
    _print_quarantine(console, refused)
    outcomes = Counter(d["outcome"] for d in decisions)
    console.print(f"{sent} messages in, {len(decisions)} decisions "
                  f"({sum(d['repeat'] for d in decisions)} repeats answered with the "
                  f"original decision) and {len(refused)} quarantined: nothing dropped. "
                  + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    return DemoResult(sent, len(decisions) + len(refused), outcomes, bootstrap,
                      quarantined=len(refused))


def _carried_out(console: Console, bootstrap: str, ns: str, codec: AvroCodec,
                 gateway: Gateway, timeout: float = 60.0) -> Counter[str]:
    """Wait for the applier to carry out every action of every decision, and the
    sender to deliver each alert; print what was done."""
    decisions = [codec.decode(m.value())[1] for m in read_to_end(bootstrap,
                                                                 topic("decisions", ns))]
    wanted = {r["action_id"] for d in decisions for r in requests_of(d)}
    deadline = time.monotonic() + timeout
    while True:
        done = {r["action_id"]: r for r in (codec.decode(m.value())[1] for m in read_to_end(
            bootstrap, topic("actions", ns)))}
        alerts = {r["action_id"] for r in done.values()
                  if r["action"] == "CUSTOMER_ALERT" and r["status"] == "DONE"}
        if (wanted <= set(done) and alerts <= set(gateway.accepted)) or \
                time.monotonic() > deadline:
            break
        time.sleep(0.3)
    table = Table(title="Actions carried out (tripwire.actions.v1), once each")
    for col in ("action", "target", "status", "why"):
        table.add_column(col, no_wrap=col != "why", overflow="fold")
    colour = {"DONE": "green", "SUPPRESSED": "dim", "RATE_LIMITED": "yellow"}
    for r in sorted(done.values(), key=lambda r: (r["requested_at"], r["action"])):
        table.add_row(r["action"], r["target"], f"[{colour.get(r['status'], 'red')}]"
                      f"{r['status']}[/]", r["detail"] or r["typology"])
    console.print(table)
    counts = Counter(f"{r['action']} {r['status']}" for r in done.values())
    once = set(gateway.accepted.values()) <= {1}
    console.print(f"{len(done)} of {len(wanted)} actions carried out, "
                  f"{sum(1 for r in done.values() if r['status'] == 'SUPPRESSED')} suppressed "
                  f"(already in effect); {len(alerts)} customer alerts, each delivered to the "
                  f"gateway {'once' if once else 'MORE THAN ONCE'}")
    return counts


def _print_quarantine(console: Console, refused: list[dict]) -> None:
    table = Table(title="Quarantined (tripwire.quarantine.v1)")
    for col in ("source", "stage", "reason", "field"):
        table.add_column(col, no_wrap=True)
    table.add_column("detail", overflow="fold")
    for q in refused:
        for r in q["reasons"]:
            table.add_row(q["quarantine_id"].split(".", 1)[-1], q["stage"], r["code"],
                          r["field"] or "-", r["detail"])
    console.print(table)


_SHORT = {"BLOCK_CARD": "block", "CUSTOMER_ALERT": "alert", "OPEN_CASE": "case",
          "HOLD_FUNDS": "hold"}
_MODES = {"MAGSTRIPE_CONTACTLESS": "mag-cl", "CONTACTLESS": "cl", "ECOMMERCE": "web",
          "CHIP": "chip", "MAGSTRIPE": "mag"}


def _print_decisions(console: Console, decisions: list[dict]) -> None:
    """One line per decision, in 80 columns too: the reason is cut to what fits
    (all of it: `tripwire explain EVENT_ID`)."""
    from rich import box

    table = Table(title="Decisions (tripwire.decisions.v1)", box=box.SIMPLE_HEAD,
                  caption="* a repeat, answered with the first decision")
    widths = (("card", 11), ("amount", 7), ("how", 13), ("outcome", 7), ("actions", 11))
    for col, width in widths:
        table.add_column(col, no_wrap=True, min_width=width)
    room = console.width - sum(w + 3 for _, w in widths) - 4  # padding and rules
    table.add_column("why", no_wrap=True, overflow="ellipsis", max_width=max(12, room))
    colour = {"ALLOW": "green", "STEP_UP": "yellow", "MANUAL_REVIEW": "yellow", "DENY": "red"}
    decisions = sorted(decisions, key=lambda d: d["event_time"])
    first = [d for d in decisions if not d["repeat"]]  # each repeat is shown once, last
    shown = [d for d in first if d["outcome"] != "ALLOW"] + \
            [d for d in first if d["outcome"] == "ALLOW"][:5] + \
            [d for d in decisions if d["repeat"]]
    for d in shown:
        f = d["features"]
        mode = str(f.get("entry_mode"))
        how = f"{_MODES.get(mode, mode.lower())} {'GB' if f.get('domestic') else 'abroad'}"
        outcome = d["outcome"].replace("MANUAL_REVIEW", "REVIEW")
        table.add_row(d["entity_key"] + ("*" if d["repeat"] else ""),
                      f"£{f.get('amount_gbp_minor', 0) / 100:,.2f}", how,
                      f"[{colour[d['outcome']]}]{outcome}[/]",
                      ",".join(_SHORT.get(a, a.lower()) for a in d["actions"]) or "-",
                      "; ".join(dict.fromkeys(h["reason"] for h in d["rule_hits"])) or "-")
    console.print(table)
