"""A local HTTP server standing in for a bank's SMS or push gateway (the demo's and
the tests'): it takes JSON POSTs, can refuse them for a while (HTTP 503), and
counts per idempotency key what it accepted."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Gateway"]


class Gateway:
    def __init__(self) -> None:
        self.accepted: Counter[str] = Counter()  # idempotency key -> 2xx answers given
        self.refused = 0
        self.bodies: dict[str, dict[str, Any]] = {}
        self.taken_at: list[tuple[float, str]] = []  # (monotonic time, key) of each 2xx
        self.down_until = 0.0  # monotonic: answer 503 until then
        self.lock = threading.Lock()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a provider's gateway does

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                key = self.headers.get("Idempotency-Key", "")
                with gateway.lock:
                    down = time.monotonic() < gateway.down_until
                    if down:
                        gateway.refused += 1
                    else:
                        gateway.accepted[key] += 1
                        gateway.taken_at.append((time.monotonic(), key))
                        gateway.bodies[key] = json.loads(body)
                self.send_response(503 if down else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/sms"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def down_for(self, seconds: float) -> None:
        self.down_until = time.monotonic() + seconds

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
