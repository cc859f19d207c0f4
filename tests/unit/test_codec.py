import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tripwire.connectors.labelled import labelled_traffic
from tripwire.connectors.simulator import CARD_SCHEMA, normal_card_payments
from tripwire.features.kinds import EVENT_KINDS
from tripwire.schemas.codec import SINGLE_OBJECT_MAGIC, AvroCodec, DecodeError, EncodeError
from tripwire.schemas.registry import AvroSchema, SchemaStore

CODEC = AvroCodec(SchemaStore.default())
EVENT = next(normal_card_payments(seed=3, start_ms=1_700_000_000_000, count=1))
IDENTITY_FIELDS = {name: kind.identity_field for name, kind in EVENT_KINDS.items()}


def test_round_trip_keeps_every_field() -> None:
    schema, back = CODEC.decode(CODEC.encode(CARD_SCHEMA, EVENT))
    assert schema.name == CARD_SCHEMA
    assert back == EVENT


def test_header_is_avro_single_object_encoding() -> None:
    data = CODEC.encode(CARD_SCHEMA, EVENT)
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert data[2:10] == SchemaStore.default().get(CARD_SCHEMA).fingerprint


def test_fingerprint_matches_the_avro_spec_test_value() -> None:
    from fastavro import parse_schema
    from fastavro.schema import fingerprint, to_parsing_canonical_form

    fp = fingerprint(to_parsing_canonical_form(parse_schema("int")), "CRC-64-AVRO")
    assert bytes.fromhex(fp) == (0x7275D51A3F395C8F).to_bytes(8, "little")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, "EMPTY"),
        (b"\xc3\x01\x00", "TRUNCATED"),
        (b"{\"json\": true, \"x\": 1}", "BAD_MAGIC"),
        (b"\xc3\x01" + b"\x00" * 8 + b"\x02", "UNKNOWN_SCHEMA"),
    ],
)
def test_bad_framing_has_a_reason(data: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        CODEC.decode(data)
    assert info.value.reason == reason
    with pytest.raises(DecodeError) as info:
        CODEC.leading(data, IDENTITY_FIELDS)
    assert info.value.reason == reason


def test_trailing_and_truncated_bodies() -> None:
    good = CODEC.encode(CARD_SCHEMA, EVENT)
    with pytest.raises(DecodeError) as info:
        CODEC.decode(good + b"\x00")
    assert info.value.reason == "TRAILING_BYTES"
    with pytest.raises(DecodeError) as info:
        CODEC.decode(good[:-3])
    assert info.value.reason == "BODY_INVALID"


def test_encode_refuses_unknown_fields_and_bad_enums() -> None:
    with pytest.raises(EncodeError):
        CODEC.encode(CARD_SCHEMA, {**EVENT, "pan": "4111111111111111"})
    with pytest.raises(EncodeError):
        CODEC.encode(CARD_SCHEMA, {**EVENT, "entry_mode": "TELEPATHY"})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_decoder(data: bytes) -> None:
    try:
        CODEC.decode(data)
    except DecodeError as exc:
        assert exc.reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_arbitrary_bodies_behind_a_valid_header(body: bytes) -> None:
    header = CODEC.encode(CARD_SCHEMA, EVENT)[:10]
    try:
        _, rec = CODEC.decode(header + body)
    except DecodeError as exc:
        assert exc.reason in {"BODY_INVALID", "TRAILING_BYTES"}
    else:
        assert set(rec) == set(EVENT)


def test_the_leading_field_is_the_one_a_whole_decode_gives() -> None:
    """Every kind of event, in its newest schema and in every older one that can
    carry it, read from the front of the record (the backtest's scan for repeats)."""
    events = labelled_traffic(5, 1_790_000_000_000, 0.05, 200).events
    assert {kind for kind, _ in events} >= {"CardPayment", "LoginEvent", "FpsMessage"}
    tried = 0
    for kind, event in events:
        name = f"tripwire.events.{kind}"
        for schema in CODEC.store.versions(name):
            names = {f["name"] for f in schema.source["fields"]}
            try:  # what that version has of the event
                data = CODEC.encode(name, {k: v for k, v in event.items() if k in names},
                                    schema.version)
            except EncodeError:
                continue
            tried += schema.version < CODEC.store.get(name).version
            got_schema, value = CODEC.leading(data, IDENTITY_FIELDS)
            whole_schema, whole = CODEC.decode(data)
            assert got_schema is whole_schema
            assert value == whole[IDENTITY_FIELDS[name]] == event[IDENTITY_FIELDS[name]]
    assert tried  # an older version was read too


def _store(*fields: list[dict]) -> SchemaStore:
    return SchemaStore([AvroSchema.from_json({"type": "record", "name": "t.R", "fields": f},
                                             version=v) for v, f in enumerate(fields, 1)])


def test_a_leading_field_the_writer_lacks_or_types_otherwise_is_read_from_the_whole() -> None:
    old = [{"name": "a", "type": "string"}, {"name": "n", "type": "int"}]
    codec = AvroCodec(_store(old, [{"name": "a", "type": "string"},
                                   {"name": "n", "type": "long"},  # promoted: read whole
                                   {"name": "id", "type": "string", "default": "none"}]))
    data = codec.encode("t.R", {"a": "x", "n": 7}, version=1)
    assert codec.leading(data, {"t.R": "n"})[1] == 7
    assert codec.leading(data, {"t.R": "id"})[1] == "none"  # the reader's default
    assert codec.leading(data, {"t.R": "a"})[1] == "x"  # same type: the front only
    with pytest.raises(KeyError):
        codec.leading(data, {"t.Other": "a"})


def test_a_corrupt_front_is_refused_and_a_corrupt_tail_is_not_read() -> None:
    good = CODEC.encode(CARD_SCHEMA, EVENT)
    with pytest.raises(DecodeError) as info:
        CODEC.leading(good[:11], IDENTITY_FIELDS)  # the identity cut short
    assert info.value.reason == "BODY_INVALID"
    assert CODEC.leading(good[:-3], IDENTITY_FIELDS)[1] == EVENT["event_id"]


def test_an_integer_beyond_a_long_is_an_encode_error() -> None:
    for big in (2**63, -(2**63) - 1):
        with pytest.raises(EncodeError, match=r"too large"):
            CODEC.encode(CARD_SCHEMA, {**EVENT, "amount_minor": big})
    CODEC.encode(CARD_SCHEMA, {**EVENT, "amount_minor": 2**63 - 1})  # a long's largest
