"""`tripwire dashboard` in headless Chromium (Debian's `chromium`), beside a running
pipeline worker: the page shows the live numbers (decisions, the mix, lag, the
pause, a SOC alert, rule hits, quarantine reasons), and a screenshot is saved."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import Worker, cards_with_an_attack, eventually, free_port

from tripwire.broker import KafkaCluster
from tripwire.connectors.events import EventProducer, read_topic
from tripwire.schemas.codec import AvroCodec
from tripwire.streams.topics import topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
CODEC = AvroCodec.from_url(None)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _chromium(tmp: Path, url: str, *what: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``url`` with the flags this closed machine needs (no
    background networking), a fresh profile, 8 s of page time for its scripts."""
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=8000",
         "--window-size=1280,1000", *what, url],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def _summary(url: str) -> dict[str, Any] | None:
    try:
        return dict(httpx.get(f"{url}/api/summary", timeout=5).json())
    except httpx.HTTPError:
        return None


def test_the_dashboard_shows_a_running_pipeline_in_chromium(kafka: KafkaCluster, topics: str,
                                                            tmp_path: Path) -> None:
    assert os.path.exists(CHROMIUM), "make setup installs Debian's chromium for this test"
    metrics_port, port = free_port(), free_port()
    worker = Worker(kafka, topics, tmp_path / "w", TRIPWIRE_METRICS_PORT=str(metrics_port))
    worker.start()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
           "TRIPWIRE_TOPIC_NAMESPACE": topics}
    board = subprocess.Popen(
        [sys.executable, "-m", "tripwire", "dashboard", "--port", str(port), "--metrics",
         f"http://127.0.0.1:{metrics_port}/metrics", "--lookback", "2h"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        events = cards_with_an_attack(kafka, topics, 7, 30, 6)
        now = int(time.time() * 1000)
        prod = EventProducer(kafka.bootstrap, CODEC)
        prod.send(topic("alert_control", topics), "tripwire.ops.AuditRecord", {
            "audit_id": "pause-1", "at": now - 30_000, "actor": "monitor",
            "action": "alerts.pause", "subject": "customer_alerts", "reason": "a spike",
            "details_json": "{}", "prev_hash": "", "hash": ""}, "customer_alerts")
        prod.send(topic("soc_alerts", topics), "tripwire.alerts.SystemicAttackAlert", {
            "alert_id": "soc-1", "raised_at": now - 20_000, "state": "RAISED",
            "window_ms": 600_000, "observed": 40, "baseline": 8.0, "ratio": 5.0,
            "common_pattern": {"entry_mode": "MAGSTRIPE_CONTACTLESS"}, "pattern_share": 0.9,
            "customer_alerts_paused": True,
            "summary": "systemic attack: magstripe contactless abroad"}, "customer_alerts")
        prod.flush()
        decided = [CODEC.decode(m.value())[1] for m in read_topic(
            kafka.bootstrap, [topic("decisions", topics)], len(events), timeout=120)]
        mix = Counter(d["outcome"] for d in decided)
        assert mix["DENY"] == 6

        def ready() -> dict[str, Any] | None:
            s = _summary(url)
            ok = s is not None and s["decisions"] == len(events) and s["quarantine"] and \
                s["soc"] and s["paused"] and s["workers"]["lag"] == 0 and \
                s["workers"]["events_per_s"] is not None and sum(
                    w["alerts"] for w in s["alerts"]) >= 1
            return s if ok else None

        summary = eventually(ready, 90)
        assert summary is not None, _summary(url)
        assert summary["mix"] == dict(mix)
        assert ["card_outliers", 6] in summary["top_hits"]
        assert summary["quarantine"] == {"INVALID_ID": 1}
        assert any(w["paused"] for w in summary["alerts"])

        # the page, as a browser renders it after its script has asked for the numbers
        dom = _chromium(tmp_path, url, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        page = dom.stdout
        assert re.search(rf'id="decisions-total">{len(events)}<', page), page[:3000]
        assert re.search(r'id="mix-DENY">6<', page)
        assert re.search(r'id="lag">0<', page)
        assert re.search(r'id="paused">PAUSED<', page)
        assert "systemic attack: magstripe contactless abroad" in page
        assert re.search(r'id="hits-card_outliers">6<', page)
        assert re.search(r'id="quarantine-INVALID_ID">1<', page)
        assert "<rect" in page and "<polyline" in page  # the alerts chart was drawn
        shot = tmp_path / "dashboard.png"
        done = _chromium(tmp_path, url, f"--screenshot={shot}")
        assert done.returncode == 0 and shot.stat().st_size > 10_000, done.stderr[-2000:]
        keep = os.environ.get("TRIPWIRE_SCREENSHOTS")
        if keep:  # where CI keeps it
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(keep) / "dashboard.png")
        print(f"screenshot: {shot}")
    finally:
        board.terminate()
        board.wait(20)
        code, _ = worker.stop(within_s=30)
    assert code == 0, worker.stderr()
