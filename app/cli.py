"""The `tripwire` command line."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from tripwire.analyst import dashboard, export, tail
from tripwire.backtests import backtest, simulate
from tripwire.broker import LocalBroker
from tripwire.cases import cases_app
from tripwire.config import Settings
from tripwire.decide import decide_app
from tripwire.errors import TripwireError
from tripwire.monitoring import monitor_app
from tripwire.outcomes import actions_app, alerts_app, audit_app, override, sink_app

__all__ = ["app", "main"]

app = typer.Typer(help="tripwire: real-time fraud and financial-crime pipeline on Kafka.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
broker_app = typer.Typer(help="The local Apache Kafka broker (no Docker needed).",
                         no_args_is_help=True)
topics_app = typer.Typer(help="The declared topics.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")
app.add_typer(topics_app, name="topics")
app.add_typer(actions_app, name="actions")
app.add_typer(alerts_app, name="alerts")
app.add_typer(sink_app, name="sink")
app.add_typer(cases_app, name="cases")
app.add_typer(audit_app, name="audit")
app.add_typer(monitor_app, name="monitor")
app.add_typer(decide_app, name="decide")
app.command("override")(override)
app.command("backtest")(backtest)
app.command("simulate")(simulate)
app.command("tail")(tail)
app.command("export")(export)
app.command("dashboard")(dashboard)

# Wide enough for the decision tables when output is a file or a CI log.
console = Console(width=None if sys.stdout.isatty() else 170)
err_console = Console(stderr=True)


def _local_broker(settings: Settings) -> LocalBroker:
    return LocalBroker(settings.state_dir / "broker", settings.cache_dir,
                       port=settings.broker_port, heap=settings.broker_heap)


def _bootstrap(settings: Settings) -> str:
    if settings.kafka_bootstrap_servers:
        return settings.kafka_bootstrap_servers
    status = _local_broker(settings).status()
    if status.running and status.info:
        return status.info.bootstrap
    raise TripwireError("no Kafka: set KAFKA_BOOTSTRAP_SERVERS or run `tripwire broker start`")


@broker_app.command("start")
def broker_start() -> None:
    """Start the local broker (fetching Kafka's jars on first use) and print its address."""
    settings = Settings()
    broker = _local_broker(settings)
    t0 = time.monotonic()
    info = broker.start(say=lambda m: err_console.print(f"[dim]{m}[/dim]"))
    err_console.print(f"Apache Kafka {info.version} answering on {info.bootstrap} "
                      f"(pid {info.pid}, {time.monotonic() - t0:.1f}s); log: {broker.log_path}")
    console.print(info.bootstrap)


@broker_app.command("stop")
def broker_stop() -> None:
    """Stop the local broker."""
    stopped = _local_broker(Settings()).stop()
    console.print("stopped" if stopped else "no broker was running")


@broker_app.command("status")
def broker_status() -> None:
    """Tell whether the local broker runs and answers (exit 1 when it does not)."""
    st = _local_broker(Settings()).status()
    where = f" {st.info.bootstrap} pid {st.info.pid}" if st.info and st.running else ""
    console.print(f"{'running' if st.running else 'stopped'}{where}: {st.detail}")
    raise typer.Exit(0 if st.running and st.answering else 1)


@broker_app.command("logs")
def broker_logs(lines: int = typer.Option(40, help="how many lines")) -> None:
    """Print the end of the local broker's log."""
    path = _local_broker(Settings()).log_path
    if not path.exists():
        raise TripwireError(f"no log yet at {path}")
    console.print("\n".join(path.read_text(errors="replace").splitlines()[-lines:]),
                  markup=False, highlight=False)


@topics_app.command("create")
def topics_create(partitions: int = typer.Option(0, help="override every topic's count"))\
        -> None:
    """Create every declared topic that is missing (idempotent); an entity's own
    feature topic only when TRIPWIRE_NODES_APART names it."""
    from tripwire.streams.topics import create_topics, declared

    settings = Settings()
    result = create_topics(_bootstrap(settings), settings.topic_namespace,
                           declared(settings.apart()), partitions=partitions or None)
    for name, state in sorted(result.items()):
        console.print(f"{state:8} {name}")


@topics_app.command("list")
def topics_list() -> None:
    """The declared topics and what they carry."""
    from tripwire.streams.topics import TOPICS

    ns = Settings().topic_namespace
    for t in TOPICS:
        extra = t.cleanup if t.cleanup == "compact" else f"retention {t.retention_ms or 'inf'}ms"
        console.print(f"{ns}{t.name:34} {t.partitions:>3}p  {extra:24} {t.purpose}")


run_app = typer.Typer(help="Run a stream processor until stopped (SIGTERM/Ctrl-C).",
                      no_args_is_help=True)
app.add_typer(run_app, name="run")


def _controls_and_sources(directory: Path | None, follow_topic: bool, bootstrap: str,
                          ns: str, codec: Any, remember: int) -> tuple[Any, list[Any]]:
    from tripwire.connectors.control_sources import DirectorySource, TopicSource
    from tripwire.controls.engine import LIBRARY, ControlSet
    from tripwire.controls.results import ControlError
    from tripwire.streams.topics import topic

    try:
        controls = ControlSet.from_dir(directory or LIBRARY).remembering(remember)
    except ControlError as exc:
        raise TripwireError(f"the controls do not load: {exc}") from exc
    sources: list[Any] = [DirectorySource(directory)] if directory else []
    if follow_topic:
        sources.append(TopicSource(bootstrap, topic("controls", ns), codec))
    return controls, sources


def _action_policy(settings: Settings) -> Any:
    from tripwire.controls.actions import ActionPolicy

    try:
        return ActionPolicy.load(settings.action_policy)
    except ValueError as exc:
        raise TripwireError(str(exc)) from exc


STOP_REPORT_S = 20.0


@run_app.command("stage")
def run_stage(
    stages: list[str] = typer.Argument(
        ..., help="intake, features, decide, applier, reconcile (the inline decide API's late "
        "decisions beside their stand-ins), or all (the decision path in one loop unless "
        "--loop-per-stage, the applier and reconcile in others; several stages named run "
        "as threads of one process)"),
    entities: str = typer.Option(
        "", help="features only: serve these nodes apart, from their own topics (comma "
        "list; each must be in TRIPWIRE_NODES_APART, which the intake routes by)"),
    node_timeout_ms: int | None = typer.Option(
        None, help="decide: wait this long (ms) for a feature node before deciding without "
        "it, its error recorded [default: tripwire.streams.hops.NODE_TIMEOUT_MS]"),
    controls_dir: Path | None = typer.Option(
        None, "--controls-dir", help="decide: load the controls from this folder and reload "
        "them when its files change (default: the shipped library)"),
    follow_topic: bool = typer.Option(True, "--follow-controls-topic/--no-follow-controls-topic",
                                      help="decide: apply releases from the controls topic"),
    one_loop: bool | None = typer.Option(
        None, "--one-loop/--loop-per-stage", help="all: every stage in one loop (one "
        "consumer, one transaction, one thread; the default: less CPU and latency, see "
        "docs/performance.md) or a loop per stage. Stop one layout before starting the "
        "other on a namespace: the other starts where it stopped, with its state",
        show_default=False),
    metrics_port: int | None = typer.Option(
        None, help="serve Prometheus metrics here (/metrics; 0: any free port) [default: "
        "TRIPWIRE_METRICS_PORT]"),
) -> None:
    """Run stages of the live decision path until SIGTERM/Ctrl-C.

    One process per stage scales out: more processes, more partitions. The decide
    stage applies control releases between batches (examples first; a broken one
    is refused and audited, the running version stays).
    """
    import faulthandler
    import signal
    import threading

    stopping = threading.Event()  # a SIGTERM while starting up stops as soon as it can
    try:
        sys.stderr.fileno()
        stacks = True  # faulthandler writes to the stderr file
    except (OSError, ValueError):  # io.UnsupportedOperation: stderr is no file (in tests)
        stacks = False
    if stacks:
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: where it is

    def stop_requested(stop: threading.Event) -> None:
        if not stop.is_set() and stacks:
            # a stop takes seconds (every wait is bounded by then): if this process is
            # still here after STOP_REPORT_S, its threads' stacks go to stderr, once
            faulthandler.dump_traceback_later(STOP_REPORT_S, exit=False)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop_requested(stopping))

    from tripwire.features.batch import BatchTable
    from tripwire.features.engine import FeatureLibrary
    from tripwire.schemas.codec import AvroCodec
    from tripwire.streams.hops import NODE_TIMEOUT_MS
    from tripwire.streams.runner import STAGES, Pipeline

    settings = Settings()
    names = [*STAGES, "applier", "reconcile"]
    wanted = names if stages == ["all"] else stages
    unknown = set(wanted) - set(names)
    if unknown:
        raise TripwireError(f"unknown stage(s) {sorted(unknown)}; use {', '.join(names)}, all")
    if one_loop and (stages != ["all"] or entities.strip()):
        raise TripwireError("--one-loop runs every stage, every node on the shared topic: use "
                            "`tripwire run stage all`, without --entities")
    one_loop = stages == ["all"] and not entities.strip() and one_loop is not False
    nodes = [e.strip() for e in entities.split(",") if e.strip()] or None
    apart = settings.apart()
    if nodes and not set(nodes) <= apart:
        raise TripwireError(
            f"--entities {','.join(sorted(set(nodes) - apart))}: not served apart; the "
            "intake sends every entity not in TRIPWIRE_NODES_APART "
            f"(now {','.join(sorted(apart)) or 'empty'}) to the shared feature topic")
    bootstrap, ns = _bootstrap(settings), settings.topic_namespace
    codec = AvroCodec.from_url(settings.schema_registry_url)
    controls, sources = _controls_and_sources(controls_dir, follow_topic and "decide" in wanted,
                                              bootstrap, ns, codec,
                                              settings.controls_remember)
    pipeline = Pipeline.build(
        bootstrap, ns, codec=codec, controls=controls, library=FeatureLibrary(),
        state_dir=settings.state_dir / "stores" / (ns or "default"),
        stages=[s for s in wanted if s in STAGES], applier="applier" in wanted,
        reconcile="reconcile" in wanted,
        policy=_action_policy(settings),
        one_loop=one_loop, entities=nodes, sources=sources, batch_size=settings.batch_size,
        node_timeout_ms=NODE_TIMEOUT_MS if node_timeout_ms is None else node_timeout_ms,
        commit_interval_ms=settings.commit_interval(), eager=settings.delivery == "eager",
        eager_hops=settings.hops == "eager", apart=apart,
        batch=BatchTable(settings.batch_table, settings.batch_refresh_s)
        if settings.batch_table else None,
        isolate_mb=settings.controls_memory_mb if settings.controls_isolated else None,
        session_timeout_ms=settings.session_timeout_ms, tune=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop_requested(pipeline.stop_event))
    if stopping.is_set():
        pipeline.stop_event.set()
    deciding = [s for s in wanted if s in STAGES]
    what = ", ".join(deciding) + (" in one loop" if one_loop else "")
    items = ([what] if deciding else []) + [
        name for s, name in (("applier", "the applier"), ("reconcile", "the reconcile stage"))
        if s in wanted]
    what = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    err_console.print(f"running {what} on {bootstrap} (namespace {ns!r})")
    port = metrics_port if metrics_port is not None else settings.metrics_port
    if port is not None:
        from tripwire.connectors.metrics import PipelineCollector, serve

        served = serve(port, PipelineCollector(lambda: pipeline.loops))
        err_console.print(f"metrics on :{served}/metrics")
    while any(t.is_alive() for t in pipeline.threads):
        pipeline.stop_event.wait(5)
        for name, loop in pipeline.loops.items():
            st = loop.stats
            err_console.print(f"[dim]{name}: {st.consumed} in, "
                              f"{sum(st.produced.values())} out, {st.aborted} aborted[/dim]")
        if pipeline.stop_event.is_set():
            break
    pipeline.stop()
    if pipeline.errors:
        raise TripwireError("stage(s) failed: " + "; ".join(
            f"{name}: {type(exc).__name__}: {exc}" for name, exc in pipeline.errors.items()))


@app.command()
def explain(event_id: str = typer.Argument(..., help="the event id to explain")) -> None:
    """Why was this event decided so? Reads the decision and control executions."""
    import json

    from rich.table import Table

    from tripwire.connectors.events import read_to_end
    from tripwire.schemas.codec import AvroCodec
    from tripwire.streams.topics import topic

    settings = Settings()
    bootstrap, ns = _bootstrap(settings), settings.topic_namespace
    codec = AvroCodec.from_url(settings.schema_registry_url)
    key = event_id.encode()
    decisions = [d for m in read_to_end(bootstrap, topic("decisions", ns))
                 if (d := codec.decode(m.value())[1])["event_id"] == event_id]
    if not decisions:
        raise TripwireError(f"no decision for event {event_id} in {topic('decisions', ns)}")
    d = decisions[0]
    console.print(f"[bold]{d['outcome']}[/bold] {d['event_type']} {event_id} "
                  f"({d['entity_key']}), decision {d['decision_id']}, engine "
                  f"{d['engine_version']}, {d['latency_us'] / 1000:.1f} ms; "
                  f"{len(decisions) - 1} repeat(s) answered the same")
    console.print("actions: " + (", ".join(d["actions"]) or "none"))
    for h in d["rule_hits"]:
        console.print(f"  {h['control_id']}@{h['control_version']} (score {h['score']:.2f}): "
                      f"{h['reason']}")
    if not d["rule_hits"]:
        console.print("  no control objected")
    for what in ("feature_errors", "control_errors"):
        for name, err in d[what].items():
            console.print(f"  [yellow]{what[:-7]} {name}[/]: {err}")
    table = Table(title="features read")
    for col in ("feature", "value", "definition"):
        table.add_column(col)
    for name, value in sorted(d["features"].items()):
        table.add_row(name, json.dumps(value), d["feature_provenance"].get(name, "event"))
    console.print(table)
    for m in read_to_end(bootstrap, topic("control_executions", ns)):
        if m.key() == key:
            for e in codec.decode(m.value())[1]["executions"]:
                console.print(f"{e['stage'].lower()} {e['control_id']}@{e['control_version']}"
                              f" (tier {e['tier']}, {e['mode'].lower()}): "
                              f"{e['output_json'] or e['error']} "
                              + ("remembered (not called)" if e["remembered"]
                                 else f"in {e['duration_us']} µs"),
                              markup=False, highlight=False)


controls_app = typer.Typer(help="The Starlark controls.", no_args_is_help=True)
app.add_typer(controls_app, name="controls")


def _release(kind: str, items: list[tuple[str, str | None]], author: str, reason: str,
             refused: str | None = None) -> None:
    """Publish releases to the controls topic, each with a publish audit record;
    ``refused``: publish nothing, audit the refusal (why) and fail."""
    import socket

    import orjson

    from tripwire.connectors.events import EventProducer, audit_tail
    from tripwire.controls.plane import AUDIT_SCHEMA, RELEASE_SCHEMA, release
    from tripwire.roles import current_user
    from tripwire.schemas.audit import sealed
    from tripwire.schemas.codec import AvroCodec
    from tripwire.streams.topics import topic

    settings = Settings()
    bootstrap, ns = _bootstrap(settings), settings.topic_namespace
    codec = AvroCodec.from_url(settings.schema_registry_url)
    login = current_user()
    who = author or login
    prod = EventProducer(bootstrap, codec)
    now = int(time.time() * 1000)
    # the audit's actor is who ran the command here; --author is what they claimed
    seen = {"login": login, "host": socket.gethostname(), "author": who}
    for cid, source in items:
        if refused is None:
            prod.send(topic("controls", ns), RELEASE_SCHEMA,
                      release(cid, source, who, reason, now, kind), cid)
        prod.send(topic("audit", ns), AUDIT_SCHEMA, sealed({
            "audit_id": f"publish:{cid}:{now}", "at": now, "actor": login,
            "action": f"control.publish.{'refuse' if refused else kind.lower()}",
            "subject": cid, "reason": reason,
            "details_json": orjson.dumps({"source": source, "kind": kind, **seen,
                                          **({"error": refused} if refused else {})}
                                         ).decode()},
            audit_tail(bootstrap, topic("audit", ns), codec)), cid)
        prod.flush()  # the next record chains to this one
    sent = prod.flush()
    if refused is not None:
        raise TripwireError(f"refused: {refused} (audited)")
    console.print(f"{kind.lower()} of {', '.join(c for c, _ in items)} sent to "
                  f"{topic('controls', ns)} ({sent} records); workers apply it between "
                  "batches and audit the result")


@controls_app.command("publish")
def controls_publish(
    paths: list[Path] = typer.Argument(..., help=".star files to release"),
    reason: str = typer.Option(..., "--reason", help="why (goes to the audit trail)"),
    author: str = typer.Option("", "--author", help="who (default: the login name)"),
) -> None:
    """Release controls to every running worker. Each file is compiled and its
    examples run first: a broken one is refused here with the reason."""
    from tripwire.controls.engine import Control
    from tripwire.controls.results import ControlError

    items: list[tuple[str, str | None]] = []
    for path in paths:
        if path.suffix != ".star" or not path.is_file():
            raise TripwireError(f"{path}: not a .star file")
        try:
            Control.checked(path.stem, path.read_text())
        except ControlError as exc:
            _release("RELEASE", [(path.stem, path.read_text())], author, reason, str(exc))
        items.append((path.stem, path.read_text()))
    if _propose(items, reason):
        return
    _release("RELEASE", items, author, reason)


def _propose(items: list[tuple[str, str | None]], reason: str) -> bool:
    """With roles configured, a release needs a second person: propose it (audited)
    instead of publishing; False when roles are not configured (publish now)."""
    import hashlib

    from tripwire.outcomes import _Context
    from tripwire.roles import Roles

    settings = Settings()
    if not Roles.load(settings.roles).configured:
        return False
    ctx = _Context()
    ids = ",".join(c for c, _ in items)
    ctx.authorise("controls.activate", ids, reason)
    for cid, source in items:
        ctx.audit("controls.propose", cid, reason, source=source,
                  sha256=hashlib.sha256((source or "").encode()).hexdigest())
    ctx.producer.flush()
    console.print(f"proposed {ids} (audited); a second person with the approver role "
                  f"releases it: tripwire controls approve ID --reason \"...\"")
    return True


@controls_app.command("approve")
def controls_approve(
    control_id: str = typer.Argument(..., help="a proposed control's id"),
    reason: str = typer.Option(..., "--reason", help="why (goes to the audit trail)"),
) -> None:
    """Release a proposed control: maker-checker, so not by the person who proposed
    it (role: approver)."""
    import orjson

    from tripwire.controls.engine import Control
    from tripwire.controls.results import ControlError
    from tripwire.outcomes import _Context

    ctx = _Context()
    trail = ctx.read("audit")
    proposals = [a for a in trail if a["action"] == "controls.propose"
                 and a["subject"] == control_id]
    if not proposals:
        raise TripwireError(f"no proposal for {control_id} (tripwire controls publish)")
    proposal = proposals[-1]
    if any(a["action"] == "controls.approve" and
           orjson.loads(a["details_json"]).get("proposal") == proposal["audit_id"]
           for a in trail):
        raise TripwireError(f"{control_id}'s latest proposal is already approved")
    if proposal["actor"] == ctx.user:
        ctx.audit("controls.approve.refused", control_id, reason, why="maker-checker",
                  proposal=proposal["audit_id"])
        ctx.producer.flush()
        raise TripwireError(f"refused: {ctx.user} proposed {control_id}; a second person "
                            "approves it (audited)")
    ctx.authorise("controls.approve", control_id, reason)
    source = orjson.loads(proposal["details_json"])["source"]
    try:
        Control.checked(control_id, source)
    except ControlError as exc:
        raise TripwireError(f"the proposal no longer compiles: {exc}") from exc
    ctx.audit("controls.approve", control_id, reason, proposal=proposal["audit_id"],
              proposer=proposal["actor"])
    ctx.producer.flush()
    _release("RELEASE", [(control_id, source)], proposal["actor"], reason)


@controls_app.command("stop")
def controls_stop(
    target: str = typer.Argument(..., help="a control id, or tier:2 for every tier-2 control"),
    reason: str = typer.Option(..., "--reason", help="why (goes to the audit trail)"),
    author: str = typer.Option("", "--author", help="who (default: the login name)"),
) -> None:
    """Emergency stop: workers stop running the control(s) at their next batch."""
    from tripwire.controls.plane import target_error

    _release("STOP", [(target, None)], author, reason, target_error(target))


@controls_app.command("resume")
def controls_resume(
    target: str = typer.Argument(..., help="a control id, or tier:2"),
    reason: str = typer.Option(..., "--reason", help="why (goes to the audit trail)"),
    author: str = typer.Option("", "--author", help="who (default: the login name)"),
) -> None:
    """Undo an emergency stop."""
    from tripwire.controls.plane import target_error

    _release("RESUME", [(target, None)], author, reason, target_error(target))


@controls_app.command("test")
def controls_test(
    directory: Path | None = typer.Option(None, "--dir", help="controls folder "
                                          "(default: the shipped library)"),
) -> None:
    """Compile every control and run its own EXAMPLES; exit 1 on any failure."""
    from rich.table import Table

    from tripwire.controls.engine import LIBRARY, ControlSet
    from tripwire.controls.results import ControlError

    try:
        controls = ControlSet.from_dir(directory or LIBRARY)
    except ControlError as exc:
        raise TripwireError(f"a control does not load: {exc}") from None
    failures = controls.check_examples()
    table = Table(title=f"controls in {directory or LIBRARY}")
    for col in ("control", "version", "applies to", "on error", "examples", "result"):
        table.add_column(col)
    for c in controls.controls:
        bad = [f for f in failures if f.control_id == c.control_id]
        table.add_row(c.control_id, c.version, ", ".join(sorted(c.applies_to)) or "all",
                      c.on_error or "IGNORE", str(len(c.examples)),
                      "[green]pass[/]" if not bad else f"[red]{len(bad)} failed[/]")
    console.print(table)
    for f in failures:
        console.print(f"[red]{f.control_id} example {f.index}:[/] expected {f.expected}, "
                      f"got {f.got}" + (f" ({f.error})" if f.error else ""))
    if failures:
        raise typer.Exit(1)


ingest_app = typer.Typer(help="Signed HTTP ingest for webhooks.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")


@ingest_app.command("serve")
def ingest_serve(host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8080)) -> None:
    """Serve POST /v1/events (keys from TRIPWIRE_INGEST_KEYS)."""
    import uvicorn

    from tripwire.connectors.http_ingest import IngestConfig, create_app, parse_keys
    from tripwire.connectors.sdk import TripwireProducer
    from tripwire.schemas.codec import AvroCodec

    settings = Settings()
    if not settings.ingest_keys:
        raise TripwireError("set TRIPWIRE_INGEST_KEYS (key-id:secret[,key-id:secret...])")
    try:
        keys = parse_keys(settings.ingest_keys)
    except ValueError as exc:
        raise TripwireError(f"TRIPWIRE_INGEST_KEYS: {exc}") from None
    prod = TripwireProducer(_bootstrap(settings), namespace=settings.topic_namespace,
                            codec=AvroCodec.from_url(settings.schema_registry_url))
    app_ = create_app(prod, IngestConfig(keys, tolerance_s=settings.ingest_tolerance_s,
                                         max_body_bytes=settings.ingest_max_body_bytes))
    err_console.print(f"ingest on http://{host}:{port}/v1/events with keys {sorted(keys)}")
    uvicorn.run(app_, host=host, port=port, log_level="warning")


@app.command()
def quarantine(
    limit: int = typer.Option(100_000, help="read at most this many records"),
    show: int = typer.Option(5, help="print the newest N records in full"),
    timeout: float = typer.Option(10.0, help="seconds to wait for records"),
) -> None:
    """Count quarantined messages per stage and reason, and show the newest."""
    from collections import Counter

    from rich.table import Table

    from tripwire.connectors.events import read_topic
    from tripwire.schemas.codec import AvroCodec
    from tripwire.streams.topics import topic

    settings = Settings()
    codec = AvroCodec.from_url(settings.schema_registry_url)
    msgs = read_topic(_bootstrap(settings), [topic("quarantine", settings.topic_namespace)],
                      limit, timeout=timeout)
    records = [codec.decode(m.value())[1] for m in msgs]
    counts: Counter[tuple[str, str, str]] = Counter()
    for r in records:
        for reason in r["reasons"]:
            counts[(r["stage"], reason["code"], reason["field"] or "-")] += 1
    table = Table(title=f"{len(records)} quarantined messages")
    for col in ("stage", "reason", "field", "count"):
        table.add_column(col, justify="right" if col == "count" else "left")
    for (stage, code, field_), n in counts.most_common():
        table.add_row(stage, code, field_, str(n))
    console.print(table)
    for r in records[-show:]:
        reasons = "; ".join(f"{x['code']} {x['field'] or ''}: {x['detail']}"
                            for x in r["reasons"])
        console.print(f"{r['quarantine_id']}  {r['schema_name'] or '?'}  {reasons}",
                      markup=False, highlight=False)


@app.command()
def produce(
    file: Path = typer.Option(..., "--file", "-f", exists=True, dir_okay=False,
                              help="JSON Lines, one event per line with an event_type"),
    refused: Path | None = typer.Option(None, help="where refused lines go "
                                        "(default: FILE.refused.jsonl)"),
) -> None:
    """Validate and publish events from a JSON Lines file, with a summary."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from tripwire.connectors.files import publish_jsonl
    from tripwire.connectors.sdk import TripwireProducer
    from tripwire.schemas.codec import AvroCodec

    settings = Settings()
    prod = TripwireProducer(_bootstrap(settings), namespace=settings.topic_namespace,
                            codec=AvroCodec.from_url(settings.schema_registry_url))
    total = sum(1 for _ in file.open("rb"))
    refused = refused or file.with_suffix(".refused.jsonl")
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(), console=err_console) as bar:
        task = bar.add_task(f"publishing {file.name}", total=total)
        summary = publish_jsonl(file, prod, refused, lambda n: bar.advance(task, n))
    console.print(f"{summary.lines} events: {summary.delivered} accepted by Kafka, "
                  f"{summary.refused} refused, {len(summary.failed)} delivery failures")
    for code, n in summary.reasons.most_common():
        console.print(f"  refused {n:>6}  {code}")
    if summary.refused_path:
        console.print(f"refused lines with their reasons: {summary.refused_path}")
    if summary.refused or summary.failed or summary.delivered != summary.sent:
        raise typer.Exit(1)


@app.command()
def demo(
    normal: int = typer.Option(40, help="everyday card payments"),
    attack: int = typer.Option(10, help="magstripe-contactless payments abroad"),
    keep_broker: bool = typer.Option(False, help="leave the local broker running"),
) -> None:
    """Broker, decision path, simulated traffic and an attack; prints the decisions."""
    from tripwire.demo import run_demo

    result = run_demo(Settings(), console, normal=normal, attack=attack,
                      keep_broker=keep_broker)
    if result.decisions != result.events:
        raise TripwireError(f"{result.events} messages published but only {result.decisions} "
                            "decisions and quarantine records read back")


def main() -> None:
    try:
        level = Settings().log_level
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] invalid configuration: {exc}")
        sys.exit(2)
    # a time on every line: a worker's log is read after the fact, beside the broker's
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tripwire.librdkafka").setLevel(logging.ERROR)
    try:
        app()
    except TripwireError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
