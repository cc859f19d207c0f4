"""The compiled Avro encoders write exactly fastavro's bytes, and the compiled
decoders read exactly fastavro's values; each leaves to fastavro every value or
body it does not take (its refusals and errors included)."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tripwire.connectors.simulator import normal_card_payments
from tripwire.schemas.codec import AvroCodec, DecodeError, EncodeError
from tripwire.schemas.compiled import Unfit, compile_reader, compile_writer, zigzag
from tripwire.schemas.registry import SchemaStore, strip_logical

STORE = SchemaStore.default()
EVERY_VERSION = [s for name in STORE.names() for s in STORE.versions(name)]

# unions whose branch fastavro chooses by more than a value's type (an int where a
# double comes first, ints beyond a branch's range) or where the type's branch is
# not the first (a bool after a long)
TRICKY = {"type": "record", "name": "Tricky", "namespace": "t", "fields": [
    {"name": "long_first", "type": ["null", "long", "boolean"]},
    {"name": "double_first", "type": ["double", "long", "null"]},
    {"name": "int_then_long", "type": ["int", "long", "string"]},
    {"name": "with_default", "type": "long", "default": 7},
    {"name": "nested", "type": {"type": "array", "items": {
        "type": "record", "name": "Inner", "fields": [
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}},
            {"name": "m", "type": {"type": "map", "values": ["null", "long", "string"]}},
        ]}}},
    {"name": "again", "type": ["null", "Inner"], "default": None},
    {"name": "blob", "type": ["null", "bytes"]},
]}


def fastavro_bytes(schema: Any, value: Any) -> bytes | str:
    """What fastavro writes for ``value`` (as the codec calls it), or its error's type."""
    buf = io.BytesIO()
    try:
        schemaless_writer(buf, parse_schema(strip_logical(schema)), value,
                          strict_allow_default=True)
    except Exception as exc:  # compared, not hidden
        return type(exc).__name__
    return buf.getvalue()


def compiled_or_fastavro(schema: Any, value: Any) -> bytes | str:
    """The codec's way: the compiled encoder, fastavro for what it does not take."""
    encode = compile_writer(strip_logical(schema))
    assert encode is not None
    try:
        return encode(value)
    except Exception:  # Unfit, or an error of an odd value: fastavro's say
        return fastavro_bytes(schema, value)


def values(schema: Any, named: dict[str, Any], odd: bool) -> st.SearchStrategy[Any]:
    """Values of ``schema``; with ``odd``, now and then a value of another shape
    (a tuple for a list, an int for a double, a missing or extra field, a big int)."""
    if isinstance(schema, list):
        return st.one_of([values(b, named, odd) for b in schema])
    if isinstance(schema, str):
        if schema in named:
            return st.deferred(lambda: values(named[schema], named, odd))
        schema = {"type": schema}
    kind = schema["type"]
    if isinstance(kind, (dict, list)):
        return values(kind, named, odd)
    longs = st.integers(-(1 << 63), (1 << 63) - 1)
    plain: dict[str, st.SearchStrategy[Any]] = {
        "null": st.none(), "boolean": st.booleans(),
        "int": st.integers(-(1 << 31), (1 << 31) - 1),
        "long": st.one_of(st.integers(-200, 200), longs),
        "double": st.floats(allow_nan=True, allow_infinity=True),
        "string": st.text(max_size=80),
        "bytes": st.binary(max_size=80),
    }
    if kind in plain:
        if not odd:
            return plain[kind]
        return st.one_of(plain[kind], st.integers(-(1 << 70), 1 << 70), st.booleans(),
                         st.sampled_from(["NaN", b"x", 1.5]))
    if kind == "enum":
        named[schema["name"]] = schema
        return st.sampled_from(schema["symbols"] + (["NOT_A_SYMBOL"] if odd else []))
    if kind == "array":
        items = st.lists(values(schema["items"], named, odd), max_size=4)
        return st.one_of(items, items.map(tuple)) if odd else items
    if kind == "map":
        return st.dictionaries(st.text(max_size=12), values(schema["values"], named, odd),
                               max_size=5)
    assert kind in ("record", "error"), kind
    named[schema["name"]] = schema
    if "namespace" in schema:
        named[f"{schema['namespace']}.{schema['name']}"] = schema
    fields = {f["name"]: values(f["type"], named, odd) for f in schema["fields"]}
    record = st.fixed_dictionaries(fields)
    if not odd:
        return record
    return st.one_of(record, record.flatmap(lambda r: st.sampled_from(
        [dict(list(r.items())[1:]), {**r, "extra": 1}] if r else [{"extra": 1}])))


@pytest.mark.parametrize("schema", EVERY_VERSION, ids=lambda s: f"{s.name}.v{s.version}")
def test_every_schema_compiles(schema: Any) -> None:
    assert compile_writer(strip_logical(schema.source)) is not None


@pytest.mark.parametrize("schema", [s.source for s in EVERY_VERSION] + [TRICKY],
                         ids=[f"{s.name}.v{s.version}" for s in EVERY_VERSION] + ["tricky"])
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_the_same_bytes_as_fastavro(schema: Any, data: st.DataObject) -> None:
    value = data.draw(values(schema, {}, odd=False))
    assert compiled_or_fastavro(schema, value) == fastavro_bytes(schema, value)
    encode = compile_writer(strip_logical(schema))
    assert encode is not None
    if schema is not TRICKY:  # a value of the schema's own shape is the compiled one's
        assert encode(value) == fastavro_bytes(schema, value)


@pytest.mark.parametrize("schema", [STORE.get("tripwire.decisions.Decision").source, TRICKY],
                         ids=["decision", "tricky"])
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_values_of_other_shapes_are_left_to_fastavro(schema: Any, data: st.DataObject) \
        -> None:
    value = data.draw(values(schema, {}, odd=True))
    assert compiled_or_fastavro(schema, value) == fastavro_bytes(schema, value)


def fastavro_read(schema: Any, data: bytes) -> tuple[Any, int] | str:
    """What fastavro reads from ``data`` as the codec calls it (the value and where it
    ended; NaN as a string, to compare), or its error's type."""
    buf = io.BytesIO(data)
    try:
        value = schemaless_reader(buf, parse_schema(strip_logical(schema)), None)
    except Exception as exc:  # compared, not hidden
        return type(exc).__name__
    return comparable(value), buf.tell()


def compiled_or_fastavro_read(schema: Any, data: bytes) -> tuple[Any, int] | str:
    """The codec's way: the compiled decoder, fastavro for what it does not take."""
    decode = compile_reader(parse_schema(strip_logical(schema)))
    assert decode is not None
    try:
        value, end = decode(data, 0)
    except Exception:  # Unfit, or corrupt: fastavro's say
        return fastavro_read(schema, data)
    return comparable(value), end


def comparable(value: Any) -> Any:
    """NaN is not equal to itself: compared as a string."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


READABLE = [s.source for s in EVERY_VERSION] + [TRICKY]
READABLE_IDS = [f"{s.name}.v{s.version}" for s in EVERY_VERSION] + ["tricky"]


@pytest.mark.parametrize("schema", READABLE, ids=READABLE_IDS)
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_the_same_values_as_fastavro(schema: Any, data: st.DataObject) -> None:
    body = fastavro_bytes(schema, data.draw(values(schema, {}, odd=False)))
    assert isinstance(body, bytes)
    decode = compile_reader(parse_schema(strip_logical(schema)))
    assert decode is not None
    value, end = decode(body + b"\x00more", 0)  # read as far as the value goes
    assert (comparable(value), end) == fastavro_read(schema, body)
    assert end == len(body)


@pytest.mark.parametrize("schema", READABLE, ids=READABLE_IDS)
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_corrupt_bodies_read_as_fastavro_reads_them(schema: Any, data: st.DataObject) -> None:
    body = bytearray(fastavro_bytes(schema, data.draw(values(schema, {}, odd=False))))
    for _ in range(data.draw(st.integers(1, 3))):  # a few bytes changed, cut or added
        how = data.draw(st.sampled_from(["set", "cut", "insert"]))
        at = data.draw(st.integers(0, len(body)))
        if how == "cut":
            del body[at:]
        elif how == "insert":
            body[at:at] = bytes([data.draw(st.integers(0, 255))])
        elif at < len(body):
            body[at] = data.draw(st.sampled_from([0, 1, 2, 0x7F, 0x80, 0xFF]))
    assert compiled_or_fastavro_read(schema, bytes(body)) == fastavro_read(schema, bytes(body))


def test_what_the_compiled_decoder_leaves_to_fastavro() -> None:
    flag = {"type": "record", "name": "B", "fields": [{"name": "b", "type": "boolean"},
                                                      {"name": "n", "type": "long"}]}
    decode = compile_reader(parse_schema(flag))
    assert decode is not None
    assert decode(b"\x01\x02", 0) == ({"b": True, "n": 1}, 2)
    for body in (b"\x02\x02",             # a boolean byte of 2: fastavro reads True
                 b"\x00" + b"\xff" * 9 + b"\x7f",  # a long beyond 64 bits: fastavro wraps it
                 b"\x00\x80"):            # cut short: fastavro's EOFError
        with pytest.raises((Unfit, IndexError)):
            decode(body, 0)
        assert compiled_or_fastavro_read(flag, body) == fastavro_read(flag, body)
    lowest = b"\x00" + b"\xff" * 9 + b"\x01"  # ten bytes: the lowest long
    assert decode(lowest, 0) == ({"b": False, "n": -(1 << 63)}, 11)
    assert compiled_or_fastavro_read(flag, lowest) == fastavro_read(flag, lowest)
    blocks = {"type": "array", "items": "long"}  # a negative count: a block's size follows
    assert compiled_or_fastavro_read(blocks, b"\x03\x02\x02\x04\x00") == ([1, 2], 5)


def test_the_codec_reads_the_same_and_says_why_not() -> None:
    codec = AvroCodec(STORE)
    card = next(iter(normal_card_payments(1, 1_790_000_000_000, 1)))
    data = codec.encode("tripwire.events.CardPayment", card)
    schema, got = codec.decode(data)
    assert got == {**{f["name"]: None for f in schema.source["fields"]}, **card}
    assert fastavro_read(schema.source, data[10:]) == (got, len(data) - 10)
    with pytest.raises(DecodeError) as cut:
        codec.decode(data[:-3])
    assert cut.value.reason == "BODY_INVALID" and "EOFError" in str(cut.value)
    with pytest.raises(DecodeError) as longer:
        codec.decode(data + b"\x00")
    assert longer.value.reason == "TRAILING_BYTES"


def test_what_the_compiled_encoder_refuses() -> None:
    encode = compile_writer(strip_logical(TRICKY))
    assert encode is not None
    inner = {"e": "A", "m": {}}
    ok = {"long_first": None, "double_first": None, "int_then_long": 1 << 40,
          "with_default": 1, "nested": [inner], "again": inner, "blob": b"\x00"}
    assert encode(ok) == fastavro_bytes(TRICKY, ok)
    for odd in ({**ok, "double_first": 3},      # fastavro writes an int as its double
                {**ok, "int_then_long": 1 << 64},  # beyond both: fastavro refuses
                {k: v for k, v in ok.items() if k != "with_default"},  # the default
                {**ok, "extra": 1},             # a key too many: fastavro refuses
                {**ok, "nested": (inner,)}):    # a tuple for an array
        with pytest.raises(Unfit):
            encode(odd)
        assert compiled_or_fastavro(TRICKY, odd) == fastavro_bytes(TRICKY, odd)
    flag = {**ok, "long_first": True}  # a bool is the boolean branch's, wherever it is
    assert encode(flag)[:2] == fastavro_bytes(TRICKY, flag)[:2] == b"\x04\x01"


@pytest.mark.parametrize("schema", [
    {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]},
    {"type": "record", "name": "F", "fields": [{"name": "f", "type": "float"}]},
    {"type": "record", "name": "X", "fields": [
        {"name": "x", "type": {"type": "fixed", "name": "Four", "size": 4}}]},
    {"type": "record", "name": "S", "fields": [{"name": "s", "type": [
        "string", {"type": "enum", "name": "E", "symbols": ["A"]}]}]},
    {"type": "record", "name": "M", "fields": [{"name": "m", "type": [
        {"type": "map", "values": "long"}, {"type": "map", "values": "string"}]}]},
], ids=["recursive", "float", "fixed", "string-or-enum", "two-maps"])
def test_schemas_it_does_not_compile(schema: dict[str, Any]) -> None:
    assert compile_writer(schema) is None


def test_the_codec_writes_the_same_and_says_fastavros_errors() -> None:
    codec = AvroCodec(STORE)
    schema = STORE.get("tripwire.decisions.Decision")
    decision = {f["name"]: None for f in schema.source["fields"]}
    decision.update(decision_id="d", event_id="e", event_type="t", entity_key="k",
                    event_time=1, decided_at=2, outcome="DENY", actions=["BLOCK_CARD"],
                    rule_hits=[{"control_id": "c", "control_version": "v", "reason": "r",
                                "score": 0.5}],
                    features={"n": 3, "x": math.nan, "f": True, "s": "GB", "none": None,
                              "huge": 1 << 70},  # beyond a long: fastavro writes a double
                    feature_errors={}, feature_provenance={"n": "card"}, control_errors={},
                    control_versions={"c": "v"}, engine_version="e", latency_us=5,
                    repeat=False, subjects={"card": "k"}, typology="", attributes={})
    body = codec.encode("tripwire.decisions.Decision", decision)[10:]
    assert body == fastavro_bytes(schema.source, decision)
    fastavro_only = AvroCodec(STORE, compiled=False)  # bench's yardstick: fastavro only
    data = fastavro_only.encode("tripwire.decisions.Decision", decision)
    assert data == codec.encode("tripwire.decisions.Decision", decision)
    assert comparable(fastavro_only.decode(data)[1]) == comparable(codec.decode(data)[1])
    assert not fastavro_only._encoders[schema.fingerprint]  # none compiled
    assert codec._encoders[schema.fingerprint] and codec._decoders[schema.fingerprint]
    decision["features"]["huge"] = 5
    assert codec.encode("tripwire.decisions.Decision", decision)[10:] == \
        compile_writer(strip_logical(schema.source))(decision)  # type: ignore[misc]
    with pytest.raises(EncodeError, match="MAYBE"):  # fastavro's message
        codec.encode("tripwire.decisions.Decision", {**decision, "outcome": "MAYBE"})


@given(st.integers(-(1 << 63), (1 << 63) - 1))
def test_zigzag_is_avros_long(n: int) -> None:
    buf = io.BytesIO()
    schemaless_writer(buf, "long", n)
    assert zigzag(n) == buf.getvalue()
