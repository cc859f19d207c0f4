from pathlib import Path

import pytest

from tripwire.broker import choose_source
from tripwire.broker.local import LocalBroker, _cluster_id
from tripwire.config import Settings


def test_env_var_wins_over_docker_and_local() -> None:
    asked = []

    def docker() -> bool:
        asked.append(1)
        return True

    assert choose_source("10.0.0.1:9092", docker) == "env"
    assert asked == []  # the Docker engine is not even asked


def test_testcontainers_when_docker_answers() -> None:
    assert choose_source(None, lambda: True) == "testcontainers"
    assert choose_source("  ", lambda: True) == "testcontainers"


def test_local_broker_when_nothing_else() -> None:
    assert choose_source(None, lambda: False) == "local"
    assert choose_source(None, lambda: True, use_testcontainers=False) == "local"


def test_settings_read_kafka_bootstrap_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("TRIPWIRE_BATCH_SIZE", "250")
    s = Settings()
    assert s.kafka_bootstrap_servers == "k1:9092,k2:9092"
    assert s.batch_size == 250


def test_settings_reject_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIPWIRE_BROKER_PORT", "70000")
    with pytest.raises(ValueError, match="broker_port"):
        Settings()


def test_cluster_id_is_a_kafka_uuid() -> None:
    for _ in range(200):
        cid = _cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")


def test_status_of_a_broker_never_started(tmp_path: Path) -> None:
    st = LocalBroker(tmp_path / "b", tmp_path / "c").status()
    assert not st.running and not st.answering and "no broker" in st.detail
