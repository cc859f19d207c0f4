"""Producer SDK, `tripwire produce` and signed HTTP ingest against the real broker."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


def _serve(kafka: KafkaCluster, ns: str) -> tuple[subprocess.Popen[bytes], int]:
    """`tripwire ingest serve` as a real server on a free port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
           "TRIPWIRE_TOPIC_NAMESPACE": ns,
           "TRIPWIRE_INGEST_KEYS": "k-2026-11:fedcba9876543210-new"}
    proc = subprocess.Popen([sys.executable, "-m", "tripwire", "ingest", "serve", "--port",
                             str(port)], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(proc.stderr.read().decode() if proc.stderr else "no server")


def _raw(port: int, head: str, body_parts: Any = (), timeout: float = 20) -> tuple[int, dict]:
    """Send a request as raw bytes (any header, any framing); (status, JSON answer)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout) as s:
        s.sendall(head.encode("utf-8") + b"\r\n")
        try:
            for part in body_parts:
                s.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the rest: what a limit does
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + int(
                dict(line.split(b": ", 1) for line in data.split(b"\r\n\r\n")[0]
                     .split(b"\r\n")[1:] if b": " in line).get(b"content-length", b"0")):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1] or b"{}")


def _head(body_len: int | None, ts: str | None = None, sig: str | None = None,
          extra: str = "", body: bytes = b"") -> str:
    ts = ts if ts is not None else str(int(time.time()))
    sig = sig if sig is not None else sign(KEYS["k-2026-11"], ts, body)
    lines = ["POST /v1/events HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             "X-Tripwire-Key-Id: k-2026-11", f"X-Tripwire-Timestamp: {ts}",
             f"X-Tripwire-Signature: {sig}", "Connection: close"]
    lines.append(f"Content-Length: {body_len}" if body_len is not None
                 else "Transfer-Encoding: chunked")
    return "\r\n".join(lines + ([extra] if extra else [])) + "\r\n"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_ingest_is_bounded_and_never_answers_500(kafka: KafkaCluster, topics: str) -> None:
    """Against the real server (issue 19): a 200 MB unsigned body is refused from its
    Content-Length before it is read, a chunked one as soon as it passes the limit;
    malformed headers get 401 or 422; a 2 MB field 413; strings for numbers and
    booleans 422. The server stays small and goes on accepting good events."""
    proc, port = _serve(kafka, topics)
    try:
        base = _rss_mb(proc.pid)
        started = time.monotonic()
        huge = iter([b"x" * 1_048_576] * 200)
        status, answer = _raw(port, _head(200 * 1_048_576, sig="v1=" + "0" * 64), huge)
        assert (status, answer["reasons"][0]["code"]) == (413, "BODY_TOO_LARGE")
        assert time.monotonic() - started < 10
        chunked = (b"%x\r\n%s\r\n" % (65536, b"y" * 65536) for _ in range(3000))
        status, answer = _raw(port, _head(None), chunked)
        assert (status, answer["reasons"][0]["code"]) == (413, "BODY_TOO_LARGE")
        assert _rss_mb(proc.pid) - base < 50, (base, _rss_mb(proc.pid))

        good = json.dumps(_events(1)[0]).encode()
        for ts, code in (("1" * 5000, "BAD_TIMESTAMP"), ("١٧٦٤٦٦٩٦٠٠", "BAD_TIMESTAMP"),
                         ("-5", "BAD_TIMESTAMP")):
            status, answer = _raw(port, _head(len(good), ts=ts), [good])
            assert (status, answer["reasons"][0]["code"]) == (401, code), ts[:20]
        status, answer = _raw(port, _head(len(good), sig="v1=ü" + "0" * 63), [good])
        assert (status, answer["reasons"][0]["code"]) == (401, "BAD_SIGNATURE")
        status, answer = _raw(port, _head(len(good), body=good,
                                          extra="Idempotency-Key: " + "k" * 500), [good])
        assert (status, answer["reasons"][0]["code"]) == (422, "BAD_IDEMPOTENCY_KEY")

        event = _events(4)
        big = json.dumps({**event[0], "merchant_id": "m" * 2_000_000}).encode()
        status, answer = _raw(port, _head(len(big), body=big), [big])
        assert (status, answer["reasons"][0]["code"]) == (413, "BODY_TOO_LARGE")
        for n, (field, value) in enumerate((("amount_minor", "1234"), ("card_present", "true"))):
            coerced = json.dumps({**event[1 + n], field: value}).encode()
            status, answer = _raw(port, _head(len(coerced), body=coerced), [coerced])
            assert status == 422 and answer["reasons"][0]["field"] == field, answer
        ok = json.dumps(event[3]).encode()
        status, answer = _raw(port, _head(len(ok), body=ok), [ok])
        assert status == 202, answer
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.stderr is not None
    assert "Traceback" not in proc.stderr.read().decode()
