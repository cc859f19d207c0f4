"""Delivering one JSON body over HTTP until it is taken, the way every tripwire sink
does it: the body's id as the ``Idempotency-Key`` (a receiver keeps one of each),
a 2xx is delivered, a 5xx / 408 / 425 / 429 / timeout / refused connection is
tried again with exponential backoff until ``give_up_after_s``, and any other
answer is final (retrying cannot cure a 400)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["RETRY_STATUS", "Delivered", "post_until_taken"]

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Delivered:
    taken: bool  # a 2xx came back
    attempts: int
    detail: str = ""  # why not, when not


def post_until_taken(client: httpx.Client, url: str, body: dict[str, Any], key: str, *,
                     backoff_s: tuple[float, float], give_up_after_s: float,
                     stop: threading.Event,
                     before_attempt: Callable[[], None] = lambda: None,
                     on_failure: Callable[[], None] = lambda: None) -> Delivered:
    """POST ``body`` until a 2xx, a final refusal, ``give_up_after_s`` of failures or
    ``stop``; ``before_attempt`` runs before each try (a pause waits there)."""
    first, longest = backoff_s
    wait = first
    started = time.monotonic()
    attempts = 0
    while True:
        before_attempt()
        attempts += 1
        try:
            r = client.post(url, json=body, headers={"Idempotency-Key": key})
            if 200 <= r.status_code < 300:
                return Delivered(True, attempts)
            why = f"HTTP {r.status_code}: {r.text[:200]}"
            if r.status_code not in RETRY_STATUS:
                return Delivered(False, attempts, f"refused: {why}")
        except httpx.HTTPError as exc:
            why = f"{type(exc).__name__}: {exc}"
        on_failure()
        if time.monotonic() - started > give_up_after_s or stop.is_set():
            return Delivered(False, attempts, f"gave up after {attempts} attempts: {why}")
        if attempts in (1, 10, 100, 1000):
            logger.warning("%s to %s: %s; trying again", key, url, why)
        stop.wait(wait)
        wait = min(longest, wait * 2)
