"""One settings object, read from the environment (and an optional `.env` file).

Kafka-wide names follow the ecosystem (`KAFKA_BOOTSTRAP_SERVERS`,
`SCHEMA_REGISTRY_URL`); tripwire's own carry the `TRIPWIRE_` prefix.

>>> Settings(kafka_bootstrap_servers="k1:9092").kafka_bootstrap_servers
'k1:9092'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "commit_interval_for", "default_cache_dir", "default_state_dir"]


def commit_interval_for(eager_hops: bool) -> int:
    """The default commit interval (ms). With eager hops (and eager delivery, without
    which every output waits for the commit) no event waits for a commit,
    and a second between commits cut the p50 at 1,000 events/s from 64 to 36 ms and
    the broker's CPU (fewer transactions, hot keys written once per commit); with
    committed hops every hop waits for it, so it stays at 100 ms
    (docs/performance.md, 2026-11-29 session 2)."""
    return 1000 if eager_hops else 100


def _names(comma_list: str) -> frozenset[str]:
    return frozenset(e.strip() for e in comma_list.split(",") if e.strip())


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tripwire"


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tripwire"


class Settings(BaseSettings):
    """Everything tripwire reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="TRIPWIRE_", env_file=".env", extra="ignore", populate_by_name=True
    )

    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS",
                                      "TRIPWIRE_KAFKA_BOOTSTRAP_SERVERS"),
        description="An existing Kafka cluster; when unset tripwire starts its own broker.",
    )
    schema_registry_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SCHEMA_REGISTRY_URL", "TRIPWIRE_SCHEMA_REGISTRY_URL"),
    )
    cache_dir: Path = Field(default_factory=default_cache_dir)
    state_dir: Path = Field(default_factory=default_state_dir)
    broker_port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port.")
    broker_heap: str = "512m"
    use_testcontainers: bool = Field(
        default=True, description="Try a Kafka container when a Docker engine answers."
    )
    scratch_on_disk: bool = Field(
        default=False, description="Throw-away brokers (tests, benchmarks) keep their data "
        "on disk, not in memory (tripwire.broker.scratch).")
    topic_namespace: str = Field(
        default="",
        description="Prefix for every topic name (tests use a unique one per run).",
        pattern=r"^[A-Za-z0-9._-]*$",
    )
    batch_size: int = Field(default=500, ge=1, le=100_000)
    session_timeout_ms: int = Field(
        default=45_000, ge=6_000, le=300_000,
        description="How long a worker that died (killed, its machine gone) keeps its "
        "partitions before its group moves them to the others: the consumer group's "
        "session timeout. Shorter moves them sooner; shorter than the machine's longest "
        "pauses moves them from live workers too. A worker that stops cleanly leaves at once.")
    delivery: Literal["eager", "transactional"] = Field(
        default="eager",
        description="eager: answers go out at once, state and offsets commit every "
        "commit_interval_ms (answers at least once, same ids on a replay); transactional: "
        "answers inside the transaction (exactly once, visible after the commit).")
    commit_interval_ms: int | None = Field(
        default=None, ge=0, le=60_000,
        description="How often state and input offsets commit; by default 1000 with eager "
        "hops and delivery (no event waits for it), else 100 (each hop waits for it).")
    hops: Literal["eager", "committed"] = Field(
        default="eager",
        description="How the live pipeline's stages pass events on: eager: at once, each "
        "applied once by its position (milliseconds per hop); committed: with the sending "
        "stage's transaction (a commit interval per hop, less CPU at moderate rates). "
        "With delivery=transactional everything goes with the transactions.")
    nodes_apart: str = Field(
        default="",
        description="Feature entities served apart (comma list, e.g. 'ip'): their requests "
        "go to a topic of their own, served by `tripwire run stage features --entities ...`; "
        "every other entity shares tripwire.features.v1. The intake and the feature "
        "workers must agree on it.")
    log_level: str = Field(default="WARNING", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    ingest_keys: str = Field(
        default="", repr=False,
        description="HTTP ingest HMAC keys: 'key-id:secret,key-id2:secret2' (rotation).")
    ingest_tolerance_s: int = Field(default=300, ge=1, le=3600)
    ingest_max_body_bytes: int = Field(default=256 * 1024, ge=1024, le=900 * 1024)
    controls_isolated: bool = Field(
        default=True, description="Run the inline (tier 0 and 1) controls of decide workers "
        "and backtests in a supervised child process: a control that crashes, aborts or "
        "stalls costs that control, never the worker.")
    controls_memory_mb: int = Field(default=1024, ge=64, le=65536)
    controls_remember: int = Field(
        default=1024, ge=0, le=1_000_000,  # tripwire.controls.engine.REMEMBER
        description="Answers each control of a decide worker keeps, by its exact inputs: "
        "a repeat is answered without calling the control (a control is a pure function "
        "of its inputs), and its execution record says remembered. 0: call every time.")
    batch_table: Path | None = Field(
        default=None, description="JSON Lines reference data for the batch feature node.")
    batch_refresh_s: float = Field(default=300.0, gt=0)
    action_policy: Path | None = Field(
        default=None, description="TOML: the applier's rate limits and quiet periods "
        "(tripwire.controls.actions.ActionPolicy); none: no limit, one alert per incident "
        "an hour.")
    roles: Path | None = Field(
        default=None, description="TOML: who may resume, pause, override (tripwire.roles); "
        "none: everyone may (a first run).")
    alert_gateway_url: str | None = Field(
        default=None, description="Where the customer-alert sender POSTs alerts (an SMS or "
        "push provider's webhook).")
    alert_stale_minutes: float = Field(default=60.0, gt=0)
    alert_on_stale: Literal["summarise", "expire", "send"] = "summarise"
    alert_give_up_minutes: float = Field(
        default=60.0, gt=0, description="Failed delivery attempts of one alert for this "
        "long send it to the dead letters.")
    monitor_window_minutes: int = Field(
        default=10, ge=1, le=24 * 60, description="The system-wide monitor's sliding window.")
    monitor_ratio: float = Field(
        default=5.0, gt=1, description="A window this many times its baseline is a spike.")
    monitor_minimum: int = Field(
        default=200, ge=1, description="... with at least this many customer alerts in it.")
    monitor_floor: float = Field(
        default=20.0, gt=0, description="The baseline is never below this (a quiet night "
        "does not trip on a handful).")
    monitor_warmup_minutes: int = Field(
        default=24 * 60, ge=0, description="Nothing is raised before the monitor has seen "
        "this much history (a new installation reads the decisions topic from its start).")
    decide_deadlines: str = Field(
        default="", description="The inline decide API's deadlines, 'CardPayment=250,"
        "FpsMessage=2000' (ms; types not named: CardPayment 250, LoginEvent 300, "
        "FpsMessage 500).")
    decide_stand_in: str | None = Field(
        default=None, description="Its stand-in rules, 'CardPayment=ALLOW up to 25000 else "
        "DENY; LoginEvent=ALLOW' (tripwire.controls.standin; none: that policy, FPS allowed "
        "up to 100000 else MANUAL_REVIEW); the tier-0 controls run too.")
    decide_controls_dir: Path | None = Field(
        default=None, description="Where the decide API's tier-0 controls come from "
        "(default: the shipped library).")
    decide_margin_ms: int = Field(
        default=20, ge=0, le=1000, description="Kept from each deadline to record the answer.")
    decide_remember_s: int = Field(
        default=3600, ge=60, le=7 * 24 * 3600, description="How long a reference's answer "
        "is kept for its repeats (every API worker holds them in memory).")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Where a worker (run stage, alerts send) "
        "serves Prometheus metrics at /metrics; unset: none (0: any free port).")

    @field_validator("nodes_apart")
    @classmethod
    def _known_entities(cls, value: str) -> str:
        from tripwire.features.spec import ENTITIES

        unknown = sorted(_names(value) - set(ENTITIES))
        if unknown:
            raise ValueError(f"unknown entities {unknown}; known: {', '.join(ENTITIES)}")
        return value

    def apart(self) -> frozenset[str]:
        """The entities served apart (``nodes_apart``)."""
        return _names(self.nodes_apart)

    def commit_interval(self) -> int:
        """The commit interval in ms: the setting, or the default for how events
        leave the stages (with transactional delivery every hop waits for it)."""
        if self.commit_interval_ms is not None:
            return self.commit_interval_ms
        return commit_interval_for(self.hops == "eager" and self.delivery == "eager")
