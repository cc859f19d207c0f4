"""A single-node KRaft Apache Kafka broker run from Maven Central jars.

No Docker engine is needed: the first start fetches Apache Kafka's own jars with
Maven (`pom.xml` beside this file) into the cache; every later start reuses them
and touches no network. The broker runs as a detached JVM on 127.0.0.1, keeps
its log in a file, records its pid and address in ``broker.json`` and is
stopped by that pid.

>>> broker = LocalBroker(home=Path("/tmp/tw-broker"), cache_dir=Path("/tmp/tw-cache"))
>>> info = broker.start()          # doctest: +SKIP
>>> info.bootstrap                 # doctest: +SKIP
'127.0.0.1:40123'
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from tripwire.errors import BrokerError

__all__ = ["KAFKA_VERSION", "BrokerInfo", "BrokerStatus", "LocalBroker", "broker_answers"]

logger = logging.getLogger(__name__)

KAFKA_VERSION = "3.9.2"
_MAIN_CLASS = "kafka.Kafka"
_STORAGE_TOOL = "kafka.tools.StorageTool"


@dataclass(frozen=True)
class BrokerInfo:
    """Where a running local broker listens and which process it is."""

    pid: int
    bootstrap: str
    port: int
    controller_port: int
    version: str
    home: str
    started_at: float


@dataclass(frozen=True)
class BrokerStatus:
    """The truth about a local broker: is its process alive, does it answer."""

    running: bool
    answering: bool
    info: BrokerInfo | None
    detail: str


def broker_answers(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when a Kafka broker at ``bootstrap`` answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except OSError:
        return False
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        md = admin.list_topics(timeout=timeout)
    except Exception:  # KafkaException: not (yet) answering
        return False
    return bool(md.brokers)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check_bindable(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise BrokerError(
                f"port {port} on 127.0.0.1 cannot be bound ({exc.strerror}); "
                "choose another with TRIPWIRE_BROKER_PORT or 0 for a free one"
            ) from exc


def _cluster_id() -> str:
    """A Kafka Uuid as its tools print it: 22 characters of base64url."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka avoids ids that look like CLI flags
            return text


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still "exists": reap it if we can.
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        if stat.read_text().split(")", 1)[1].split()[0] == "Z":
            return False
    return True


class LocalBroker:
    """Fetch, format, start, stop and inspect one local broker instance.

    ``home`` holds this instance's configuration, data, logs and pid record;
    ``cache_dir`` holds the jars shared by every instance.
    """

    def __init__(
        self,
        home: Path,
        cache_dir: Path,
        *,
        port: int = 0,
        heap: str = "512m",
        java: str = "java",
        mvn: str = "mvn",
    ) -> None:
        self.home = Path(home)
        self.cache_dir = Path(cache_dir)
        self.port = port
        self.heap = heap
        self.java = java
        self.mvn = mvn
        self.started = False  # True once this object has launched the JVM

    # -- paths -----------------------------------------------------------------
    @property
    def libs_dir(self) -> Path:
        return self.cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"

    @property
    def properties_path(self) -> Path:
        return self.home / "server.properties"

    @property
    def record_path(self) -> Path:
        return self.home / "broker.json"

    @property
    def log_path(self) -> Path:
        return self.home / "logs" / "server.log"

    @property
    def console_path(self) -> Path:
        return self.home / "logs" / "console.log"

    # -- jars ------------------------------------------------------------------
    def jars_cached(self) -> bool:
        return (self.libs_dir / ".complete").exists()

    def ensure_jars(self, say: Callable[[str], None] = logger.info) -> Path:
        """Return the jar folder, fetching it with Maven on the first call only."""
        if self.jars_cached():
            return self.libs_dir
        self.libs_dir.parent.mkdir(parents=True, exist_ok=True)
        with self._lock(self.libs_dir.parent / ".fetch.lock"):
            if self.jars_cached():  # another process fetched while we waited
                return self.libs_dir
            mvn = shutil.which(self.mvn)
            if mvn is None:
                raise BrokerError(
                    "Maven (mvn) is needed once to fetch Apache Kafka's jars and was not found. "
                    "Install it (e.g. `apt-get install maven`) or set KAFKA_BOOTSTRAP_SERVERS "
                    "to an existing cluster."
                )
            pom = self.libs_dir.parent / "pom.xml"
            pom.write_bytes(resources.files("tripwire.broker").joinpath("pom.xml").read_bytes())
            staging = self.libs_dir.parent / "libs.partial"
            shutil.rmtree(staging, ignore_errors=True)
            say(f"Fetching Apache Kafka {KAFKA_VERSION} jars with Maven (first start only)...")
            cmd = [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
                   f"-DoutputDirectory={staging}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
                raise BrokerError(f"Maven could not fetch the Kafka jars:\n{tail}")
            (staging / ".complete").write_text(hashlib.sha256(pom.read_bytes()).hexdigest())
            shutil.rmtree(self.libs_dir, ignore_errors=True)
            staging.rename(self.libs_dir)
        return self.libs_dir

    @staticmethod
    @contextlib.contextmanager
    def _lock(path: Path) -> Iterator[None]:
        with path.open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- lifecycle -------------------------------------------------------------
    def read_record(self) -> BrokerInfo | None:
        try:
            return BrokerInfo(**json.loads(self.record_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _owns(self, pid: int) -> bool:
        """The pid is alive and is this instance's JVM (not a recycled pid)."""
        if not _pid_alive(pid):
            return False
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists():
            with contextlib.suppress(OSError):
                return str(self.properties_path) in cmdline.read_bytes().decode(errors="replace")
        return True

    def status(self, timeout: float = 2.0) -> BrokerStatus:
        info = self.read_record()
        if info is None:
            return BrokerStatus(False, False, None, f"no broker recorded in {self.home}")
        if not self._owns(info.pid):
            return BrokerStatus(False, False, info, f"pid {info.pid} is not running (stale record)")
        answering = broker_answers(info.bootstrap, timeout)
        detail = "running and answering" if answering else "process alive but not answering"
        return BrokerStatus(True, answering, info, detail)

    def start(self, timeout: float = 90.0, say: Callable[[str], None] = logger.info) -> BrokerInfo:
        """Start the broker (or return the one already running) and wait until it answers."""
        current = self.status()
        if current.running and current.info is not None:
            if current.answering or self._wait_answering(current.info, timeout):
                return current.info
            raise BrokerError(f"broker pid {current.info.pid} is alive but does not answer; "
                              f"see {self.log_path}")
        if shutil.which(self.java) is None:
            raise BrokerError(
                "Java (17 or newer) is needed to run the local Kafka broker and was not found. "
                "Install a JDK (e.g. `apt-get install openjdk-17-jre-headless`) or set "
                "KAFKA_BOOTSTRAP_SERVERS to an existing cluster."
            )
        libs = self.ensure_jars(say)
        previous = self.read_record()
        port, cport = self._choose_ports(previous)
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        self._write_properties(port, cport)
        self._format(libs)
        log4j = self.home / "log4j.properties"
        log4j.write_bytes(
            resources.files("tripwire.broker").joinpath("log4j.properties").read_bytes())
        cmd = [
            self.java, f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{log4j}", f"-Dkafka.logs.dir={self.home / 'logs'}",
            "-cp", f"{libs}/*", _MAIN_CLASS, str(self.properties_path),
        ]
        with self.console_path.open("ab") as console:
            proc = subprocess.Popen(cmd, stdout=console, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        info = BrokerInfo(pid=proc.pid, bootstrap=f"127.0.0.1:{port}", port=port,
                          controller_port=cport, version=KAFKA_VERSION, home=str(self.home),
                          started_at=time.time())
        self.record_path.write_text(json.dumps(asdict(info), indent=2))
        self.started = True
        if not self._wait_answering(info, timeout, proc):
            self.stop()
            raise BrokerError(
                f"the broker did not answer within {timeout:.0f}s; last log lines:\n"
                + self._log_tail()
            )
        return info

    def _choose_ports(self, previous: BrokerInfo | None) -> tuple[int, int]:
        if self.port:
            _check_bindable(self.port)
            port = self.port
        elif previous is not None and self._bindable(previous.port):
            port = previous.port
        else:
            port = _free_port()
        if previous is not None and self._bindable(previous.controller_port) \
                and previous.controller_port != port:
            cport = previous.controller_port
        else:
            cport = _free_port()
            while cport == port:
                cport = _free_port()
        return port, cport

    @staticmethod
    def _bindable(port: int) -> bool:
        try:
            _check_bindable(port)
        except BrokerError:
            return False
        return True

    def _wait_answering(self, info: BrokerInfo, timeout: float,
                        proc: subprocess.Popen[bytes] | None = None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise BrokerError(
                    f"the broker exited with code {proc.returncode} during start-up; "
                    f"last log lines:\n{self._log_tail()}"
                )
            if broker_answers(info.bootstrap, timeout=1.0):
                return True
            time.sleep(0.2)
        return False

    def _log_tail(self, lines: int = 25) -> str:
        out = []
        for path in (self.console_path, self.log_path):
            with contextlib.suppress(OSError):
                out.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(out[-lines:]) or "(no log output)"

    def _write_properties(self, port: int, cport: int) -> None:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{cport}",
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.home / "data"),
            "num.partitions": "1",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "10",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.retention.hours": "168",
            # one node is its own controller: on a busy 2-core machine its heartbeat
            # to itself was late by 8 s, the controller fenced it and every partition
            # went offline for a while (transactions timed out). A longer session
            # keeps a starved single node in service.
            "broker.session.timeout.ms": "60000",
        }
        text = "# written by tripwire; edits are overwritten on start\n" + "".join(
            f"{k}={v}\n" for k, v in props.items())
        self.properties_path.write_text(text)

    def _format(self, libs: Path) -> None:
        if (self.home / "data" / "meta.properties").exists():
            return
        cmd = [self.java, "-Xmx256m", "-cp", f"{libs}/*", _STORAGE_TOOL, "format",
               "-t", _cluster_id(), "-c", str(self.properties_path), "--ignore-formatted"]
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise BrokerError(f"formatting KRaft storage failed:\n{proc.stdout}{proc.stderr}")

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the recorded broker; True when a process was stopped."""
        info = self.read_record()
        if info is None or not self._owns(info.pid):
            self.record_path.unlink(missing_ok=True)
            return False
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(info.pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not _pid_alive(info.pid):
                    self.record_path.unlink(missing_ok=True)
                    return True
                time.sleep(0.1)
        raise BrokerError(f"broker pid {info.pid} did not stop")

    def restart(self, down_s: float = 0.0) -> BrokerInfo:
        """Stop the broker and start it again after ``down_s`` seconds, on the same
        ports and data (fault tests: clients reconnect to the same address)."""
        info = self.read_record()
        self.stop()
        if info is None:
            return self.start()
        self.record_path.write_text(json.dumps(asdict(info), indent=2))  # the ports to reuse
        time.sleep(down_s)
        deadline = time.monotonic() + 30
        while not (self._bindable(info.port) and self._bindable(info.controller_port)):
            if time.monotonic() > deadline:  # clients need the same address
                raise BrokerError(f"port {info.port} or {info.controller_port} did not free up")
            time.sleep(0.2)
        port, self.port = self.port, info.port
        try:
            return self.start()
        finally:
            self.port = port

    def wipe(self) -> None:
        """Stop and delete this instance's data, logs and configuration."""
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)
