"""Batch features: reference data loaded from a file and refreshed on a schedule
(account age, known-good payees, high-risk merchants).

The file is JSON Lines, one row per line:

    {"kind": "account", "account_id": "acc-1", "opened": "2019-04-02",
     "known_payees": ["401234-12345678"]}
    {"kind": "merchant", "merchant_id": "m-77", "high_risk": true}

A refresh that fails keeps the last good table and says so in the node's error.

>>> table = BatchTable(None)
>>> table.features({"account_id": "a", "event_time": 0})
({}, 'no batch table configured')
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from tripwire.schemas.validate import DAY_MS

__all__ = ["BatchTable"]

logger = logging.getLogger(__name__)


class BatchTable:
    """The batch node: lookups in a table reloaded when its file changes."""

    def __init__(self, path: Path | None, refresh_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.refresh_s = refresh_s
        self.clock = clock
        self.accounts: dict[str, dict[str, Any]] = {}
        self.merchants: dict[str, dict[str, Any]] = {}
        self.loaded_mtime: float | None = None
        self.error: str | None = None
        self._checked = -float("inf")
        if path is not None:
            self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        now = self.clock()
        if self.path is None or (not force and now - self._checked < self.refresh_s):
            return
        self._checked = now
        try:
            mtime = self.path.stat().st_mtime
            if mtime == self.loaded_mtime:
                return
            accounts, merchants = {}, {}
            for n, line in enumerate(self.path.read_bytes().splitlines(), start=1):
                if not line.strip():
                    continue
                row = orjson.loads(line)
                if row.get("kind") == "account":
                    row["opened_day"] = (dt.date.fromisoformat(row["opened"])
                                         - dt.date(1970, 1, 1)).days
                    row["known_payees"] = frozenset(row.get("known_payees", ()))
                    accounts[row["account_id"]] = row
                elif row.get("kind") == "merchant":
                    merchants[row["merchant_id"]] = row
                else:
                    raise ValueError(f"line {n}: kind must be account or merchant")
            self.accounts, self.merchants = accounts, merchants
            self.loaded_mtime, self.error = mtime, None
            logger.info("batch table %s: %d accounts, %d merchants", self.path,
                        len(accounts), len(merchants))
        except (OSError, ValueError, KeyError, orjson.JSONDecodeError) as exc:
            self.error = f"batch table {self.path} not refreshed: {exc}"
            logger.warning(self.error)

    def features(self, view: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
        """(values, error) for one event view."""
        if self.path is None:
            return {}, "no batch table configured"
        self.refresh()
        if self.loaded_mtime is None:
            return {}, self.error
        out: dict[str, Any] = {}
        acc = self.accounts.get(view.get("account_id") or "")
        if acc is not None:
            out["account_age_days"] = view["event_time"] // DAY_MS - acc["opened_day"]
            if view.get("counterparty"):
                out["payee_known"] = view["counterparty"] in acc["known_payees"]
        merchant = view.get("merchant_id")
        if merchant:
            out["merchant_high_risk"] = bool(self.merchants.get(merchant, {}).get("high_risk"))
        return out, self.error
