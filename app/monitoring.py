"""`tripwire monitor ...`: the system-wide monitor's worker, its state, a replay
of recorded decisions to tune it on the bank's own history, the explanation of a
spike with an emergency control to release, and the customer-alert pause."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import typer

from tripwire.config import Settings
from tripwire.errors import TripwireError

__all__ = ["monitor_app", "monitor_policy"]

monitor_app = typer.Typer(help="The system-wide monitor: run, status, replay, explain, "
                               "pause, resume.", no_args_is_help=True)


def monitor_policy(settings: Settings, **overrides: Any) -> Any:
    """The customer-alert spike's policy from the settings (the other tripwires scale
    from it)."""
    from tripwire.controls.monitor import MINUTE_MS, MonitorPolicy

    values: dict[str, Any] = {"window_ms": settings.monitor_window_minutes * MINUTE_MS,
              "ratio": settings.monitor_ratio, "minimum": settings.monitor_minimum,
              "floor": settings.monitor_floor,
              "warmup_minutes": settings.monitor_warmup_minutes}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return MonitorPolicy(**values)


def _print(text: str) -> None:
    from tripwire.outcomes import _print as say

    say(text)


def _when(t_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t_ms / 1000)) + "Z"


@monitor_app.command("run")
def monitor_run(
    lateness_ms: int = typer.Option(60_000, help="how late a record may be and still be "
                                    "counted in event-time order"),
    idle_s: float = typer.Option(30.0, help="a partition read to its end holds event time "
                                 "back for this long"),
    metrics_port: int | None = typer.Option(None, help="serve Prometheus metrics here "
                                            "(/metrics)"),
) -> None:
    """Run the monitor until SIGTERM/Ctrl-C. One worker counts the whole bank: a second
    one started takes over from the first (which stops)."""
    from tripwire.controls.monitor import SystemMonitor, default_tripwires
    from tripwire.outcomes import _Context, _until_signalled
    from tripwire.streams.monitor import MonitorLoop
    from tripwire.streams.topics import topic

    ctx = _Context()
    loop = MonitorLoop(ctx.bootstrap, lambda k: topic(k, ctx.ns), ctx.codec,
                       SystemMonitor(default_tripwires(monitor_policy(ctx.settings))),
                       group=f"{ctx.ns}tripwire.monitor", lateness_ms=lateness_ms,
                       idle_s=idle_s)
    if metrics_port is not None:
        from tripwire.connectors.metrics import serve_metrics

        port = serve_metrics(metrics_port, lambda: loop.gauges)
        _print(f"metrics on :{port}/metrics")
    stats = _until_signalled(loop.run)
    _print(f"monitor: {stats.counted} counted ({stats.late} late), signals "
           f"{dict(stats.signals)}, event time {_when(stats.watermark)}")


def restored(ctx: Any) -> tuple[Any, dict[str, Any]]:
    """The monitor as its worker last committed it, and its cursor."""
    from tripwire.controls.monitor import SystemMonitor, default_tripwires
    from tripwire.streams.monitor import stored_cells, uncells

    found = {k: v for k, (_, v) in stored_cells(ctx.bootstrap,
                                                ctx.topic("monitor_state")).items()}
    cursor = found.pop("cursor", None) or {}
    monitor = SystemMonitor(default_tripwires(monitor_policy(ctx.settings)))
    if found:
        monitor.restore(uncells(found))
    return monitor, cursor


@monitor_app.command("status")
def monitor_status() -> None:
    """Where the monitor is: event time, what it counted and held, every tripwire that is
    raised, the customer-alert window against its baseline, and the pause."""
    from tripwire.outcomes import _Context, alerts_status

    ctx = _Context()
    monitor, cursor = restored(ctx)
    if not cursor:
        _print("[yellow]the monitor has not committed yet (is `tripwire monitor run` "
               "running?)[/yellow]")
        return
    _print(f"event time {_when(cursor['watermark'])}; {monitor.counted} decisions and "
           f"overrides counted; {monitor.held} customer alerts asked for while paused")
    alerts = next(tw for tw in monitor.tripwires if tw.name == "customer_alerts")
    series = getattr(alerts, "series", {}).get("")
    if series is not None:
        _print(f"customer alerts: {series.observed()} in the last "
               f"{series.policy.window_ms // 60_000} min, baseline {series.baseline():.0f} "
               f"(spike at {series.policy.ratio:g}x and at least {series.policy.minimum})")
    active = monitor.active()
    for name, spikes in sorted(active.items()):
        for key, t in sorted(spikes.items()):
            _print(f"[red]RAISED[/red] {name}{' ' + key if key else ''} since {_when(t.at)}: "
                   f"{t.observed} against {t.baseline:.0f} ({t.ratio:.1f}x)"
                   + (f", pattern {t.pattern}" if t.pattern else ""))
    if not active:
        _print("[green]no tripwire raised[/green]")
    alerts_status()


@monitor_app.command("replay")
def monitor_replay(
    ratio: float | None = typer.Option(None, help="try another spike ratio"),
    minimum: int | None = typer.Option(None, help="try another minimum"),
    floor: float | None = typer.Option(None, help="try another baseline floor"),
    window_minutes: int | None = typer.Option(None, help="try another window"),
) -> None:
    """Run the tripwires over every decision and override the topics hold, as the live
    worker does: the pauses, SOC and ops alerts and held alerts it gives (and would give
    with other thresholds: tune on the bank's own history)."""
    from tripwire.controls.monitor import MINUTE_MS, SystemMonitor, default_tripwires
    from tripwire.outcomes import _Context
    from tripwire.streams.monitor import replay

    ctx = _Context()
    observations = _recorded(ctx)
    policy = monitor_policy(ctx.settings, ratio=ratio, minimum=minimum, floor=floor,
                            window_ms=window_minutes * MINUTE_MS if window_minutes else None)
    monitor, signals = replay(observations, SystemMonitor(default_tripwires(policy)))
    _print(f"{len(observations)} decisions and overrides replayed, "
           f"{_when(min((o.t for o in observations), default=0))} to "
           f"{_when(max((o.t for o in observations), default=0))}")
    pauses: list[tuple[int, int]] = []  # (from, to) in event time
    for s in signals:
        t = s.transition
        colour = {"RAISED": "red", "CLEARED": "green"}.get(t.state, "yellow")
        _print(f"{_when(t.at)} [{colour}]{t.state:8}[/] {s.tripwire}"
               f"{' ' + s.key if s.key else ''} ({s.audience}): {s.summary}")
        if s.pauses and t.state == "RAISED":
            pauses.append((t.at, monitor.t))  # until the end of the history, unless cleared
        elif s.pauses and t.state == "CLEARED" and pauses:
            pauses[-1] = (pauses[-1][0], t.at)
    counts = Counter(f"{s.tripwire} {s.transition.state}" for s in signals)
    _print(f"signals: {dict(sorted(counts.items())) or 'none'}; customer alerts paused "
           f"{len(pauses)} time(s), {sum(b - a for a, b in pauses) // 60_000} "
           f"min in all; {monitor.held} alerts asked for while paused (held, then sent or "
           f"summarised)")


def _recorded(ctx: Any) -> list[Any]:
    from tripwire.connectors.events import read_to_end
    from tripwire.controls.monitor import observation_of

    out = []
    for key in ("decisions", "audit"):
        for m in read_to_end(ctx.bootstrap, ctx.topic(key)):
            schema, rec = ctx.codec.decode(m.value())
            obs = observation_of(schema.name, rec)
            if obs is not None:
                out.append(obs)
    return out


@monitor_app.command("explain")
def monitor_explain(
    write: Path | None = typer.Option(None, "--write", help="write the suggested emergency "
                                      "control here (release it with `tripwire controls "
                                      "publish`: a second person approves it when roles "
                                      "are configured)"),
    hours: float = typer.Option(2.0, help="how long the emergency control lasts"),
) -> None:
    """The latest systemic-attack alert: its window, count, baseline, ratio and common
    pattern (each value's share and lift), and an emergency control that declines the
    pattern until it expires."""
    from tripwire.controls.monitor import emergency_control
    from tripwire.outcomes import _Context

    ctx = _Context()
    raised = [a for a in ctx.read("soc_alerts") if a["state"] == "RAISED"]
    if not raised:
        _print("[green]no systemic-attack alert has been raised[/green]")
        return
    a = raised[-1]
    _print(f"[red]{a['summary']}[/red]")
    _print(f"raised {_when(a['raised_at'])}: {a['observed']} in "
           f"{a['window_ms'] // 60_000} min against a baseline of {a['baseline']:.0f} "
           f"({a['ratio']:.1f}x); customer alerts "
           f"{'paused' if a['customer_alerts_paused'] else 'not paused'}")
    if not a["common_pattern"]:
        _print("no common pattern: the spike is spread over everything")
        return
    _print("common pattern: " + ", ".join(f"{k}={v}" for k, v in
                                            sorted(a["common_pattern"].items()))
           + f" ({a['pattern_share']:.0%} of the window's alerts have all of it)")
    expires = int(time.time() * 1000 + hours * 3_600_000)
    source = emergency_control(a["common_pattern"], expires,
                               f"{a['common_pattern']} at {_when(a['raised_at'])}")
    if source is None:
        _print("the pattern names nothing a card payment's fields can be checked for")
        return
    if write is None:
        _print("suggested emergency control (--write FILE to save it):\n" + source)
        return
    if write.suffix != ".star":
        raise TripwireError(f"{write}: a control file ends in .star")
    write.write_text(source)
    _print(f"written to {write} (expires {_when(expires)}); release it with: tripwire "
           f"controls publish {write} --reason \"...\"")


@monitor_app.command("mode")
def monitor_mode(
    mode: str = typer.Argument(..., help="off, suggest (the default) or auto"),
    reason: str = typer.Option(..., "--reason"),
) -> None:
    """What the monitor does with a spike's common pattern: nothing (off), show it as
    an emergency control to release (suggest), or release that control itself, with
    its expiry, and retire it when the spike clears (auto). Arming auto needs a second
    person: the first run proposes it, another person's run arms it. Audited (role:
    engineer or approver)."""
    import orjson

    from tripwire.controls.monitor import MODE_KEY, MODES
    from tripwire.controls.plane import AUDIT_SCHEMA
    from tripwire.outcomes import _Context

    if mode not in MODES:
        raise TripwireError(f"mode: one of {', '.join(MODES)}")
    ctx = _Context()
    ctx.authorise("monitor.mode", "monitor", reason)
    if mode == "auto":
        trail = ctx.read("audit")
        armed_at = max((a["at"] for a in trail if a["action"] == "monitor.mode"), default=0)
        proposals = [a for a in trail if a["action"] == "monitor.mode.propose"
                     and a["at"] > armed_at]
        if not proposals:
            ctx.audit("monitor.mode.propose", "monitor", reason, mode=mode)
            _print(f"auto mode proposed by {ctx.user} (audited); another person arms it "
                   f"with: tripwire monitor mode auto --reason \"...\"")
            return
        if any(p["actor"] == ctx.user for p in proposals):
            ctx.audit("monitor.mode.refused", "monitor", reason, mode=mode,
                      why="the proposer cannot arm their own proposal")
            raise TripwireError(f"refused: {ctx.user} proposed auto mode; another person "
                                "arms it (the attempt is audited)")
    rec = ctx.audit("monitor.mode", "monitor", reason, mode=mode)
    ctx.producer.send(ctx.topic("alert_control"), AUDIT_SCHEMA, {
        **rec, "details_json": orjson.dumps({"mode": mode}).decode()}, MODE_KEY)
    ctx.producer.flush()
    _print(f"monitor mode: {mode}, set by {ctx.user} (audited)")


@monitor_app.command("pause")
def monitor_pause(reason: str = typer.Option(..., "--reason")) -> None:
    """Pause customer alerts by hand (as `tripwire alerts pause`; role: engineer)."""
    from tripwire.outcomes import _control

    _control("alerts.pause", reason)


@monitor_app.command("resume")
def monitor_resume(reason: str = typer.Option(..., "--reason")) -> None:
    """Resume customer alerts before the monitor's hysteresis would (audited; role:
    engineer or approver). Held alerts go out by TRIPWIRE_ALERT_ON_STALE."""
    from tripwire.outcomes import _control

    _control("alerts.resume", reason)
