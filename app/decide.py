"""`tripwire decide`: the inline decide API (``POST /v1/decide``)."""

from __future__ import annotations

import os
import tempfile

import typer

from tripwire.config import Settings
from tripwire.errors import TripwireError

__all__ = ["decide_app"]

decide_app = typer.Typer(help="The inline decide API: an answer within a deadline, the "
                         "stand-in past it.", no_args_is_help=True)


@decide_app.command("serve")
def decide_serve(
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8081),
    workers: int = typer.Option(2, min=1, max=64, help="uvicorn worker processes (each "
                                "with its own reply consumer and answers reader)"),
) -> None:
    """Serve POST /v1/decide, GET /metrics and /healthz (keys from TRIPWIRE_INGEST_KEYS;
    deadlines from TRIPWIRE_DECIDE_DEADLINES, the stand-in from TRIPWIRE_DECIDE_STAND_IN).
    The reconcile stage (`tripwire run stage reconcile`) sets late decisions beside
    their stand-ins."""
    import uvicorn

    from tripwire.cli import _bootstrap, err_console
    from tripwire.connectors.http_ingest import parse_keys
    from tripwire.controls.standin import DEFAULT_STAND_IN, StandInPolicy, parse_deadlines

    settings = Settings()
    if not settings.ingest_keys:
        raise TripwireError("set TRIPWIRE_INGEST_KEYS (key-id:secret[,key-id:secret...])")
    try:
        keys = parse_keys(settings.ingest_keys)
        deadlines = parse_deadlines(settings.decide_deadlines)
        StandInPolicy.parse(settings.decide_stand_in or DEFAULT_STAND_IN)
    except ValueError as exc:
        raise TripwireError(str(exc)) from None
    # the workers are processes: they read the broker and their settings from here
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = _bootstrap(settings)
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tripwire-metrics-")
    err_console.print(f"decide on http://{host}:{port}/v1/decide, {workers} worker(s), keys "
                      f"{sorted(keys)}, deadlines "
                      f"{', '.join(f'{k} {v} ms' for k, v in sorted(deadlines.items()))}")
    uvicorn.run("tripwire.connectors.decide_api:from_environment", factory=True, host=host,
                port=port, workers=workers, log_level="warning")
