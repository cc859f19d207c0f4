"""The peer in ``bench peer``: Quix Streams computing one exact sliding 10-minute
count per card over tripwire's own card payments (Avro single-object encoding),
in event time, exactly once, state in RocksDB with changelogs.

It runs in a virtual environment of its own (``bench peer`` makes it): Quix pins
confluent-kafka below the version tripwire uses, so it cannot share tripwire's.
Nothing of tripwire is imported here.

    <peer venv>/bin/python bench/peer_quix.py --bootstrap HOST:PORT --input T
        --output T --group G --schema card_payment.avsc --state-dir DIR
"""

from __future__ import annotations

import argparse
import io
import json
from typing import Any

from fastavro import parse_schema, schemaless_reader
from quixstreams import Application
from quixstreams.models.serializers import Deserializer

_HEADER = 10  # the single-object header: 2 magic bytes and the schema's 8-byte fingerprint


def _plain(node: Any) -> Any:
    """The schema without logical types: times read as integers, as tripwire reads them."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


class SingleObjectAvro(Deserializer):
    """Avro single-object encoding (the header, then the body) read with one schema."""

    def __init__(self, schema: dict[str, Any]) -> None:
        super().__init__()
        self._schema = parse_schema(_plain(schema))

    def __call__(self, value: bytes, ctx: Any) -> Any:
        return schemaless_reader(io.BytesIO(value[_HEADER:]), self._schema, None)


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("bootstrap", "input", "output", "group", "schema", "state-dir"):
        ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--window-ms", type=int, default=600_000)
    args = ap.parse_args()
    with open(args.schema) as f:
        schema = json.load(f)
    app = Application(broker_address=args.bootstrap, consumer_group=args.group,
                      auto_offset_reset="earliest", processing_guarantee="exactly-once",
                      commit_interval=1.0, state_dir=args.state_dir, loglevel="WARNING")
    source = app.topic(args.input, value_deserializer=SingleObjectAvro(schema),
                       key_deserializer="str",
                       timestamp_extractor=lambda value, *_: int(value["event_time"]))
    out = app.topic(args.output, value_serializer="json", key_serializer="str")
    counts = app.dataframe(source).sliding_window(duration_ms=args.window_ms).count().current()
    counts.to_topic(out)
    app.run()


if __name__ == "__main__":
    main()
