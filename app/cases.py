"""`tripwire cases ...`: the fraud cases the applier opens, kept light — one open
per entity and typology, assigned and closed with a label by analysts, and the
labels written back for `tripwire backtest --labels`."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import typer

from tripwire.controls.actions import CASE_SCHEMA
from tripwire.controls.plane import AUDIT_SCHEMA
from tripwire.errors import TripwireError
from tripwire.outcomes import _Context, _print

__all__ = ["cases_app", "latest_cases"]

cases_app = typer.Typer(help="Fraud cases: list, show, assign, close with a label, labels.",
                        no_args_is_help=True)
LABELS = {"confirmed_fraud": "CONFIRMED_FRAUD", "false_positive": "FALSE_POSITIVE"}


def latest_cases(ctx: _Context) -> dict[str, dict[str, Any]]:
    """Each case's latest record (the topic is compacted: latest wins)."""
    cases: dict[str, dict[str, Any]] = {}
    for rec in ctx.read("cases"):
        cases[rec["case_id"]] = rec
    return cases


def _case(ctx: _Context, case_id: str) -> dict[str, Any]:
    cases = latest_cases(ctx)
    found = cases.get(case_id) or next(
        (c for cid, c in cases.items() if cid.startswith(case_id)), None)
    if found is None:
        raise TripwireError(f"no case {case_id!r} ({len(cases)} cases; `tripwire cases list`)")
    return found


def _update(ctx: _Context, case: dict[str, Any], action: str, reason: str,
            **changes: Any) -> dict[str, Any]:
    ctx.authorise(action, case["case_id"], reason)
    now = int(time.time() * 1000)
    rec = {**case, **changes, "updated_at": now, "actor": ctx.user, "note": reason}
    ctx.producer.send(ctx.topic("cases"), CASE_SCHEMA, rec, case["case_id"])
    ctx.audit(action, case["case_id"], reason, **{k: str(v) for k, v in changes.items()})
    return rec


@cases_app.command("list")
def cases_list(status: str = typer.Option("open", help="open (OPEN or ASSIGNED), closed, "
                                          "all")) -> None:
    """Cases, newest first."""
    ctx = _Context()
    wanted = {"open": {"OPEN", "ASSIGNED"}, "closed": {"CLOSED"},
              "all": {"OPEN", "ASSIGNED", "CLOSED"}}.get(status)
    if wanted is None:
        raise TripwireError("--status: open, closed or all")
    shown = [c for c in latest_cases(ctx).values() if c["status"] in wanted]
    for c in sorted(shown, key=lambda c: -c["opened_at"]):
        _print(f"{c['case_id'][:12]}  {c['status']:8} {c['typology']:28} {c['entity_key']:16} "
               f"{c['assignee'] or '-':10} {c['label'] or ''}")
    _print(f"[dim]{len(shown)} case(s)[/dim]")


@cases_app.command("show")
def cases_show(case_id: str) -> None:
    """One case: its state and the decision that opened it."""
    ctx = _Context()
    c = _case(ctx, case_id)
    for k in ("case_id", "status", "typology", "entity_key", "assignee", "label",
              "decision_id", "event_id", "opened_at", "updated_at", "actor", "note"):
        _print(f"{k:12} {c[k]}")
    _print(f"[dim]why: tripwire explain {c['event_id']}[/dim]")


@cases_app.command("assign")
def cases_assign(case_id: str, to: str = typer.Option(..., "--to"),
                 reason: str = typer.Option("assigned", "--reason")) -> None:
    """Give a case to an analyst (role: analyst)."""
    ctx = _Context()
    c = _case(ctx, case_id)
    if c["status"] == "CLOSED":
        raise TripwireError(f"case {c['case_id']} is closed")
    _update(ctx, c, "cases.assign", reason, status="ASSIGNED", assignee=to)
    ctx.producer.flush()
    _print(f"case {c['case_id']} assigned to {to}")


@cases_app.command("close")
def cases_close(case_id: str,
                label: str = typer.Option(..., "--label", help="confirmed_fraud or "
                                          "false_positive"),
                reason: str = typer.Option(..., "--reason")) -> None:
    """Close a case with a label (role: analyst). Its entity may have a case for the
    same typology again; the label goes to `tripwire cases labels`."""
    from tripwire.streams.apply import CLOSE_CASE, REQUESTS_PARTITION

    if label not in LABELS:
        raise TripwireError(f"--label: {' or '.join(LABELS)}")
    ctx = _Context()
    c = _case(ctx, case_id)
    if c["status"] == "CLOSED":
        raise TripwireError(f"case {c['case_id']} is already closed ({c['label']})")
    _update(ctx, c, CLOSE_CASE, reason, status="CLOSED", label=LABELS[label])
    now = int(time.time() * 1000)
    # the applier frees the entity's slot, in its one order of requests
    ctx.producer.send(ctx.topic("action_requests"), AUDIT_SCHEMA, {
        "audit_id": f"close:{c['case_id']}:{now}", "at": now, "actor": ctx.user,
        "action": CLOSE_CASE, "subject": c["target"], "reason": reason,
        "details_json": "{}"}, c["target"], partition=REQUESTS_PARTITION)
    ctx.producer.flush()
    _print(f"case {c['case_id']} closed as {label}")


@cases_app.command("labels")
def cases_labels(
    out: Path = typer.Option(..., "--out", help="a CSV for `tripwire backtest --labels`"),
    controls_dir: Path | None = typer.Option(None, "--controls", help="the controls whose "
                                             "TYPOLOGIES name each signal's typology "
                                             "(default: the shipped library)"),
) -> None:
    """Write the closed cases' labels for backtests: event_id, label, case_id, the
    typology (the case's signal as the detectors' TYPOLOGIES name it) and the signal."""
    from tripwire.controls.engine import LIBRARY, ControlSet

    ctx = _Context()
    named = {signal: typology for c in ControlSet.from_dir(controls_dir or LIBRARY).controls
             for signal, typology in c.typologies}
    closed = [c for c in latest_cases(ctx).values() if c["status"] == "CLOSED" and c["label"]]
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["event_id", "label", "case_id", "typology", "signal"])
        for c in sorted(closed, key=lambda c: c["opened_at"]):
            fraud = c["label"] == "CONFIRMED_FRAUD"
            w.writerow([c["event_id"], "fraud" if fraud else "legit", c["case_id"],
                        named.get(c["typology"], c["typology"]) if fraud else "",
                        c["typology"]])
    _print(f"{len(closed)} label(s) written to {out}")
