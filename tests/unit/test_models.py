"""The typed models mirror the Avro schemas and convert to their record form."""


import pytest
from pydantic import ValidationError

from tripwire.connectors.simulator import envelope, fps_messages, logins, normal_card_payments
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.models import EVENT_MODELS, parse_event
from tripwire.schemas.registry import SchemaStore

STORE = SchemaStore.default()
T0 = 1_790_000_000_000


@pytest.mark.parametrize("name", sorted(EVENT_MODELS))
def test_model_fields_match_the_schema(name: str) -> None:
    model = EVENT_MODELS[name]
    schema_fields = {f["name"]: f for f in STORE.get(name).source["fields"]}
    fields = {k: v for k, v in model.model_fields.items() if k != "event_type"}
    assert set(fields) == set(schema_fields)
    for fname, f in fields.items():
        nullable = isinstance(schema_fields[fname]["type"], list) and \
            "null" in schema_fields[fname]["type"]
        assert (not f.is_required()) or not nullable, fname
        if "default" not in schema_fields[fname]:
            assert f.is_required(), f"{name}.{fname} has a default the schema lacks"


_envelope = envelope


@pytest.mark.parametrize(("event_type", "records"), [
    ("CardPayment", list(normal_card_payments(1, T0, 20))),
    ("LoginEvent", list(logins(1, T0, 20))),
    ("FpsMessage", list(fps_messages(1, T0, 10))),
])
def test_json_envelopes_convert_to_the_exact_avro_record(event_type: str,
                                                         records: list[dict]) -> None:
    codec = AvroCodec(STORE)
    for rec in records:
        model = parse_event(_envelope(event_type, rec))
        assert model.to_avro() == rec
        codec.encode(model.schema_name, model.to_avro())


def test_type_errors_name_the_field() -> None:
    rec = _envelope("CardPayment", next(normal_card_payments(1, T0, 1)))
    with pytest.raises(ValidationError) as info:
        parse_event({**rec, "amount_minor": "lots", "pan": "4111"})
    locs = {e["loc"][-1] for e in info.value.errors()}
    assert {"amount_minor", "pan"} <= locs
    with pytest.raises(ValidationError):
        parse_event({**rec, "event_time": "2026-11-24T08:00:00"})  # no time zone
