"""`tripwire tail` and `tripwire export`: the topics tripwire writes, for analysts,
decoded (Avro single-object and Confluent wire format alike), filtered, as a
table, as JSON Lines or as Parquet."""

from __future__ import annotations

import datetime as dt
import re
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import typer
from rich.console import Console

from tripwire.config import Settings
from tripwire.errors import TripwireError

__all__ = ["dashboard", "export", "matches", "parse_where", "tail"]

console = Console()
err_console = Console(stderr=True)

# what a table shows of a record, by default, per schema
_COLUMNS = {
    "tripwire.decisions.Decision": ("event_time", "event_type", "entity_key", "outcome",
                                    "actions", "typology"),
    "tripwire.ops.QuarantineRecord": ("quarantined_at", "stage", "source_topic", "reasons"),
    "tripwire.actions.ActionRequest": ("requested_at", "action", "target", "status",
                                       "typology"),
    "tripwire.alerts.CustomerAlert": ("event_time", "account_id", "channel", "message"),
    "tripwire.alerts.SystemicAttackAlert": ("at", "state", "summary"),
}
_WHERE = re.compile(r"^([A-Za-z_][\w.]*)(!=|=)(.*)$")


def parse_where(terms: list[str]) -> list[tuple[str, bool, str]]:
    """``field=value`` / ``field!=value`` (dotted for nested fields:
    ``features.card_auths_1h=3``) → (path, equal, value).

    >>> parse_where(["outcome=DENY", "actions!=BLOCK_CARD"])
    [('outcome', True, 'DENY'), ('actions', False, 'BLOCK_CARD')]
    """
    out = []
    for term in terms:
        m = _WHERE.match(term)
        if m is None:
            raise TripwireError(f"--where {term!r}: expected FIELD=VALUE or FIELD!=VALUE")
        out.append((m[1], m[2] == "=", m[3]))
    return out


def _get(rec: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(rec, dict):
            return None
        rec = rec.get(part)
    return rec


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def matches(rec: dict[str, Any], where: list[tuple[str, bool, str]]) -> bool:
    """Whether ``rec`` passes every term: a value equals as text (``true``/``false``
    for booleans, empty for null); a list matches when any of its items does.

    >>> matches({"outcome": "DENY", "actions": ["BLOCK_CARD"]},
    ...         parse_where(["outcome=DENY", "actions=BLOCK_CARD"]))
    True
    """
    for path, equal, want in where:
        got = _get(rec, path)
        values = got if isinstance(got, list) else [got]
        hit = any(_text(v) == want for v in values)
        if hit != equal:
            return False
    return True


def _since(text: str, now_ms: int) -> int | None:
    if not text:
        return None
    from tripwire.features.spec import parse_duration

    try:
        return now_ms - parse_duration(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise TripwireError(f"{text!r} is neither a duration (10m, 2h, 1d) nor an ISO time "
                            "(2026-12-03T09:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def _readable(rec: dict[str, Any], kinds: dict[str, str]) -> dict[str, Any]:
    """Timestamps and dates as ISO text, as the sender wrote them; bytes as text."""
    out = {}
    for k, v in rec.items():
        if isinstance(v, int) and not isinstance(v, bool) and kinds.get(k) == "timestamp":
            v = dt.datetime.fromtimestamp(v / 1000, dt.UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z")
        elif isinstance(v, int) and kinds.get(k) == "date":
            v = (dt.date(1970, 1, 1) + dt.timedelta(days=v)).isoformat()
        elif isinstance(v, bytes):
            v = v.decode("utf-8", "backslashreplace")
        out[k] = v
    return out


def _resolve(name: str, ns: str) -> str:
    from tripwire.streams.topics import declared, topic

    keys = {t.key for t in declared()}
    if name in keys:
        return topic(name, ns)
    by_name = {t.name: t.key for t in declared()}
    if name in by_name:
        return topic(by_name[name], ns)
    return name


class _Decoded:
    """Messages of one topic decoded, with their logical types (per writer schema)."""

    def __init__(self, codec: Any) -> None:
        from tripwire.connectors.export import logical_types

        self.codec, self.logical_types = codec, logical_types
        self.kinds: dict[str, dict[str, str]] = {}

    def __call__(self, value: bytes | None) -> tuple[str, dict[str, Any], dict[str, str]]:
        schema, rec = self.codec.decode(value)
        kinds = self.kinds.get(schema.name)
        if kinds is None:
            kinds = self.kinds[schema.name] = self.logical_types(schema.source)
        return schema.name, rec, kinds


def tail(
    name: str = typer.Argument(..., help="a topic: its key (decisions, quarantine, "
                               "actions, ...) or its full name"),
    where: list[str] = typer.Option([], "--where", "-w", help="FIELD=VALUE or FIELD!=VALUE "
                                    "(dotted for nested fields; repeat to AND)"),
    last: int = typer.Option(20, "--last", "-n", min=0, help="the newest N that match (0: "
                             "every one)"),
    since: str = typer.Option("", "--since", help="from this record time: 10m, 2h, 1d or "
                              "an ISO time (default: the whole topic)"),
    follow: bool = typer.Option(False, "--follow", "-f", help="then go on printing what "
                                "arrives, until Ctrl-C"),
    as_json: bool = typer.Option(False, "--json", help="JSON Lines, every field"),
    fields: str = typer.Option("", "--fields", help="the table's columns, comma-separated"),
) -> None:
    """Records of a topic, decoded and filtered: a table or JSON Lines, up to now or
    following."""
    from rich.table import Table

    from tripwire.cli import _bootstrap
    from tripwire.connectors.events import scan
    from tripwire.schemas.codec import AvroCodec

    settings = Settings()
    bootstrap, ns = _bootstrap(settings), settings.topic_namespace
    full = _resolve(name, ns)
    terms = parse_where(where)
    decode = _Decoded(AvroCodec.from_url(settings.schema_registry_url))
    undecodable = 0

    ends: dict[int, int] = {}  # where the pass up to now ended: --follow goes on there

    def rows(follow_until: threading.Event | None = None) \
            -> Iterator[tuple[Any, str, dict[str, Any], dict[str, str]]]:
        nonlocal undecodable
        start = _since(since, int(time.time() * 1000))
        try:
            found = scan(bootstrap, full, since_ms=start, follow=True, starts=dict(ends),
                         stop=follow_until.is_set) if follow_until is not None \
                else scan(bootstrap, full, since_ms=start, ends_out=ends)
            for m in found:
                try:
                    schema, rec, kinds = decode(m.value())
                except Exception:
                    undecodable += 1
                    continue
                if matches(rec, terms):
                    yield m, schema, rec, kinds
        except KeyError:
            raise TripwireError(f"no topic {full!r} (tripwire topics list)") from None

    def out_json(m: Any, rec: dict[str, Any], kinds: dict[str, str]) -> None:
        line = {"_partition": m.partition(), "_offset": m.offset(), **_readable(rec, kinds)}
        sys.stdout.write(orjson.dumps(line, default=str).decode() + "\n")
        sys.stdout.flush()

    def columns(schema: str, rec: dict[str, Any]) -> list[str]:
        if fields:
            return [f.strip() for f in fields.split(",") if f.strip()]
        default = _COLUMNS.get(schema)
        if default:
            return list(default)
        return [k for k, v in rec.items() if not isinstance(v, (dict, list, bytes))][:6]

    def cell(value: Any) -> str:
        if isinstance(value, list):
            return ",".join(_cell_item(v) for v in value)
        if isinstance(value, dict):
            return orjson.dumps(value, default=str).decode()
        return _text(value)

    def line(m: Any, schema: str, rec: dict[str, Any], kinds: dict[str, str]) -> None:
        if as_json:
            out_json(m, rec, kinds)
            return
        readable = _readable(rec, kinds)
        console.print("  ".join(cell(readable.get(c)) for c in columns(schema, rec)),
                      markup=False, highlight=False, soft_wrap=True)

    if follow:
        from tripwire.outcomes import _until_signalled

        for item in _newest(rows(), last):
            line(*item)

        def follow_on(stop: threading.Event) -> None:
            # Ctrl-C or a TERM ends the scan between two polls (0.2 s), which closes its
            # consumer: no KeyboardInterrupt unwinding through the client's calls
            for item in rows(stop):
                line(*item)

        _until_signalled(follow_on)
        return
    found = _newest(rows(), last)
    if as_json:
        for m, _, rec, kinds in found:
            out_json(m, rec, kinds)
    elif found:
        cols = columns(found[0][1], found[0][2])
        table = Table(title=f"{full}: {len(found)} record(s)"
                      + (f" matching {' and '.join(where)}" if where else ""))
        for c in cols:
            table.add_column(c, overflow="fold")
        for _, _, rec, kinds in found:
            readable = _readable(rec, kinds)
            table.add_row(*(cell(readable.get(c)) for c in cols))
        console.print(table)
    else:
        err_console.print(f"{full}: nothing" + (f" matching {' and '.join(where)}"
                                                if where else ""))
    if undecodable:
        err_console.print(f"[yellow]{undecodable} record(s) that are not tripwire's Avro "
                          "were skipped[/yellow]")


def _newest(items: Iterator[tuple[Any, ...]], last: int) -> list[tuple[Any, ...]]:
    """The newest ``last`` items (0: all) across partitions, by record time, oldest
    first (a topic is in order per partition only)."""
    per: dict[int, deque[tuple[Any, ...]]] = {}
    for item in items:
        per.setdefault(item[0].partition(), deque(maxlen=last or None)).append(item)
    merged = sorted((i for q in per.values() for i in q),
                    key=lambda i: (i[0].timestamp()[1], i[0].partition(), i[0].offset()))
    return merged[-last:] if last else merged


def _cell_item(v: Any) -> str:
    if isinstance(v, dict):  # a nested record: its most telling field
        for k in ("code", "control_id", "action", "name"):
            if k in v:
                return _text(v[k])
        return orjson.dumps(v, default=str).decode()
    return _text(v)


def export(
    out: Path = typer.Option(Path("export"), "--out", help="the folder (one sub-folder per "
                             "topic, one per day)"),
    topics: str = typer.Option("decisions,control_executions,actions,quarantine", "--topics",
                               help="topic keys or full names, comma-separated"),
    since: str = typer.Option("", "--since", help="from this record time: 10m, 2h, 1d or "
                              "an ISO time (default: the start)"),
    until: str = typer.Option("", "--until", help="up to this record time (default: now)"),
    from_offset: int | None = typer.Option(None, "--from-offset", min=0,
                                           help="from this offset of every partition"),
    to_offset: int | None = typer.Option(None, "--to-offset", min=0,
                                         help="up to this offset (exclusive)"),
) -> None:
    """Decision, execution, action and quarantine topics (a time range or offsets) to
    Parquet, for DuckDB, pandas or Spark."""
    from tripwire.cli import _bootstrap
    from tripwire.connectors.events import scan
    from tripwire.connectors.export import Exported, write_partitioned
    from tripwire.schemas.codec import AvroCodec

    settings = Settings()
    bootstrap, ns = _bootstrap(settings), settings.topic_namespace
    now = int(time.time() * 1000)
    start, end = _since(since, now), _since(until, now)
    decode = _Decoded(AvroCodec.from_url(settings.schema_registry_url))
    done = Exported()
    run = uuid.uuid4().hex[:8]
    skipped = 0
    for key in [t.strip() for t in topics.split(",") if t.strip()]:
        full = _resolve(key, ns)
        rows: list[dict[str, Any]] = []
        kinds: dict[str, str] = {}
        try:
            for m in scan(bootstrap, full, since_ms=start, until_ms=end,
                          from_offset=from_offset, to_offset=to_offset):
                try:
                    _, rec, kinds_ = decode(m.value())
                except Exception:
                    skipped += 1
                    continue
                kinds = kinds or kinds_
                rows.append({"_topic": m.topic(), "_partition": m.partition(),
                             "_offset": m.offset(), "_timestamp": m.timestamp()[1], **rec})
                if len(rows) >= 100_000:  # files of a bounded size, memory too
                    write_partitioned(out, key, rows, kinds, done, run)
                    rows = []
        except KeyError:
            raise TripwireError(f"no topic {full!r} (tripwire topics list)") from None
        write_partitioned(out, key, rows, kinds, done, run)
        err_console.print(f"{full}: {done.rows.get(key, 0)} records")
    console.print(f"{sum(done.rows.values())} records in {len(done.files)} Parquet files "
                  f"under {out}/" + (f"; {skipped} undecodable record(s) skipped"
                                     if skipped else ""))
    if done.files:
        first = next(iter(done.rows))
        console.print(f"try: duckdb -c \"SELECT count(*) FROM '{out}/{first}/**/*.parquet'\"")


def dashboard(
    host: str = typer.Option("127.0.0.1", help="where to listen"),
    port: int = typer.Option(8090, help="the port (0: any free one)"),
    metrics: str = typer.Option("", "--metrics", help="the workers' metrics URLs, "
                                "comma-separated (http://host:9464/metrics): lag and "
                                "events per second"),
    lookback: str = typer.Option("6h", "--lookback", help="read the topics from this long "
                                 "ago (10m, 6h, 1d)"),
) -> None:
    """A live page: throughput and lag, the decision mix, customer alerts per 10 minutes
    against the baseline with the pause marked, SOC alerts, top rule hits, quarantine
    reasons."""
    import uvicorn

    from tripwire.cli import _bootstrap
    from tripwire.connectors.dashboard import Feed, create_app
    from tripwire.schemas.codec import AvroCodec
    from tripwire.streams.topics import topic

    settings = Settings()
    bootstrap, ns = _bootstrap(settings), settings.topic_namespace
    now = int(time.time() * 1000)
    since = _since(lookback, now)
    assert since is not None
    feed = Feed(bootstrap, lambda k: topic(k, ns), AvroCodec.from_url(
        settings.schema_registry_url), [u.strip() for u in metrics.split(",") if u.strip()],
        lookback_ms=now - since).start()
    config = uvicorn.Config(create_app(feed), host=host, port=port, log_level="warning")
    server = uvicorn.Server(config)
    err_console.print(f"dashboard on http://{host}:{port}/ (reading {bootstrap}, namespace "
                      f"{ns!r}); Ctrl-C stops it")
    try:
        server.run()
    finally:
        feed.close()
