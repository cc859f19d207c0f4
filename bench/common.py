"""What every benchmark needs: a real Kafka cluster of its own and CPU readings."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tripwire.broker import KafkaCluster, acquire_cluster
from tripwire.broker.scratch import release, scratch_home
from tripwire.config import Settings
from tripwire.schemas.codec import AvroCodec

__all__ = ["bench_cluster", "calibrate", "proc_cpu", "thread_cpu"]

CLK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def thread_cpu(pid: int | None = None) -> dict[str, float]:
    """CPU seconds of a process's threads, by thread name with digits dropped
    (``rdk:broker1`` and ``rdk:broker2`` → ``rdk:broker``): which part of a worker
    the time goes to — Python (the process's main name and its threads) or
    librdkafka's (``rdk:``)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid or os.getpid()}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip().rstrip("0123456789")
            try:  # nanoseconds on the CPU; stat counts in ticks of 10 ms
                seconds = int((task / "schedstat").read_text().split()[0]) / 1e9
            except (OSError, ValueError, IndexError):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                seconds = (int(fields[11]) + int(fields[12])) / CLK
        except OSError:  # the thread ended
            continue
        out[name] = out.get(name, 0.0) + seconds
    return out


@contextlib.contextmanager
def bench_cluster() -> Iterator[tuple[KafkaCluster, Callable[[], float | None]]]:
    """The cluster (``KAFKA_BOOTSTRAP_SERVERS``, a container, or a private local
    broker stopped and deleted afterwards) and a reading of the broker's CPU
    seconds — None when the broker is not a local process of ours."""
    logging.getLogger("tripwire.librdkafka").setLevel(logging.ERROR)
    settings = Settings()
    home = scratch_home("bench-broker")
    cluster = acquire_cluster(settings, home=home, stop_on_close=True, say=print)
    pid = cluster.pid
    try:
        print(f"Kafka: {cluster.detail} at {cluster.bootstrap}; {os.cpu_count()} cores")
        yield cluster, (lambda: proc_cpu(pid)) if pid else (lambda: None)
    finally:
        cluster.close()
        release(home)


def calibrate(codec: AvroCodec, n: int = 20_000) -> float:
    """This machine's speed, for comparing figures across machines: µs per fastavro
    decode of a card payment (6.6 µs on the machine of the first performance log)."""
    from tripwire.connectors.simulator import normal_card_payments

    e = next(iter(normal_card_payments(1, int(time.time() * 1000), 1)))
    data = codec.encode("tripwire.events.CardPayment", e)
    # fastavro's decode as the codec calls it, never the compiled decoder
    # (tripwire.schemas.compiled): the yardstick must not move with tripwire's code
    fastavro_only = AvroCodec(codec.store, codec.registry, compiled=False)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            fastavro_only.decode(data)
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


class Rounds:
    """Figures by name, a value per round: printed as each round ends, medians at the end."""

    def __init__(self) -> None:
        self.rows: dict[str, list[float]] = {}

    def add(self, name: str, value: float) -> None:
        self.rows.setdefault(name, []).append(value)

    def round_done(self, r: int, fmt: str = ",.0f") -> None:
        print(f"round {r + 1}: " + ", ".join(f"{k.strip()} {v[-1]:{fmt}}"
                                             for k, v in self.rows.items()))

    def medians(self, command: str, repeats: int) -> None:
        import statistics

        print(f"\nmedians of {repeats} rounds; command: {command}")
        for k, v in self.rows.items():
            print(f"{k:45} {statistics.median(v):>12,.1f}")
