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


# a decision's wire form (decision v5, tripwire.schemas.wire)
DECISION_NAME = "tripwire.decisions.Decision"
_feature_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=8),
    st.floats(allow_nan=False), st.just(float("nan")), st.just(float("-inf")))


def _decision(features: dict[str, object], provenance: dict[str, str],
              versions: dict[str, str]) -> dict[str, object]:
    return {"decision_id": "d" * 32, "event_id": "e-1", "event_type": CARD_SCHEMA,
            "entity_key": "tok-1", "event_time": 1, "decided_at": 2, "outcome": "DENY",
            "actions": ["BLOCK_CARD"], "rule_hits": [], "features": features,
            "feature_errors": {"x": "no answer"}, "feature_provenance": provenance,
            "control_errors": {}, "control_versions": versions, "engine_version": "t",
            "latency_us": 3, "repeat": False, "subjects": {"card": "tok-1"},
            "typology": "", "attributes": {"method": "card"}}


def _same(a: object, b: object) -> bool:
    """Equal, NaN equal to NaN, and of the same types (True is not 1)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and a != a:
        return b != b
    return type(a) is type(b) and a == b


@settings(max_examples=150, deadline=None)
@given(features=st.dictionaries(st.text(min_size=1, max_size=6), _feature_values, max_size=12),
       provenance=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=5),
       versions=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=5))
def test_a_decision_reads_back_the_same_from_its_wire_form_and_from_v4(
        features: dict[str, object], provenance: dict[str, str],
        versions: dict[str, str]) -> None:
    from fastavro import schemaless_reader

    decision = _decision(features, provenance, versions)
    kept = _decision(dict(features), dict(provenance), dict(versions))
    newest = CODEC.encode(DECISION_NAME, decision)
    assert _same(decision, kept)  # the caller's record is not changed
    for data in (newest, CODEC.encode(DECISION_NAME, decision, version=4)):
        schema, back = CODEC.decode(data)
        assert schema.version == 5 and _same(back, kept), (back, kept)
    # what is on the wire: the maps empty, the values grouped by type and as JSON text
    v5 = SchemaStore.default().get(DECISION_NAME)
    import io
    raw = schemaless_reader(io.BytesIO(newest[10:]), v5.parsed, None)
    assert raw["features"] == {} and raw["feature_provenance"] == {} and \
        raw["control_versions"] == {}
    assert sorted(raw["feature_nulls"]) == sorted(k for k, v in features.items() if v is None)
    assert raw["feature_longs"] == {k: v for k, v in features.items()
                                    if type(v) is int}
    assert (raw["control_versions_json"] != "") == bool(versions)


def test_a_decision_value_of_no_feature_type_is_refused_as_before() -> None:
    for big in (2**63, -(2**63) - 1):  # beyond a long: a double, as the union wrote it
        _, back = CODEC.decode(CODEC.encode(DECISION_NAME, _decision({"f": big, "g": 1}, {}, {})))
        assert back["features"] == {"f": float(big), "g": 1}
    for bad in ([1, 2], {"a": 1}, b"bytes", 10**400):
        with pytest.raises(EncodeError):
            CODEC.encode(DECISION_NAME, _decision({"f": bad}, {}, {}))
        with pytest.raises(EncodeError):
            CODEC.encode(DECISION_NAME, _decision({"f": bad}, {}, {}), version=4)
    with pytest.raises(EncodeError):  # a version that is not text
        CODEC.encode(DECISION_NAME, _decision({"f": 1}, {}, {"c": 3}))  # type: ignore[dict-item]
