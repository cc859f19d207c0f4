"""Backtest exports: the HTML report (plotly charts, self-contained: it opens
offline) and the labels file reader."""

from __future__ import annotations

import csv
import html
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from tripwire.streams.backtest import CAUGHT_WITHIN, Backtest, Labels

__all__ = ["read_label_table", "read_labels", "write_html"]

_TRUE = {"1", "true", "yes", "fraud", "y", "t"}
_FALSE = {"0", "false", "no", "genuine", "legit", "n", "f", ""}


def read_labels(path: Path) -> dict[str, bool]:
    """``event_id`` → fraud (:func:`read_label_table`'s ``fraud``)."""
    return read_label_table(path).fraud


def read_label_table(path: Path) -> Labels:
    """Labels from CSV (columns ``event_id`` and ``label`` or ``fraud``; optional
    ``typology``, ``attack_id`` and ``lookalike``, as ``tripwire simulate`` and
    ``tripwire cases labels`` write) or JSON Lines (``{"event_id": ..., "fraud":
    true, "typology": ...}``). An unreadable label is an error naming its line,
    never a guess."""
    out = Labels()

    def row(eid: str, label: object, n: int, rec: Mapping[str, Any]) -> None:
        out.fraud[eid] = _label(label, path, n)
        for name, into in (("typology", out.typology), ("attack_id", out.attack),
                           ("lookalike", out.lookalike)):
            if rec.get(name):
                into[eid] = str(rec[name])

    if path.suffix in (".jsonl", ".json"):
        for n, line in enumerate(path.read_bytes().splitlines(), start=1):
            if line.strip():
                rec = orjson.loads(line)
                row(str(rec["event_id"]), rec.get("fraud", rec.get("label")), n, rec)
        return out
    with path.open(newline="") as f:
        rows = csv.DictReader(f)
        if rows.fieldnames is None or "event_id" not in rows.fieldnames:
            raise ValueError(f"{path}: a labels CSV needs a header with event_id and label")
        col = "label" if "label" in rows.fieldnames else "fraud"
        for n, r in enumerate(rows, start=2):
            row(r["event_id"], r.get(col), n, r)
    return out


def _label(value: object, path: Path, line: int) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value if value is not None else "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{path}:{line}: label {value!r} is neither fraud (1/true) nor "
                     "genuine (0/false)")


def _typology_html(run: Backtest, within: int) -> list[str]:
    if not run.labels:
        return []
    out = []
    stats = [s for s in run.typologies(within).values() if s.events or s.flagged]
    if stats:
        rows = "".join(
            f"<tr><td>{html.escape(s.typology)}</td><td>{s.attacks}</td>"
            f"<td>{s.attacks_caught}</td><td>{s.events}</td><td>{s.flagged}</td>"
            f"<td>{_pct(s.precision)}</td><td>{_pct(s.recall)}</td>"
            f"<td>{_pct(s.event_recall)}</td></tr>" for s in stats)
        out.append(f"<h2>Per typology</h2><p>An attack stopped within its first {within} "
                   "events counts as stopped from its first.</p><table><tr><th>typology</th>"
                   "<th>attacks</th><th>caught</th><th>events</th><th>flagged</th>"
                   "<th>precision</th><th>recall</th><th>event recall</th></tr>"
                   f"{rows}</table>")
    looks = run.lookalikes()
    if looks:
        names = ("ALLOW", "STEP_UP", "MANUAL_REVIEW", "DENY")
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{sum(c.values())}</td>"
                       + "".join(f"<td>{c[o]}</td>" for o in names) + "</tr>"
                       for k, c in looks.items())
        out.append("<h2>Look-alikes (genuine)</h2><table><tr><th>look-alike</th>"
                   "<th>events</th>" + "".join(f"<th>{o}</th>" for o in names)
                   + f"</tr>{rows}</table>")
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def write_html(path: Path, run: Backtest, title: str, baseline: Backtest | None = None,
               command: Sequence[str] = (), within: int = CAUGHT_WITHIN) -> None:
    """One self-contained page: summary, per-control table, outcome and alert
    volumes per day, precision and recall per control and per typology, the
    look-alikes' outcomes, changes against the baseline."""
    import plotly.graph_objects as go

    days = sorted(run.outcomes_per_day)
    figs = []
    outcomes = go.Figure([go.Bar(name=o, x=days, y=[run.outcomes_per_day[d][o] for d in days])
                          for o in ("ALLOW", "STEP_UP", "MANUAL_REVIEW", "DENY")])
    outcomes.update_layout(barmode="stack", title="Decisions per day (event time, UTC)")
    figs.append(outcomes)
    alerts = go.Figure([go.Scatter(name=s.control_id, x=days, mode="lines+markers",
                                   y=[s.hits_per_day.get(d, 0) for d in days])
                        for s in run.controls.values() if s.hits])
    alerts.update_layout(title="Hits per control per day (alert volume)")
    figs.append(alerts)
    if run.labels:
        named = [s for s in run.controls.values() if s.hits]
        quality = go.Figure([
            go.Bar(name="precision", x=[s.control_id for s in named],
                   y=[s.precision or 0 for s in named]),
            go.Bar(name="recall", x=[s.control_id for s in named],
                   y=[s.recall or 0 for s in named])])
        quality.update_layout(barmode="group", title="Precision and recall against the labels",
                              yaxis={"tickformat": ".0%", "range": [0, 1]})
        figs.append(quality)
    charts = "".join(f.to_html(full_html=False, include_plotlyjs=(i == 0))
                     for i, f in enumerate(figs))
    rows = "".join(
        f"<tr><td>{html.escape(s.control_id)}</td><td>{s.stage.lower()}</td><td>{s.mode}</td>"
        f"<td><code>{s.version}</code></td><td>{s.runs}</td><td>{s.hits}</td>"
        f"<td>{s.errors}</td><td>{_pct(s.precision)}</td><td>{_pct(s.recall)}</td>"
        f"<td>{s.alerts_per_day:.1f}</td></tr>"
        for s in sorted(run.controls.values(), key=lambda s: (s.stage, s.control_id)))
    precision, recall = run.decision_quality()
    outcomes_text = ", ".join(f"{o} {n}" for o, n in run.outcomes.most_common())
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>{len(run.decisions)} decisions ({outcomes_text}); "
             f"{sum(run.quarantined.values())} refused "
             f"({', '.join(f'{c} {n}' for c, n in run.quarantined.most_common()) or 'none'}); "
             f"{len(run.labels)} labels; replayed in {run.seconds:.1f} s.</p>"]
    if run.labels:
        parts.append(f"<p>Decisions other than ALLOW: precision {_pct(precision)}, "
                     f"recall {_pct(recall)}.</p>")
    parts.append("<table><tr><th>control</th><th>stage</th><th>mode</th><th>version</th>"
                 "<th>runs</th><th>hits</th><th>errors</th><th>precision</th><th>recall</th>"
                 f"<th>hits/day</th></tr>{rows}</table>")
    parts.extend(_typology_html(run, within))
    if baseline is not None:
        counts, changes = run.diff(baseline)
        listed = "".join(f"<tr><td>{html.escape(e)}</td><td>{o}</td><td>{n}</td></tr>"
                         for e, o, n in changes[:200])
        parts.append(f"<h2>Against the active controls: {len(changes)} outcomes change</h2>"
                     + "".join(f"<p>{o} → {n}: {c}</p>" for (o, n), c in counts.most_common())
                     + f"<table><tr><th>event</th><th>active</th><th>candidate</th></tr>"
                       f"{listed}</table>")
    parts.append(charts)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    parts.append(f"<p><small>tripwire backtest, {stamp}"
                 f"{': ' + html.escape(' '.join(command)) if command else ''}</small></p>")
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:4px 8px;text-align:right}td:first-child{text-align:left}")
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>"
                    f"{html.escape(title)}</title><style>{style}</style></head><body>"
                    + "".join(parts) + "</body></html>")
