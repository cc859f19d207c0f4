"""`tripwire backtest` and `tripwire simulate`: replay recorded (or simulated,
labelled) events through the decision path, and measure the controls per control
and per typology."""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from tripwire.config import Settings
from tripwire.errors import TripwireError
from tripwire.streams.backtest import CAUGHT_WITHIN, Backtest

__all__ = ["backtest", "simulate"]

# tables in full when the output goes to a file or a pipe (a report, a CI log)
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)


def _backtest_records(events: str, codec: Any) -> tuple[list[Any], list[tuple[int, str]]]:
    """Input records from a JSON Lines file or ``topic:NAME[,NAME...]`` (Kafka order:
    offsets per partition; across partitions, by record timestamp)."""
    from tripwire.streams.backtest import records_from_jsonl

    if events.startswith("topic:"):
        from tripwire.cli import _bootstrap
        from tripwire.connectors.events import read_to_end
        from tripwire.schemas.records import InRecord

        bootstrap = _bootstrap(Settings())
        recs = []
        for name in events[len("topic:"):].split(","):
            for m in read_to_end(bootstrap, name.strip()):
                recs.append(InRecord(m.topic() or "", m.partition() or 0, m.offset() or 0,
                                     m.key(), m.value(), m.timestamp()[1]))
        if len({(r.topic, r.partition) for r in recs}) > 1:  # one log keeps its own order
            from tripwire.streams.align import log_order

            recs = log_order(recs)  # the live feature nodes' order
        return recs, []
    path = Path(events)
    if not path.is_file():
        raise TripwireError(f"{events}: no such events file (or use topic:NAME)")
    with path.open("rb") as f:
        return records_from_jsonl(f, codec)


def backtest(
    controls_dir: Path | None = typer.Option(None, "--controls", help="candidate controls "
                                             "folder (default: the shipped library)"),
    events: str = typer.Option(..., "--events", help="JSON Lines file of events, or "
                               "topic:NAME[,NAME] to replay Kafka topics"),
    labels: Path | None = typer.Option(None, "--labels", exists=True, dir_okay=False,
                                       help="CSV (event_id,label) or JSON Lines of fraud "
                                       "labels, for precision and recall"),
    baseline_dir: Path | None = typer.Option(None, "--baseline", help="the active controls "
                                             "to compare with (default: the shipped library)"),
    report: Path = typer.Option(Path("backtest-report.html"), "--report",
                                help="HTML report with charts"),
    out: Path | None = typer.Option(None, "--out", help="write the decisions as JSON Lines"),
    within: int = typer.Option(CAUGHT_WITHIN, "--within", min=1, help="an attack stopped "
                               "within its first N events counts as stopped from its first "
                               "(labels with attack_id)"),
    workers: int = typer.Option(0, "--workers", min=0, help="processes replaying: 2 runs "
                                "intake and features in a second process, ahead of the "
                                "decisions (same results); 0: 2 on a machine with two "
                                "cores or more"),
) -> None:
    """Replay recorded events through the same decision path with candidate controls:
    hits, precision/recall, alerts per day per control, and the outcomes that change
    against the active controls."""
    import orjson
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    from rich.table import Table

    from tripwire.connectors.report import read_label_table, write_html
    from tripwire.controls.engine import LIBRARY, ControlSet
    from tripwire.controls.results import ControlError
    from tripwire.schemas.codec import AvroCodec
    from tripwire.streams.backtest import backtest as run_backtest

    codec = AvroCodec.from_url(Settings().schema_registry_url)
    try:
        candidate = ControlSet.from_dir(controls_dir or LIBRARY)
        active = ControlSet.from_dir(baseline_dir or LIBRARY)
    except ControlError as exc:
        raise TripwireError(f"the controls do not load: {exc}") from None
    try:
        truth = read_label_table(labels) if labels else None
    except (ValueError, KeyError) as exc:
        raise TripwireError(f"labels: {exc}") from None
    records, bad = _backtest_records(events, codec)
    for n, why in bad[:20]:
        err_console.print(f"[yellow]line {n} is not an event: {why}[/yellow]")
    if not records:
        raise TripwireError(f"{events}: no events to replay")
    runs = {}
    settings = Settings()
    isolate_mb = settings.controls_memory_mb if settings.controls_isolated else None
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(), console=err_console) as bar:
        # the same controls as the active ones (the default): one replay serves both
        same = candidate.versions() == active.versions()
        for name, cs in (("candidate", candidate),) + (() if same else (("active", active),)):
            task = bar.add_task(f"replaying with the {name} controls", total=len(records))

            def advance(done: int, _total: int, task: Any = task) -> None:
                bar.update(task, completed=done)

            runs[name] = run_backtest(cs, records, codec=codec, labels=truth,
                                      progress=advance, isolate_mb=isolate_mb,
                                      workers=workers or min(2, os.cpu_count() or 1))
    run = runs["candidate"]
    base = runs.get("active", run)
    table = Table(title=f"backtest: {len(records)} events, {len(run.decisions)} decisions, "
                        f"{sum(run.quarantined.values())} refused, {len(bad)} unreadable lines")
    for col in ("control", "stage", "mode", "runs", "hits", "errors", "precision", "recall",
                "hits/day"):
        table.add_column(col)
    for st in sorted(run.controls.values(), key=lambda x: (x.stage, x.control_id)):
        table.add_row(st.control_id, st.stage.lower(), st.mode, str(st.runs), str(st.hits),
                      str(st.errors), "-" if st.precision is None else f"{st.precision:.1%}",
                      "-" if st.recall is None else f"{st.recall:.1%}",
                      f"{st.alerts_per_day:.1f}")
    console.print(table)
    if run.labels:
        precision, recall = run.decision_quality()
        console.print(f"decisions other than ALLOW against the labels: precision "
                      f"{_pct(precision)}, recall {_pct(recall)} (each event on its own)")
    _typology_tables(run, within)
    console.print("outcomes: " + ", ".join(f"{o} {n}" for o, n in run.outcomes.most_common()))
    counts, changes = run.diff(base)
    console.print(f"against the active controls: {len(changes)} outcomes change"
                  + "".join(f"; {o} → {n}: {c}" for (o, n), c in counts.most_common()))
    write_html(report, run, f"Backtest of {controls_dir or LIBRARY}", base, sys.argv, within)
    console.print(f"report: {report}")
    if out is not None:
        with out.open("wb") as f:
            for d in run.decisions:
                f.write(orjson.dumps(d) + b"\n")
        console.print(f"decisions: {out}")


def _typology_tables(run: Backtest, within: int) -> None:
    """Precision and recall per typology, and the look-alikes' outcomes (with labels
    that name typologies and look-alikes)."""
    from rich.table import Table

    if not run.labels:
        return
    typologies = {n: s for n, s in run.typologies(within).items() if s.events or s.flagged}
    if typologies:
        table = Table(title=f"per typology (an attack stopped within its first {within} "
                            "events counts from its first)")
        for col in ("typology", "attacks", "caught", "events", "flagged", "precision",
                    "recall", "event recall"):
            table.add_column(col)
        for name, s in typologies.items():
            table.add_row(name, str(s.attacks), str(s.attacks_caught), str(s.events),
                          str(s.flagged), _pct(s.precision), _pct(s.recall),
                          _pct(s.event_recall))
        console.print(table)
    lookalikes = run.lookalikes()
    if lookalikes:
        table = Table(title="look-alikes (genuine): their outcomes")
        for col in ("look-alike", "events", "ALLOW", "STEP_UP", "MANUAL_REVIEW", "DENY"):
            table.add_column(col)
        for kind, c in lookalikes.items():
            table.add_row(kind, str(sum(c.values())), *(str(c[o]) for o in (
                "ALLOW", "STEP_UP", "MANUAL_REVIEW", "DENY")))
        console.print(table)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def simulate(
    events: Path = typer.Option(Path("events.jsonl"), "--events", help="where the events "
                                "go (JSON Lines, for backtest and produce)"),
    labels: Path = typer.Option(Path("labels.csv"), "--labels", help="where the labels go "
                                "(CSV: event_id, label, typology, attack_id, lookalike)"),
    days: float = typer.Option(3.0, "--days", min=0.05, max=60, help="how many days"),
    customers: int = typer.Option(4000, "--customers", min=20, help="the bank's customers"),
    attacks: int = typer.Option(2, "--attacks-per-day", min=1, help="attacks of each "
                                "typology (and each look-alike) a day"),
    seed: int = typer.Option(1, "--seed", help="the same seed gives the same events"),
    start: str = typer.Option("", "--start", help="the first day (YYYY-MM-DD, UTC; default: "
                              "DAYS days before today, so the events are recent)"),
) -> None:
    """A labelled stream: everyday cards, logins and Faster Payments with attacks of
    every typology the controls name, and their innocent look-alikes."""
    from collections import Counter

    from tripwire.connectors.labelled import labelled_traffic

    try:
        first = dt.date.fromisoformat(start) if start else \
            dt.datetime.now(dt.UTC).date() - dt.timedelta(days=int(days + 0.999))
    except ValueError:
        raise TripwireError(f"--start {start!r} is not a date like 2026-11-30") from None
    start_ms = int(dt.datetime(first.year, first.month, first.day, tzinfo=dt.UTC)
                   .timestamp() * 1000)
    run = labelled_traffic(seed, start_ms, days, customers, attacks)
    run.write(events, labels)
    per = Counter(t for t, _ in run.labels.values())
    attacks_per = Counter(t for t, _ in set(run.labels.values()))
    console.print(f"{len(run.events)} events from {first} over {days:g} days "
                  f"({customers} customers, seed {seed}): {events}")
    console.print(f"{len(run.labels)} fraud events in {len(attacks_per)} typologies, "
                  f"{len(run.lookalikes)} look-alike events: {labels}")
    for name in sorted(per):
        console.print(f"  {name:22} {attacks_per[name]:3} attacks {per[name]:6} events")
    console.print(f"next: tripwire backtest --events {events} --labels {labels}")
