"""Choose the Kafka cluster: `KAFKA_BOOTSTRAP_SERVERS` → a testcontainers Kafka
when a Docker engine answers → the local jar broker. Tests, the demo and the CLI
all come through here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tripwire.broker.local import LocalBroker
from tripwire.config import Settings

__all__ = ["KafkaCluster", "acquire_cluster", "choose_source", "docker_engine_answers"]

logger = logging.getLogger(__name__)

Source = Literal["env", "testcontainers", "local"]


def choose_source(
    env_bootstrap: str | None,
    docker_answers: Callable[[], bool],
    use_testcontainers: bool = True,
) -> Source:
    """The preference order as a pure function; ``docker_answers`` is only asked if needed."""
    if env_bootstrap and env_bootstrap.strip():
        return "env"
    if use_testcontainers and docker_answers():
        return "testcontainers"
    return "local"


def docker_engine_answers(timeout: float = 2.0) -> bool:
    """True when a Docker engine answers a ping (the CLI alone is not enough)."""
    try:
        import docker

        client = docker.from_env(timeout=int(max(1, timeout)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@dataclass
class KafkaCluster:
    """A reachable cluster and, if tripwire started it, how to stop it."""

    bootstrap: str
    source: Source
    detail: str = ""
    _closer: Callable[[], None] | None = field(default=None, repr=False)
    pid: int | None = None  # the broker's process, when it is a local one of ours
    local: LocalBroker | None = field(default=None, repr=False)  # ... and its launcher

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the local broker, wait ``down_s`` seconds, start it again on the same
        port and data (fault tests); only for a broker tripwire started."""
        if self.local is None:
            raise RuntimeError(f"only a local broker tripwire started can be restarted "
                               f"(this one: {self.source})")
        self.pid = self.local.restart(down_s).pid

    def close(self) -> None:
        if self._closer is not None:
            closer, self._closer = self._closer, None
            closer()


def acquire_cluster(
    settings: Settings,
    *,
    home: Path | None = None,
    stop_on_close: bool = False,  # stop a local broker on close if this call started it
    say: Callable[[str], None] = logger.info,
) -> KafkaCluster:
    """Return a cluster following the preference order, starting one if needed."""
    source = choose_source(settings.kafka_bootstrap_servers, docker_engine_answers,
                           settings.use_testcontainers)
    if source == "env":
        assert settings.kafka_bootstrap_servers is not None
        return KafkaCluster(settings.kafka_bootstrap_servers, "env", "KAFKA_BOOTSTRAP_SERVERS")
    if source == "testcontainers":
        from testcontainers.community.kafka import KafkaContainer

        say("Starting a Kafka container (Docker engine found)...")
        container = KafkaContainer().with_kraft()
        container.start()
        return KafkaCluster(container.get_bootstrap_server(), "testcontainers",
                            "testcontainers KafkaContainer", container.stop)
    broker = LocalBroker(home or settings.state_dir / "broker", settings.cache_dir,
                         port=settings.broker_port, heap=settings.broker_heap)
    info = broker.start(say=say)
    closer: Callable[[], None] | None = None
    if stop_on_close and broker.started:  # never stop a broker someone else started
        def closer() -> None:
            broker.stop()
    return KafkaCluster(info.bootstrap, "local", f"local Apache Kafka {info.version} "
                        f"(pid {info.pid}, {broker.home})", closer, pid=info.pid,
                        local=broker if broker.started else None)
