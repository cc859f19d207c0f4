"""The demo: a broker, the decision path, everyday traffic, an attack, decisions.

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
from tripwire.connectors.events import EventProducer, read_to_end, read_topic
from tripwire.connectors.simulator import (
    CARD_SCHEMA,
    FPS_SCHEMA,
    corrupt_dates,
    fps_messages,
    magstripe_contactless_attack,
    normal_card_payments,
)
from tripwire.connectors.standin_gateway import Gateway
from tripwire.controls.actions import requests_of
from tripwire.controls.engine import ControlSet
from tripwire.features.engine import FeatureLibrary
from tripwire.schemas.codec import AvroCodec
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
                                      controls=ControlSet.from_dir(), library=library,
                                      state_dir=Path(state_dir),
                                      isolate_mb=settings.controls_memory_mb
                                      if settings.controls_isolated else None, applier=True)
            sender = AlertSender(cluster.bootstrap, lambda k: topic(k, ns), codec,
                                 SenderConfig(gateway.url), f"{ns}alert-sender")
            stop = threading.Event()
            sending = threading.Thread(target=sender.run, args=(stop,), daemon=True)
            sending.start()
            try:
                pipeline.wait_assigned()
                console.print("Pipeline running, every stage in one loop: intake → feature nodes "
                              f"({', '.join(library.entities())}) → decide; the applier and "
                              f"the customer-alert sender (SMS gateway stand-in: {gateway.url})")
                result = _traffic(console, cluster.bootstrap, ns, codec, normal, attack)
                result.actions = _carried_out(console, cluster.bootstrap, ns, codec, gateway)
                return result
            finally:
                stop.set()
                sending.join(30)
                pipeline.stop()
                gateway.close()
    finally:
        cluster.close()


def _traffic(console: Console, bootstrap: str, ns: str, codec: AvroCodec, normal: int,
             attack: int) -> DemoResult:
    """Everyday traffic, an attack, resends and bad messages; prints what came out."""
    now = int(time.time() * 1000)
    cards = list(normal_card_payments(7, now - 60_000, normal))
    cards += list(magstripe_contactless_attack(11, now - 5_000, attack))
    fps, corrupted = corrupt_dates(list(fps_messages(5, now - 120_000, 10)), 0.2, seed=2)
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
    return DemoResult(sent, len(decisions) + len(refused), outcomes, bootstrap)


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


def _print_decisions(console: Console, decisions: list[dict]) -> None:
    table = Table(title="Decisions (tripwire.decisions.v1)", show_lines=False)
    for col in ("card", "amount", "where", "entry mode", "card auths 1h",
                "magstripe abroad 10m (system)", "outcome", "actions", "repeat"):
        table.add_column(col, no_wrap=True)
    table.add_column("why", overflow="fold")
    colour = {"ALLOW": "green", "STEP_UP": "yellow", "MANUAL_REVIEW": "yellow", "DENY": "red"}
    decisions = sorted(decisions, key=lambda d: d["event_time"])
    first = [d for d in decisions if not d["repeat"]]  # each repeat is shown once, last
    shown = [d for d in first if d["outcome"] != "ALLOW"] + \
            [d for d in first if d["outcome"] == "ALLOW"][:5] + \
            [d for d in decisions if d["repeat"]]
    for d in shown:
        f = d["features"]
        why = "; ".join(f"{h['control_id']}: {h['reason']}" for h in d["rule_hits"]) or "-"
        table.add_row(d["entity_key"], f"£{f.get('amount_gbp_minor', 0) / 100:,.2f}",
                      "GB" if f.get("domestic") else "abroad", str(f.get("entry_mode")).lower(),
                      str(f.get("card_auths_1h", "-")),
                      str(f.get("system_magstripe_abroad_10m", "-")),
                      f"[{colour[d['outcome']]}]{d['outcome']}[/]", ",".join(d["actions"]),
                      "yes" if d["repeat"] else "", why)
    console.print(table)
