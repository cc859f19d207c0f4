"""The demo: a broker, the decision path, everyday traffic, an attack, decisions.

Runs on its own topic namespace, so repeated runs never see each other's data.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from tripwire.broker import acquire_cluster
from tripwire.config import Settings
from tripwire.connectors.events import EventProducer, read_topic
from tripwire.connectors.kafka import create_topics
from tripwire.connectors.simulator import (
    CARD_SCHEMA,
    magstripe_contactless_attack,
    normal_card_payments,
)
from tripwire.streams.decision_path import INPUTS, DecisionPath
from tripwire.streams.loop import BatchLoop
from tripwire.streams.topics import topic

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    events: int
    decisions: int
    outcomes: Counter[str]
    bootstrap: str


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
        path = DecisionPath.default(settings.schema_registry_url)
        loop = BatchLoop(cluster.bootstrap, f"{ns}decision-path",
                         [topic(k, ns) for k in INPUTS], path, namespace=ns)
        stop = threading.Event()
        worker = threading.Thread(target=loop.run, args=(stop,), name="decision-path",
                                  daemon=True)
        worker.start()

        now = int(time.time() * 1000)
        events = list(normal_card_payments(7, now - 60_000, normal))
        events += list(magstripe_contactless_attack(11, now - 5_000, attack))
        prod = EventProducer(cluster.bootstrap, path.codec)
        for e in events:
            prod.send(topic("card_payments", ns), CARD_SCHEMA, e, e["card_token"])
        prod.flush()
        console.print(f"Published {len(events)} card payments "
                      f"({normal} everyday, {attack} magstripe-contactless abroad)")

        msgs = read_topic(cluster.bootstrap, [topic("decisions", ns)], len(events), timeout=60)
        stop.set()
        worker.join(30)
        decisions = [path.codec.decode(m.value())[1] for m in msgs]
        _print_decisions(console, decisions)
        outcomes = Counter(d["outcome"] for d in decisions)
        console.print(f"{len(decisions)} decisions: " +
                      ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
        return DemoResult(len(events), len(decisions), outcomes, cluster.bootstrap)
    finally:
        cluster.close()


def _print_decisions(console: Console, decisions: list[dict]) -> None:
    table = Table(title="Decisions (tripwire.decisions.v1)", show_lines=False)
    for col in ("card", "amount", "where", "entry mode", "outcome", "actions"):
        table.add_column(col, no_wrap=True)
    table.add_column("why", overflow="fold")
    colour = {"ALLOW": "green", "STEP_UP": "yellow", "MANUAL_REVIEW": "yellow", "DENY": "red"}
    shown = [d for d in decisions if d["outcome"] != "ALLOW"] + \
            [d for d in decisions if d["outcome"] == "ALLOW"][:5]
    for d in shown:
        f = d["features"]
        why = "; ".join(f"{h['control_id']}: {h['reason']}" for h in d["rule_hits"]) or "-"
        table.add_row(d["entity_key"], f"£{f.get('amount_gbp_minor', 0) / 100:,.2f}",
                      "GB" if f.get("domestic") else "abroad", str(f.get("entry_mode")).lower(),
                      f"[{colour[d['outcome']]}]{d['outcome']}[/]", ",".join(d["actions"]), why)
    console.print(table)
