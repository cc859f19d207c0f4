"""docker-compose.yml cannot run here (no Docker engine), so check it agrees with the code."""

from pathlib import Path

import yaml
from typer.main import get_command

from tripwire.broker import KAFKA_VERSION
from tripwire.cli import app
from tripwire.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_kafka_image_matches_the_local_broker_version() -> None:
    assert COMPOSE["services"]["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"


def test_every_tripwire_service_runs_a_real_cli_command_with_valid_settings() -> None:
    cli = get_command(app)
    kafka = COMPOSE["services"]["kafka"]["environment"]
    internal = [a.split("//")[1] for a in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
                if a.startswith("PLAINTEXT://")]
    services = {k: v for k, v in COMPOSE["services"].items() if k != "kafka"}
    assert services
    for name, svc in services.items():
        cmd = svc["command"]
        assert cmd[0] == "tripwire", name
        group = cli
        for word in cmd[1:]:
            if not hasattr(group, "commands"):  # reached the command: the rest are arguments
                from tripwire.streams.runner import STAGES
                if group.name == "stage":
                    assert word in (*STAGES, "applier", "reconcile", "all"), (name, word)
                else:
                    assert word.startswith("--") or cmd[cmd.index(word) - 1].startswith("--"), \
                        (name, word)
                continue
            group = group.commands[word]
        env = {k: str(v) for k, v in svc["environment"].items()}
        assert env["KAFKA_BOOTSTRAP_SERVERS"] in internal, name
        settings = Settings(**{"KAFKA_BOOTSTRAP_SERVERS": env["KAFKA_BOOTSTRAP_SERVERS"]},
                            **{k.removeprefix("TRIPWIRE_").lower(): v for k, v in env.items()
                               if k.startswith("TRIPWIRE_")})
        assert settings.kafka_bootstrap_servers == env["KAFKA_BOOTSTRAP_SERVERS"]
        unknown = {k for k in env if k.startswith("TRIPWIRE_")
                   and k.removeprefix("TRIPWIRE_").lower() not in Settings.model_fields}
        assert not unknown, f"{name} passes settings the code does not read: {unknown}"


def test_dockerfile_copies_every_package_dir() -> None:
    import tomllib

    dockerfile = (ROOT / "Dockerfile").read_text()
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"].values()
    for d in dirs:
        assert f"COPY {d} {d}" in dockerfile
