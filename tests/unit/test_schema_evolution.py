import itertools
from pathlib import Path

import pytest

from tripwire.connectors.simulator import CARD_SCHEMA, normal_card_payments
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.compat import check_rule, store_problems
from tripwire.schemas.registry import AvroSchema, SchemaStore, load_compatibility

STORE = SchemaStore.default()
RULES = load_compatibility()


def test_every_schema_declares_a_rule_and_every_version_follows_it() -> None:
    assert set(RULES) == set(STORE.names())
    assert store_problems(STORE, RULES) == []


@pytest.mark.parametrize("name", [n for n in STORE.names() if len(STORE.versions(n)) > 1])
def test_each_change_follows_its_declared_rule(name: str) -> None:
    versions = STORE.versions(name)
    for old, new in itertools.pairwise(versions):
        assert check_rule(old, new, RULES[name]) == []


def test_a_required_field_without_default_breaks_backward() -> None:
    old = STORE.get(CARD_SCHEMA, 1)
    src = {**old.source, "fields": [*old.source["fields"],
                                    {"name": "risk_band", "type": "string"}]}
    new = AvroSchema.from_json(src, "card_payment.v99.avsc", 99)
    problems = check_rule(old, new, "BACKWARD")
    assert problems and "risk_band" in problems[0] and "v99 cannot read v1" in problems[0]
    assert check_rule(old, new, "FORWARD") == []  # old readers ignore the new field


def test_removing_a_field_without_default_breaks_forward() -> None:
    old = STORE.get(CARD_SCHEMA, 1)
    src = {**old.source, "fields": [f for f in old.source["fields"] if f["name"] != "mcc"]}
    new = AvroSchema.from_json(src, "card_payment.v98.avsc", 98)
    assert any("mcc" in p for p in check_rule(old, new, "FULL"))


def test_v1_data_is_read_as_the_newest_version() -> None:
    codec = AvroCodec(STORE)
    ev = next(normal_card_payments(1, 1_700_000_000_000, 1))
    ev = {k: v for k, v in ev.items() if k not in ("wallet", "three_ds")}
    old_bytes = codec.encode(CARD_SCHEMA, ev, version=1)
    schema, rec = codec.decode(old_bytes)
    assert schema.version == STORE.get(CARD_SCHEMA).version == 2
    assert rec == {**ev, "wallet": None, "three_ds": None}


def test_the_action_enum_is_the_same_in_decisions_and_actions() -> None:
    """An action a decision names is one the applier can record (the enum has one name,
    tripwire.decisions.Action, in both schemas)."""
    import json

    avro = Path(__file__).resolve().parents[2] / "schemas" / "avro"

    def symbols(schema: dict) -> list[str]:
        for f in schema["fields"]:
            t = f["type"]
            t = t.get("items", t) if isinstance(t, dict) else t
            if isinstance(t, dict) and t.get("name") == "Action":
                return list(t["symbols"])
        raise AssertionError("no Action enum")

    latest = {}
    for path in sorted(avro.glob("*.avsc")):
        schema = json.loads(path.read_text())
        latest[schema["name"]] = schema  # versions sort in order: the last wins
    assert symbols(latest["Decision"]) == symbols(latest["ActionRequest"])
