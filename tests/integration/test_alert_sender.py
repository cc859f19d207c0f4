"""The customer-alert sender against the real broker and a real local HTTP gateway:
a gateway that fails for a while and then recovers receives every alert exactly
once; a pause holds every alert, and the resume accounts for each one."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest

from tripwire.broker import KafkaCluster
from tripwire.connectors import alert_sender, control_watch
from tripwire.connectors.alert_sender import AlertSender, SenderConfig
from tripwire.connectors.control_watch import CONTROL_KEY, ControlWatch
from tripwire.connectors.events import EventProducer, read_to_end
from tripwire.connectors.standin_gateway import Gateway
from tripwire.controls.actions import ALERT_SCHEMA
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.registry import SchemaStore
from tripwire.streams.topics import topic

CODEC = AvroCodec(SchemaStore.default())


def _alerts(n: int, created_at: int, prefix: str = "al") -> list[dict[str, Any]]:
    return [{"alert_id": f"{prefix}{i}", "account_id": f"acct-{i % 7}", "decision_id": f"d{i}",
             "channel": "SMS", "template": "fraud_check.card_testing",
             "parameters": {"event_id": f"e{i}"}, "created_at": created_at} for i in range(n)]


def _publish(kafka: KafkaCluster, ns: str, alerts: list[dict[str, Any]]) -> None:
    prod = EventProducer(kafka.bootstrap, CODEC)
    for a in alerts:
        prod.send(topic("customer_alerts", ns), ALERT_SCHEMA, a, a["account_id"])
    prod.flush()


def _control(kafka: KafkaCluster, ns: str, action: str) -> None:
    prod = EventProducer(kafka.bootstrap, CODEC)
    prod.send(topic("alert_control", ns), "tripwire.ops.AuditRecord", {
        "audit_id": f"{action}-{time.time()}", "at": int(time.time() * 1000), "actor": "test",
        "action": action, "subject": "customer_alerts", "reason": "test", "details_json": "{}"},
        CONTROL_KEY.decode())
    prod.flush()


def _outcomes(kafka: KafkaCluster, ns: str) -> dict[str, list[str]]:
    got: dict[str, list[str]] = {}
    for m in read_to_end(kafka.bootstrap, topic("alert_deliveries", ns)):
        d = CODEC.decode(m.value())[1]
        got.setdefault(d["alert_id"], []).append(d["status"])
    return got


def _sender(kafka: KafkaCluster, ns: str, url: str, **config: Any) -> tuple[
        AlertSender, threading.Event, threading.Thread]:
    sender = AlertSender(kafka.bootstrap, lambda k: topic(k, ns), CODEC,
                         SenderConfig(url, backoff_s=(0.05, 0.5), timeout_s=2.0, **config),
                         f"{ns}alert-sender")
    stop = threading.Event()
    t = threading.Thread(target=sender.run, args=(stop,), daemon=True)
    t.start()
    return sender, stop, t


def _wait(until: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_gateway_down_for_a_while_gets_every_alert_exactly_once(
        kafka: KafkaCluster, topics: str) -> None:
    gw = Gateway()
    try:
        alerts = _alerts(120, int(time.time() * 1000))
        _publish(kafka, topics, alerts)
        gw.down_for(6.0)  # from before the sender has joined its group
        sender, stop, t = _sender(kafka, topics, gw.url)
        _wait(lambda: len(_outcomes(kafka, topics)) == len(alerts))
        stop.set()
        t.join(30)
        assert gw.refused > 0, "the gateway was down at first"
        assert gw.accepted == Counter({a["alert_id"]: 1 for a in alerts})
        assert _outcomes(kafka, topics) == {a["alert_id"]: ["SENT"] for a in alerts}
        assert sender.stats.failures >= 1
        body = gw.bodies["al3"]
        assert body["account_id"] == "acct-3" and body["template"] == "fraud_check.card_testing"
    finally:
        gw.close()


def test_a_pause_holds_every_alert_and_the_resume_accounts_for_each(
        kafka: KafkaCluster, topics: str) -> None:
    gw = Gateway()
    try:
        _control(kafka, topics, "alerts.pause")
        now = int(time.time() * 1000)
        fresh = _alerts(40, now, "fresh")
        stale = _alerts(14, now - 3 * 60 * 60_000, "stale")  # three hours old
        _publish(kafka, topics, stale + fresh)
        sender, stop, t = _sender(kafka, topics, gw.url, control_poll_s=0.2)
        time.sleep(3.0)
        assert not gw.accepted and not _outcomes(kafka, topics), "nothing sent while paused"
        _control(kafka, topics, "alerts.resume")
        _wait(lambda: len(_outcomes(kafka, topics)) == len(fresh) + len(stale))
        stop.set()
        t.join(30)
        outcomes = _outcomes(kafka, topics)
        assert {outcomes[a["alert_id"]][0] for a in fresh} == {"SENT"}
        assert {outcomes[a["alert_id"]][0] for a in stale} == {"SUMMARISED"}
        assert all(len(v) == 1 for v in outcomes.values())
        # the stale ones went as one summary per customer, each summary once
        summaries = [b for b in gw.bodies.values() if b["template"] == "alerts_summary"]
        assert sorted(b["account_id"] for b in summaries) == sorted(
            {a["account_id"] for a in stale})
        assert sum(int(b["parameters"]["count"]) for b in summaries) == len(stale)
        assert all(n == 1 for n in gw.accepted.values())
        assert sender.stats.paused_s > 0 or sender.stats.outcomes["SENT"] == len(fresh)
    finally:
        gw.close()


def test_an_alert_the_gateway_refuses_goes_to_the_dead_letters_with_the_reason(
        kafka: KafkaCluster, topics: str) -> None:
    gw = Gateway()
    try:
        alerts = _alerts(5, int(time.time() * 1000))
        _publish(kafka, topics, alerts)
        gw.down_for(60.0)
        sender, stop, t = _sender(kafka, topics, gw.url, give_up_after_s=1.0)
        _wait(lambda: len(_outcomes(kafka, topics)) == len(alerts))
        stop.set()
        t.join(30)
        assert {v[0] for v in _outcomes(kafka, topics).values()} == {"DEAD"}
        assert sender.stats.outcomes == Counter({"DEAD": len(alerts)})
        dead = read_to_end(kafka.bootstrap, topic("customer_alerts_dead", topics))
        assert sorted(CODEC.decode(m.value())[1]["alert_id"] for m in dead) == \
            sorted(a["alert_id"] for a in alerts)
        assert all(b"HTTP 503" in dict(m.headers())["reason"] for m in dead)
    finally:
        gw.close()


def test_a_sender_that_fails_to_start_closes_the_consumers_it_opened(
        kafka: KafkaCluster, topics: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A start that fails (the pause switch unreadable: a topic whose leader has not
    settled) closes what it opened: a consumer left to the garbage collector can
    hang the process in librdkafka's destroy (a CI run hung so)."""
    opened: list[Any] = []

    def recorded(make: Any) -> Any:
        def consumer(*args: Any, **kwargs: Any) -> Any:
            opened.append(make(*args, **kwargs))
            return opened[-1]
        return consumer

    def unreadable(self: ControlWatch, topic_name: str) -> None:
        raise RuntimeError(f"{topic_name}: not readable")

    monkeypatch.setattr(alert_sender, "consumer", recorded(alert_sender.consumer))
    monkeypatch.setattr(control_watch, "consumer", recorded(control_watch.consumer))
    monkeypatch.setattr(ControlWatch, "_catch_up", unreadable)
    with pytest.raises(RuntimeError, match="not readable"):
        AlertSender(kafka.bootstrap, lambda k: topic(k, topics), CODEC,
                    SenderConfig("http://127.0.0.1:9"), f"{topics}alert-sender")
    assert len(opened) == 2  # the sender's and its pause switch's
    for c in opened:
        with pytest.raises(RuntimeError, match="closed"):
            c.assignment()
