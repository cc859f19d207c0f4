"""Producer SDK, `tripwire produce` and signed HTTP ingest against the real broker."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tripwire.broker import KafkaCluster
from tripwire.connectors.events import read_topic
from tripwire.connectors.http_ingest import IngestConfig, create_app, parse_keys, sign
from tripwire.connectors.sdk import InvalidEvent, TripwireProducer
from tripwire.connectors.simulator import normal_card_payments
from tripwire.schemas.codec import AvroCodec
from tripwire.streams.topics import topic

pytestmark = pytest.mark.kafka
CODEC = AvroCodec.from_url(None)


def _json_event(rec: dict) -> dict:
    return {"event_type": "CardPayment", **rec, "event_time": dt.datetime.fromtimestamp(
        rec["event_time"] / 1000, dt.UTC).isoformat().replace("+00:00", "Z")}


def _events(n: int) -> list[dict]:
    return [_json_event(r) for r in normal_card_payments(3, int(time.time() * 1000) - 60_000,
                                                         n)]


def test_sdk_refuses_before_sending_and_confirms_delivery(kafka: KafkaCluster,
                                                          topics: str) -> None:
    prod = TripwireProducer(kafka.bootstrap, namespace=topics)
    good = _events(3)
    for e in good:
        prod.send(e)
    with pytest.raises(InvalidEvent) as info:
        prod.send({**good[0], "currency": "XYZ", "mcc": "54"})
    assert {c for c, _, _ in info.value.reasons} == {"UNKNOWN_CURRENCY", "INVALID_MCC"}
    assert prod.flush().delivered == 3
    msgs = read_topic(kafka.bootstrap, [topic("card_payments", topics)], 3, timeout=20)
    assert sorted(CODEC.decode(m.value())[1]["event_id"] for m in msgs) == \
        sorted(e["event_id"] for e in good)
    assert {m.key() for m in msgs} == {e["card_token"].encode() for e in good}


def test_produce_command_summarises_and_keeps_refused_lines(kafka: KafkaCluster, topics: str,
                                                           tmp_path: Path) -> None:
    events = _events(8)
    lines = [json.dumps(e) for e in events]
    lines.insert(2, '{"event_type": "CardPayment", "event_id": "broken"}')
    lines.insert(5, "this is not json")
    lines.insert(6, json.dumps({**events[0], "event_id": "2b0c8a0e-0000-4000-8000-00000000000x"}))
    src = tmp_path / "events.jsonl"
    src.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
           "TRIPWIRE_TOPIC_NAMESPACE": topics}
    res = subprocess.run([sys.executable, "-m", "tripwire", "produce", "--file", str(src)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr  # something was refused
    assert "11 events: 8 accepted by Kafka, 3 refused" in res.stdout
    refused = [json.loads(x) for x in (tmp_path / "events.refused.jsonl").read_text()
               .splitlines()]
    assert [r["line"] for r in refused] == [3, 6, 7]
    assert refused[2]["reasons"][0] == {"code": "INVALID_ID", "field": "event_id",
                                        "detail": refused[2]["reasons"][0]["detail"]}
    assert len(read_topic(kafka.bootstrap, [topic("card_payments", topics)], 8,
                          timeout=20)) == 8


KEYS = parse_keys("k-2026-10:0123456789abcdef-old,k-2026-11:fedcba9876543210-new")


def _post(client: TestClient, body: bytes, kid: str = "k-2026-11", ts: int | None = None,
          key: str | None = None, secret: bytes | None = None):  # type: ignore[no-untyped-def]
    ts_s = str(int(time.time()) if ts is None else ts)
    headers = {"X-Tripwire-Key-Id": kid, "X-Tripwire-Timestamp": ts_s,
               "X-Tripwire-Signature": sign(secret or KEYS.get(kid, b"x" * 16), ts_s, body),
               "Content-Type": "application/json"}
    if key:
        headers["Idempotency-Key"] = key
    return client.post("/v1/events", content=body, headers=headers)


def test_http_ingest_signature_staleness_rotation_and_replay(kafka: KafkaCluster,
                                                             topics: str) -> None:
    prod = TripwireProducer(kafka.bootstrap, namespace=topics)
    app = create_app(prod, IngestConfig(KEYS, tolerance_s=300))
    e1, e2, e3 = (json.dumps(e).encode() for e in _events(3))
    with TestClient(app) as client:
        ok = _post(client, e1, key="idem-1")
        assert ok.status_code == 202, ok.text
        first = ok.json()
        assert first["status"] == "accepted" and first["offset"] >= 0  # acknowledged by Kafka
        again = _post(client, e1, key="idem-1")  # replay: the original answer, no new write
        assert again.status_code == 202 and again.json() == first
        clash = _post(client, e2, key="idem-1")
        assert clash.status_code == 409
        assert clash.json()["reasons"][0]["code"] == "IDEMPOTENCY_KEY_REUSED"

        assert _post(client, e2, kid="k-2026-10").status_code == 202  # the older key works too
        assert _post(client, e2, kid="k-2026-10").json()["offset"] == \
            _post(client, e2, kid="k-2026-11").json()["offset"]  # keyed by event id by default

        def code(resp):  # type: ignore[no-untyped-def]
            return resp.status_code, resp.json()["reasons"][0]["code"]

        assert code(_post(client, e3, kid="k-1999")) == (401, "UNKNOWN_KEY")
        assert code(_post(client, e3, secret=b"wrong-secret-wrong")) == (401, "BAD_SIGNATURE")
        assert code(_post(client, e3, ts=int(time.time()) - 301)) == (401, "STALE_TIMESTAMP")
        assert code(_post(client, e3, ts=int(time.time()) + 900)) == (401, "STALE_TIMESTAMP")
        bad = json.loads(e3)
        bad["amount_minor"] = -5
        resp = _post(client, json.dumps(bad).encode())
        assert resp.status_code == 422
        assert resp.json()["reasons"] == [{"code": "INVALID_AMOUNT", "field": "amount_minor",
                                           "detail": resp.json()["reasons"][0]["detail"]}]
        assert code(_post(client, b"{not json")) == (422, "INVALID_TYPE")

    msgs = read_topic(kafka.bootstrap, [topic("card_payments", topics)], 10, timeout=10)
    ids = sorted(CODEC.decode(m.value())[1]["event_id"] for m in msgs)
    assert ids == sorted([json.loads(e1)["event_id"], json.loads(e2)["event_id"]])
