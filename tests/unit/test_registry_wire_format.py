"""The Confluent wire format, checked against confluent-kafka's own Avro serializers
(with its in-process mock registry: no Kafka involved)."""

import json

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient, record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from tripwire.connectors.simulator import CARD_SCHEMA, normal_card_payments
from tripwire.schemas.codec import AvroCodec, DecodeError, RegistryFraming
from tripwire.schemas.registry import SchemaStore

STORE = SchemaStore.default()
EVENT = next(normal_card_payments(2, 1_790_000_000_000, 1))
CTX = SerializationContext("payments.card.v1", MessageField.VALUE)


@pytest.fixture
def client() -> SchemaRegistryClient:
    return SchemaRegistryClient.new_client({"url": "mock://tripwire-test"})


def test_we_write_what_confluent_tooling_reads(client: SchemaRegistryClient) -> None:
    codec = AvroCodec(STORE, RegistryFraming(client, STORE))
    data = codec.encode(CARD_SCHEMA, EVENT)
    assert data[0] == 0
    sid = int.from_bytes(data[1:5], "big")
    assert client.get_latest_version(CARD_SCHEMA).schema_id == sid
    back = AvroDeserializer(client)(data, CTX)
    assert back["event_time"].timestamp() * 1000 == EVENT["event_time"]  # a datetime there
    assert {k: v for k, v in back.items() if k != "event_time"} == \
        {k: v for k, v in EVENT.items() if k != "event_time"}


def test_we_read_what_confluent_tooling_writes(client: SchemaRegistryClient) -> None:
    ser = AvroSerializer(client, json.dumps(STORE.get(CARD_SCHEMA).source),
                         conf={"subject.name.strategy": record_subject_name_strategy})
    data = ser(EVENT, CTX)
    codec = AvroCodec(STORE, RegistryFraming(client, STORE))
    schema, rec = codec.decode(data)
    assert schema.name == CARD_SCHEMA and rec == EVENT
    assert codec.leading(data, {CARD_SCHEMA: "event_id"}) == (schema, EVENT["event_id"])


def test_both_framings_are_accepted_and_unknown_ids_refused(
        client: SchemaRegistryClient) -> None:
    plain = AvroCodec(STORE).encode(CARD_SCHEMA, EVENT)
    codec = AvroCodec(STORE, RegistryFraming(client, STORE))
    assert codec.decode(plain)[1] == EVENT
    with pytest.raises(DecodeError) as info:
        codec.decode(b"\x00\x00\x00\x03\xe7" + plain[10:])
    assert info.value.reason == "UNKNOWN_SCHEMA" and "999" in info.value.detail
    with pytest.raises(DecodeError) as info:
        AvroCodec(STORE).decode(codec.encode(CARD_SCHEMA, EVENT))
    assert info.value.reason == "UNKNOWN_SCHEMA" and "SCHEMA_REGISTRY_URL" in info.value.detail


def test_a_registered_schema_that_is_not_ours_is_refused(client: SchemaRegistryClient) -> None:
    from confluent_kafka.schema_registry import Schema

    foreign = {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "int"}]}
    sid = client.register_schema("Other", Schema(json.dumps(foreign), "AVRO"))
    codec = AvroCodec(STORE, RegistryFraming(client, STORE))
    with pytest.raises(DecodeError) as info:
        codec.decode(b"\x00" + sid.to_bytes(4, "big") + b"\x02")
    assert info.value.reason == "UNKNOWN_SCHEMA"
