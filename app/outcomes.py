"""`tripwire actions ...` and `tripwire alerts ...`: what the applier did, resuming
its tripped limits, and the customer-alert sender (run, pause, resume, status,
dead letters). Every command that changes something checks the user's role
(:mod:`tripwire.roles`) and is audited, refused or not."""

from __future__ import annotations

import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
import typer

from tripwire.config import Settings
from tripwire.controls.plane import AUDIT_SCHEMA
from tripwire.errors import TripwireError
from tripwire.roles import Roles, current_user

__all__ = ["actions_app", "alerts_app", "audit_app", "override", "sink_app"]

actions_app = typer.Typer(help="What the applier did; resuming a tripped rate limit.",
                          no_args_is_help=True)
alerts_app = typer.Typer(help="Customer alerts: the sender, pause and resume, dead letters.",
                         no_args_is_help=True)
sink_app = typer.Typer(help="Forward a topic to a webhook or a JSON Lines file (SOC, on-call).",
                       no_args_is_help=True)

T = TypeVar("T")


class _Context:
    """Settings, broker, namespace, codec and a producer, for one command."""

    def __init__(self) -> None:
        from tripwire.cli import _bootstrap
        from tripwire.connectors.events import EventProducer
        from tripwire.schemas.codec import AvroCodec

        self.settings = Settings()
        self.bootstrap, self.ns = _bootstrap(self.settings), self.settings.topic_namespace
        self.codec = AvroCodec.from_url(self.settings.schema_registry_url)
        self.producer = EventProducer(self.bootstrap, self.codec)
        self.user = current_user()

    def topic(self, key: str) -> str:
        from tripwire.streams.topics import topic

        return topic(key, self.ns)

    def audit(self, action: str, subject: str, reason: str, **details: Any) -> dict[str, Any]:
        """Append an audit record, chained to the trail's last one."""
        from tripwire.connectors.events import audit_tail
        from tripwire.schemas.audit import sealed

        now = int(time.time() * 1000)
        rec = sealed({
            "audit_id": f"{action}:{subject}:{now}:{uuid.uuid4().hex[:8]}", "at": now,
            "actor": self.user, "action": action, "subject": subject, "reason": reason,
            "details_json": orjson.dumps({"host": socket.gethostname(), **details}).decode()},
            audit_tail(self.bootstrap, self.topic("audit"), self.codec))
        self.producer.send(self.topic("audit"), AUDIT_SCHEMA, rec, subject)
        self.producer.flush()  # the next record chains to this one
        return rec

    def authorise(self, action: str, subject: str, reason: str) -> None:
        """Refuse (audited, and the command fails) unless the user's role allows it."""
        try:
            roles = Roles.load(self.settings.roles)
        except ValueError as exc:
            raise TripwireError(str(exc)) from exc
        if roles.may(self.user, action):
            return
        needs = roles.who_may(action)
        self.audit(f"{action}.refused", subject, reason, needs=needs)
        self.producer.flush()
        raise TripwireError(f"refused: {self.user} may not {action} (it needs the role "
                            f"{' or '.join(needs)}); the attempt is audited")

    def read(self, key: str) -> list[dict[str, Any]]:
        from tripwire.connectors.events import read_to_end

        return [self.codec.decode(m.value())[1] for m in read_to_end(self.bootstrap,
                                                                     self.topic(key))]


def _until_signalled(run: Callable[[threading.Event], T]) -> T:
    """``run(stop)`` until SIGTERM or Ctrl-C sets ``stop``; a second one leaves at
    once (KeyboardInterrupt). The handlers are set whatever the process inherited:
    Python leaves SIGINT ignored when it started ignored (a job a script put in the
    background), and such a process would never stop on Ctrl-C."""
    stop = threading.Event()

    def stopping(*_: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stopping)
    return run(stop)


def _print(text: str) -> None:
    from tripwire.cli import console

    console.print(text)


@actions_app.command("resume")
def actions_resume(
    limit: str = typer.Argument(..., help="a limit's id (every scope of it, as `tripwire "
                                "actions status` shows) or one scope (LIMIT:subject)"),
    reason: str = typer.Option(..., "--reason", help="why (goes to the audit trail)"),
) -> None:
    """Apply what a tripped rate limit holds, each action once, in order (role:
    engineer or approver)."""
    from tripwire.streams.apply import REQUESTS_PARTITION, RESUME

    ctx = _Context()
    ctx.authorise(RESUME, limit, reason)
    rec = ctx.audit(RESUME, limit, reason)
    # the command takes its place in the applier's one order of requests
    ctx.producer.send(ctx.topic("action_requests"), AUDIT_SCHEMA, rec, limit,
                      partition=REQUESTS_PARTITION)
    ctx.producer.flush()
    _print(f"resume of {limit} sent by {ctx.user} (audited); the applier applies what it "
           "holds in order, each action once")


@actions_app.command("status")
def actions_status() -> None:
    """Actions per type and status, what each tripped limit holds, and the ops alerts."""
    ctx = _Context()
    final: dict[str, dict[str, Any]] = {}
    for r in ctx.read("actions"):
        final[r["action_id"]] = r
    by = Counter((r["action"], r["status"]) for r in final.values())
    for (action, status), n in sorted(by.items()):
        _print(f"{action:24} {status:13} {n}")
    held = Counter((r["detail"] or "").split(" (")[0] for r in final.values()
                   if r["status"] == "RATE_LIMITED")
    for why, n in sorted(held.items()):
        _print(f"[yellow]{n} held: {why}[/yellow]")
    for a in ctx.read("ops_alerts")[-5:]:
        _print(f"[dim]{a['kind']} {a['subject']}: {a['summary']}[/dim]")


def _control(action: str, reason: str, key: bytes | None = None) -> None:
    """Flip a pause switch (customer alerts by default, or a sink's)."""
    from tripwire.connectors.control_watch import CONTROL_KEY

    key = key or CONTROL_KEY
    ctx = _Context()
    ctx.authorise(action, key.decode(), reason)
    rec = ctx.audit(action, key.decode(), reason)
    ctx.producer.send(ctx.topic("alert_control"), AUDIT_SCHEMA, rec, key)
    ctx.producer.flush()
    _print(f"{key.decode()} {'paused' if action.endswith('.pause') else 'resumed'} by "
           f"{ctx.user} (audited); every worker honouring it sees it within a second")


@alerts_app.command("pause")
def alerts_pause(reason: str = typer.Option(..., "--reason")) -> None:
    """Hold every customer alert (none is lost; role: engineer)."""
    _control("alerts.pause", reason)


@alerts_app.command("resume")
def alerts_resume(reason: str = typer.Option(..., "--reason")) -> None:
    """Send what is held: fresh alerts as they are, stale ones by TRIPWIRE_ALERT_ON_STALE
    (role: engineer or approver)."""
    _control("alerts.resume", reason)


@alerts_app.command("status")
def alerts_status() -> None:
    """Paused or not (by whom, why), alerts waiting, and how alerts ended."""
    from confluent_kafka import TopicPartition

    from tripwire.connectors.control_watch import CONTROL_KEY, paused_state
    from tripwire.connectors.events import read_to_end
    from tripwire.connectors.kafka import consumer, watermarks

    ctx = _Context()
    pause = None
    for m in read_to_end(ctx.bootstrap, ctx.topic("alert_control")):
        if m.key() == CONTROL_KEY:
            pause = paused_state(ctx.codec, m.value())
    name = ctx.topic("customer_alerts")
    c = consumer(ctx.bootstrap, f"{ctx.ns}alert-sender")
    try:
        parts = [TopicPartition(name, p) for p in c.list_topics(name, timeout=30)
                 .topics[name].partitions]
        done = {t.partition: t.offset for t in c.committed(parts, timeout=30)}
        waiting = sum(watermarks(c, tp)[1] - max(done[tp.partition], 0)
                      for tp in parts)
    finally:
        c.close()
    ended = Counter(d["status"] for d in ctx.read("alert_deliveries"))
    state = (f"[red]PAUSED[/red] by {pause['actor']} at {pause['at']}: {pause['reason']}"
             if pause else "[green]sending[/green]")
    _print(f"customer alerts: {state}")
    _print(f"waiting: {waiting}   " + "   ".join(f"{k.lower()}: {v}"
                                                 for k, v in sorted(ended.items())))


@alerts_app.command("send")
def alerts_send(
    gateway: str = typer.Option("", help="the gateway URL [default: "
                                "TRIPWIRE_ALERT_GATEWAY_URL]"),
    metrics_port: int | None = typer.Option(None, help="serve Prometheus metrics here "
                                            "(/metrics) [default: TRIPWIRE_METRICS_PORT]"),
) -> None:
    """Run a customer-alert sender until SIGTERM/Ctrl-C (several share the work)."""

    from tripwire.connectors.alert_sender import AlertSender, SenderConfig
    from tripwire.streams.topics import topic

    ctx = _Context()
    url = gateway or ctx.settings.alert_gateway_url
    if not url:
        raise TripwireError("no gateway: pass --gateway or set TRIPWIRE_ALERT_GATEWAY_URL")
    s = ctx.settings
    sender = AlertSender(ctx.bootstrap, lambda k: topic(k, ctx.ns), ctx.codec, SenderConfig(
        url, give_up_after_s=s.alert_give_up_minutes * 60,
        stale_after_ms=int(s.alert_stale_minutes * 60_000), on_stale=s.alert_on_stale),
        f"{ctx.ns}alert-sender")
    port = metrics_port if metrics_port is not None else s.metrics_port
    if port is not None:
        from tripwire.connectors.metrics import SenderCollector, serve

        served = serve(port, SenderCollector(lambda: sender.stats,
                                             lambda: sender.control.pause is not None))
        _print(f"metrics on :{served}/metrics")
    stats = _until_signalled(sender.run)
    _print(f"alerts: {dict(stats.outcomes)}, {stats.attempts} attempts, "
           f"{stats.failures} failed and tried again")


@alerts_app.command("replay-dead")
def alerts_replay_dead(reason: str = typer.Option(..., "--reason")) -> None:
    """Send every dead-lettered alert again (same ids: the gateway keeps one of each;
    role: engineer)."""
    from tripwire.connectors.events import read_to_end

    ctx = _Context()
    ctx.authorise("alerts.replay-dead", "customer_alerts_dead", reason)
    dead = read_to_end(ctx.bootstrap, ctx.topic("customer_alerts_dead"))
    for m in dead:
        ctx.producer.send_raw(ctx.topic("customer_alerts"), m.value(), m.key())
    ctx.audit("alerts.replay-dead", "customer_alerts_dead", reason, count=len(dead))
    ctx.producer.flush()
    _print(f"{len(dead)} dead-lettered alert(s) sent again (audited)")


@sink_app.command("run")
def sink_run(
    topic_key: str = typer.Argument(..., help="a declared topic's key: ops_alerts, "
                                    "soc_alerts, actions, audit, ..."),
    webhook: str = typer.Option("", help="POST each record (JSON) here"),
    file: str = typer.Option("", help="append each record here, one JSON line each"),
    group: str = typer.Option("", help="the consumer group [default: tripwire.sink.TOPIC]"),
) -> None:
    """Forward every record of a topic until SIGTERM/Ctrl-C, at least once, each with
    its id as the idempotency key; a receiver that is down holds the sink, none is
    skipped (`tripwire sink run actions --webhook URL` is the action executor: each
    block, hold and undo retried until the bank's system takes it)."""
    from pathlib import Path

    from tripwire.connectors.sinks import Sink

    ctx = _Context()
    try:
        sink = Sink(ctx.bootstrap, ctx.topic(topic_key), ctx.codec,
                    _group(group or f"tripwire.sink.{topic_key}"), webhook=webhook or None,
                    file=Path(file) if file else None,
                    control_topic=ctx.topic("alert_control"))
    except (KeyError, ValueError) as exc:
        raise TripwireError(str(exc)) from exc
    stats = _until_signalled(sink.run)
    _print(f"{stats.delivered} delivered, {stats.refused} refused for good, "
           f"{stats.unreadable} unreadable")


audit_app = typer.Typer(help="The audit trail: hash-chained, append-only.",
                        no_args_is_help=True)


@audit_app.command("verify")
def audit_verify(topic_key: str = typer.Option("audit", "--topic", help="a topic key, or a "
                                               "full topic name holding a copy")) -> None:
    """Check every audit record's hash and chain: an edited record, or one taken out
    of the chain, is named with its offset; exits 1 when any is found."""
    from tripwire.connectors.events import read_to_end
    from tripwire.schemas.audit import verify

    ctx = _Context()
    try:
        name = ctx.topic(topic_key)
    except KeyError:
        name = topic_key
    records = [ctx.codec.decode(m.value())[1] for m in read_to_end(ctx.bootstrap, name)]
    v = verify(records)
    by_worker = v.records - v.unsealed - v.chained
    _print(f"{v.records} audit records: {v.chained} chained, {by_worker} sealed by a worker, "
           f"{v.unsealed} from before the chain")
    for p in v.problems:
        _print(f"[red]{p}[/red]")
    if v.problems:
        raise typer.Exit(1)
    _print("[green]the audit trail is intact[/green]")


def override(
    event_id: str = typer.Argument(..., help="the decided event"),
    to: str = typer.Option(..., "--to", help="the outcome it should have had: ALLOW, "
                           "STEP_UP, MANUAL_REVIEW or DENY"),
    reason: str = typer.Option(..., "--reason", help="why (goes to the audit trail)"),
    actions: str = typer.Option("", help="the actions of the new outcome (comma list, e.g. "
                                "BLOCK_CARD,CUSTOMER_ALERT); ALLOW undoes the decision's"),
) -> None:
    """Overturn a decision (role: analyst or approver): ALLOW undoes what its actions
    did (a block lifted, funds released; an alert sent stays sent); a stricter
    outcome carries out the actions given. Sent twice, it is applied once."""
    import hashlib

    from tripwire.controls.actions import ACTIONS, requests_of
    from tripwire.controls.results import OUTCOMES
    from tripwire.streams.apply import OVERRIDE, REQUESTS_PARTITION

    if to not in OUTCOMES:
        raise TripwireError(f"--to: one of {', '.join(OUTCOMES)}")
    wanted = [a.strip() for a in actions.split(",") if a.strip()]
    if set(wanted) - set(ACTIONS):
        raise TripwireError(f"--actions: unknown {sorted(set(wanted) - set(ACTIONS))}; "
                            f"actions: {', '.join(ACTIONS)}")
    if to == "ALLOW" and wanted:
        raise TripwireError("--to ALLOW carries out no action")
    ctx = _Context()
    decisions = [d for d in ctx.read("decisions") if d["event_id"] == event_id]
    if not decisions:
        raise TripwireError(f"no decision for event {event_id}")
    decision = decisions[0]  # repeats carry the first decision
    ctx.authorise(OVERRIDE, decision["decision_id"], reason)
    oid = hashlib.sha256(f"{decision['decision_id']}|{to}|{','.join(wanted)}".encode()) \
        .hexdigest()[:32]
    details = {
        "to": to, "from": decision["outcome"], "event_id": event_id,
        "undo": requests_of(decision) if to == "ALLOW" else [],
        "do": requests_of({**decision, "decision_id": f"override:{oid}", "actions": wanted}),
    }
    rec = ctx.audit(OVERRIDE, decision["decision_id"], reason, override_id=oid, to=to,
                    actions=",".join(wanted))
    ctx.producer.send(ctx.topic("action_requests"), AUDIT_SCHEMA, {
        **rec, "audit_id": oid, "details_json": orjson.dumps(details).decode()},
        decision["decision_id"], partition=REQUESTS_PARTITION)
    ctx.producer.flush()
    _print(f"decision {decision['decision_id']} ({decision['outcome']}) overridden to {to} by "
           f"{ctx.user} (audited); the applier "
           + ("undoes its actions" if to == "ALLOW" else f"carries out {', '.join(wanted)}"))


@sink_app.command("pause")
def sink_pause(group: str = typer.Argument(..., help="the sink's group (default: "
                                           "tripwire.sink.TOPIC)"),
               reason: str = typer.Option(..., "--reason")) -> None:
    """Stop a sink sending — a retry loop that misbehaves — holding where it is
    (role: engineer)."""
    from tripwire.connectors.control_watch import sink_control_key

    _control("sink.pause", reason, sink_control_key(_group(group)))


@sink_app.command("resume")
def sink_resume(group: str = typer.Argument(...),
                reason: str = typer.Option(..., "--reason")) -> None:
    """Let a paused sink send again (role: engineer)."""
    from tripwire.connectors.control_watch import sink_control_key

    _control("sink.resume", reason, sink_control_key(_group(group)))


def _group(group: str) -> str:
    """A sink's group as `sink run` names it (the namespace in front)."""
    ns = Settings().topic_namespace
    return group if not ns or group.startswith(ns) else f"{ns}{group}"
