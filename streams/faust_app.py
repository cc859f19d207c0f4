"""faust-streaming apps for the lower-rate services (applier, monitor, alert sender,
control plane). Agents stay thin: decode, call a pure function, produce.

The relay below is the smallest such service: it forwards every message from one
topic to another. Tests and the benchmark run it to prove and measure faust
against the same broker as the hot path:

    python -m tripwire.streams.faust_app relay --bootstrap 127.0.0.1:9092 \
        --source in.topic --sink out.topic --app-id relay-1
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

import faust

__all__ = ["make_app", "relay_app"]

logger = logging.getLogger(__name__)


def make_app(app_id: str, bootstrap: str, *, data_dir: Path | None = None,
             **overrides: Any) -> faust.App:
    """A faust app configured the tripwire way: at-least-once, no web server by default."""
    brokers = [f"kafka://{b.strip()}" for b in bootstrap.split(",")]
    data_dir = data_dir or Path(tempfile.gettempdir()) / "tripwire-faust" / app_id
    data_dir.mkdir(parents=True, exist_ok=True)
    conf: dict[str, Any] = {
        "broker": brokers,
        "datadir": str(data_dir),
        "store": "memory://",
        "web_enabled": False,
        "consumer_auto_offset_reset": "earliest",
        "topic_allow_declare": True,
        "topic_disable_leader": True,
        "broker_commit_every": 1000,
        "broker_commit_interval": 0.5,
        "value_serializer": "raw",
        "key_serializer": "raw",
    }
    conf.update(overrides)
    return faust.App(app_id, **conf)


def relay_app(app_id: str, bootstrap: str, source: str, sink: str) -> faust.App:
    app = make_app(app_id, bootstrap)
    src = app.topic(source, value_type=bytes, key_type=bytes)
    dst = app.topic(sink, value_type=bytes, key_type=bytes)

    @app.agent(src)
    async def relay(stream: Any) -> None:
        async for key, value in stream.items():
            await dst.send(key=key, value=value)

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tripwire.streams.faust_app")
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("relay", help="forward every message from --source to --sink")
    r.add_argument("--bootstrap", required=True)
    r.add_argument("--source", required=True)
    r.add_argument("--sink", required=True)
    r.add_argument("--app-id", required=True)
    r.add_argument("--loglevel", default="WARNING")
    args = parser.parse_args(argv)
    app = relay_app(args.app_id, args.bootstrap, args.source, args.sink)
    worker = faust.Worker(app, loglevel=args.loglevel, quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
