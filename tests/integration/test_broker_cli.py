"""`tripwire broker start|status|stop` on a real JVM, in a private state dir."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tripwire.broker import KafkaCluster
from tripwire.broker.local import _pid_alive, broker_answers
from tripwire.config import Settings
from tripwire.connectors.kafka import admin

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TRIPWIRE = [sys.executable, "-m", "tripwire"]


def _env(state: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env.update({"TRIPWIRE_STATE_DIR": str(state),
                "TRIPWIRE_CACHE_DIR": str(Settings().cache_dir)}, **extra)
    return env


def _run(args: list[str], env: dict[str, str], timeout: float = 120) \
        -> subprocess.CompletedProcess[str]:
    return subprocess.run(TRIPWIRE + args, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def needs_local_broker(kafka: KafkaCluster) -> None:
    if kafka.source != "local":
        pytest.skip("the session uses an external cluster; jar cache may not exist")


@pytest.mark.usefixtures("needs_local_broker")
def test_start_status_stop_leaves_nothing_behind(tmp_path: Path) -> None:
    # Maven is taken off PATH: a second start must reuse the cached jars.
    java_dir = str(Path(os.path.realpath(shutil.which("java") or "java")).parent)
    env = _env(tmp_path, PATH=os.pathsep.join([str(Path(sys.executable).parent), java_dir]))
    assert shutil.which("mvn", path=env["PATH"]) is None

    status = _run(["broker", "status"], env)
    assert status.returncode == 1 and "stopped" in status.stdout

    start = _run(["broker", "start"], env)
    assert start.returncode == 0, start.stderr
    bootstrap = start.stdout.strip().splitlines()[-1]
    assert bootstrap.startswith("127.0.0.1:")
    assert "Fetching" not in start.stderr
    assert broker_answers(bootstrap)
    assert admin(bootstrap).list_topics(timeout=10).brokers

    status = _run(["broker", "status"], env)
    assert status.returncode == 0 and "running and answering" in status.stdout
    pid = int(status.stdout.split("pid ")[1].split(":")[0])
    assert _pid_alive(pid)
    assert (tmp_path / "broker" / "logs" / "server.log").stat().st_size > 0

    again = _run(["broker", "start"], env)  # idempotent: same broker
    assert again.stdout.strip().splitlines()[-1] == bootstrap

    stop = _run(["broker", "stop"], env)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert not _pid_alive(pid)
    assert not broker_answers(bootstrap, timeout=1)
    status = _run(["broker", "status"], env)
    assert status.returncode == 1 and "stopped" in status.stdout
    assert _run(["broker", "stop"], env).stdout.strip() == "no broker was running"


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = _run(["broker", "start"], _env(tmp_path, TRIPWIRE_BROKER_PORT=str(port)))
    assert res.returncode == 2
    assert f"port {port} on 127.0.0.1 cannot be bound" in res.stderr


def test_missing_java_is_a_clear_error(tmp_path: Path) -> None:
    res = _run(["broker", "start"], _env(tmp_path, PATH=str(Path(sys.executable).parent)))
    assert res.returncode == 2
    assert "Java (17 or newer) is needed" in res.stderr


def test_env_var_bootstrap_wins_for_the_cli(kafka: KafkaCluster, tmp_path: Path,
                                            namespace: str) -> None:
    # No local broker exists in this state dir: only KAFKA_BOOTSTRAP_SERVERS can be used.
    env = _env(tmp_path, KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap,
               TRIPWIRE_TOPIC_NAMESPACE=namespace)
    res = _run(["topics", "create"], env)
    assert res.returncode == 0, res.stderr
    assert f"created  {namespace}tripwire.decisions.v1" in res.stdout
    assert f"{namespace}tripwire.decisions.v1" in admin(kafka.bootstrap).list_topics(
        timeout=10).topics
    assert not (tmp_path / "broker").exists()
    # without it, the same command says clearly that there is no Kafka
    res = _run(["topics", "create"], _env(tmp_path))
    assert res.returncode == 2 and "no Kafka" in res.stderr


def test_invalid_configuration_is_a_clear_error(tmp_path: Path) -> None:
    res = _run(["broker", "status"], _env(tmp_path, TRIPWIRE_BROKER_PORT="70000"))
    assert res.returncode == 2
    assert "invalid configuration" in res.stderr and "broker_port" in res.stderr
    assert "Traceback" not in res.stderr
