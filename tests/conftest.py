"""Shared fixtures. One real Kafka cluster per test session, chosen in the
project's order: KAFKA_BOOTSTRAP_SERVERS → testcontainers (Docker engine) → the
local jar broker. Each test gets its own topic namespace."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest

from tripwire.broker import KafkaCluster, acquire_cluster
from tripwire.broker.scratch import release, scratch_home
from tripwire.config import Settings
from tripwire.features.spec import ENTITIES
from tripwire.streams.topics import create_topics, declared

logging.getLogger("tripwire.librdkafka").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaCluster]:
    """The session's real Kafka cluster; a local broker started here is stopped and
    deleted at the end (its data in memory when the machine has room: see
    :mod:`tripwire.broker.scratch`)."""
    home = scratch_home("test-broker")
    try:
        cluster = acquire_cluster(Settings(), home=home, stop_on_close=True, say=print)
        try:
            yield cluster
        finally:
            cluster.close()
    finally:
        release(home)


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """A topic prefix no other test (or earlier run) uses."""
    name = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:40]
    return f"t-{name}-{uuid.uuid4().hex[:6]}."


@pytest.fixture
def topics(kafka: KafkaCluster, namespace: str) -> str:
    """The declared topics, every entity's own feature topic too, created under the
    test's namespace (3 partitions each)."""
    create_topics(kafka.bootstrap, namespace, declared(ENTITIES), partitions=3)
    return namespace
