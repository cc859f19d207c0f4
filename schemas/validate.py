"""Validation of meaning, not just type. A message with any invalid field is
refused — above all matching fields (IDs, dates, amounts) — and never repaired.

Every check returns reasons ``(code, field, detail)``; an empty list means valid.
All checks are pure: the processing time is passed in.

>>> v = Validator()
>>> v.validate("tripwire.events.FpsMessage", {"settlement_date": 10**6}, now_ms=0)[0][0]
'MISSING_FIELD'
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tripwire.schemas.reference import COUNTRIES, CURRENCIES, GBP_PER_UNIT

__all__ = ["DOTTED_QUAD", "Reason", "ValidationPolicy", "Validator"]

Reason = tuple[str, str | None, str]  # (code, field path, detail)

DAY_MS = 86_400_000
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[1-8][0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-"
                   r"[0-9a-fA-F]{12}$")
_ENTITY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{2,63}$")
_SORT_CODE = re.compile(r"^\d{6}$")
_ACCOUNT_NUMBER = re.compile(r"^\d{8}$")
_MCC = re.compile(r"^\d{4}$")
_FPS_REFERENCE = re.compile(r"^[A-Za-z0-9]{1,35}$")
# The FPS character set for the payment reference (18 characters at most).
_FPS_TEXT = re.compile(r"^[A-Za-z0-9 /\-?:().,'+&]{1,18}$")

_CARD_PRESENT_MODES = {"CHIP", "CONTACTLESS", "MAGSTRIPE", "MAGSTRIPE_CONTACTLESS"}


@dataclass(frozen=True)
class ValidationPolicy:
    """Limits a bank sets; the defaults follow UK schemes."""

    max_event_age_ms: int | None = 7 * DAY_MS  # None: accept any age (backtests)
    max_clock_skew_ms: int = 5 * 60_000
    card_amount_limit_gbp_minor: int = 5_000_000  # £50,000 per authorisation
    topup_amount_limit_gbp_minor: int = 1_000_000  # £10,000 per top-up
    fps_amount_limit_minor: int = 100_000_000  # FPS scheme limit: £1,000,000
    fps_settlement_days_after: int = 4  # weekend + bank holiday
    fps_settlement_days_before: int = 1  # a message stamped just after midnight


_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # ASCII digits, no leading zero
DOTTED_QUAD = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}\Z")  # an IPv4 address ipaddress takes

class _Checks:
    """Collects reasons for one record."""

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.r = record
        self.reasons: list[Reason] = []

    def fail(self, code: str, field: str | None, detail: str) -> None:
        self.reasons.append((code, field, detail))

    def present(self, field: str) -> bool:
        if self.r.get(field) is None:
            self.fail("MISSING_FIELD", field, f"{field} is required")
            return False
        return True

    def pattern(self, field: str, rx: re.Pattern[str], code: str, what: str,
                required: bool = True) -> None:
        value = self.r.get(field)
        if value is None:
            if required:
                self.fail("MISSING_FIELD", field, f"{field} is required")
            return
        if not isinstance(value, str) or not rx.match(value):
            self.fail(code, field, f"{value!r} is not {what}")

    def one_of(self, field: str, allowed: frozenset[str], code: str, what: str) -> None:
        if self.present(field) and self.r[field] not in allowed:
            self.fail(code, field, f"{self.r[field]!r} is not {what}")

    def ip(self, field: str) -> None:
        value = self.r.get(field)
        if value is None or (type(value) is str and DOTTED_QUAD.match(value)):
            return  # the usual case, without ipaddress's parse (~3 µs)
        try:
            ipaddress.ip_address(value)
        except (ValueError, TypeError):
            self.fail("INVALID_IP", field, f"{value!r} is not an IPv4 or IPv6 address")

    def amount(self, field: str, limit: int, currency_note: str = "") -> None:
        if not self.present(field):
            return
        value = self.r[field]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            self.fail("INVALID_AMOUNT", field, f"{value!r} must be a positive whole number "
                      "of minor units")
        elif value > limit:
            self.fail("AMOUNT_OVER_LIMIT", field, f"{value} exceeds the limit of "
                      f"{limit}{currency_note}")

    def event_time(self, now_ms: int, policy: ValidationPolicy) -> None:
        if not self.present("event_time"):
            return
        t = self.r["event_time"]
        if not isinstance(t, int) or isinstance(t, bool):
            self.fail("INVALID_DATE", "event_time", f"{t!r} is not a timestamp")
        elif t > now_ms + policy.max_clock_skew_ms:
            ahead = t - now_ms
            when = f"{ahead / DAY_MS:.1f} days" if ahead > DAY_MS else \
                f"{ahead / 60_000:.1f} minutes"
            self.fail("INVALID_DATE", "event_time", f"{_instant(t)} is {when} in the future "
                      f"(clock skew allowed: {policy.max_clock_skew_ms // 1000}s)")
        elif policy.max_event_age_ms is not None and t < now_ms - policy.max_event_age_ms:
            self.fail("INVALID_DATE", "event_time",
                      f"{_instant(t)} is {(now_ms - t) / DAY_MS:.1f} days old "
                      f"(limit {policy.max_event_age_ms / DAY_MS:g})")

    def requires(self, cond: bool, field: str, why: str) -> None:
        if cond and self.r.get(field) in (None, ""):
            self.fail("MISSING_FIELD", field, f"{field} is required {why}")

    def forbids(self, cond: bool, field: str, why: str) -> None:
        if cond and self.r.get(field) is not None:
            self.fail("INCONSISTENT", field, f"{field} must be empty {why}")


_EPOCH = dt.date(1970, 1, 1)


def _day(days: object) -> str:
    """A day number (days since 1970-01-01, Avro's ``date``) as the date the sender
    wrote (``1900-03-09``); anything else as it came."""
    if isinstance(days, int) and not isinstance(days, bool):
        try:
            return (_EPOCH + dt.timedelta(days=days)).isoformat()
        except OverflowError:
            pass
    return repr(days)


def _instant(ms: int) -> str:
    """Milliseconds since the epoch as an ISO-8601 UTC time, as the sender wrote it."""
    try:
        return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)
                ).isoformat().replace("+00:00", "Z")
    except OverflowError:
        return str(ms)


class Validator:
    """Semantic validation for every inbound event type."""

    def __init__(self, policy: ValidationPolicy | None = None,
                 gbp_rates: Mapping[str, float] | None = None) -> None:
        self.policy = policy or ValidationPolicy()
        self.rates = gbp_rates or GBP_PER_UNIT
        self._by_type: dict[str, Callable[[_Checks, int], None]] = {
            "tripwire.events.CardPayment": self._card,
            "tripwire.events.LoginEvent": self._login,
            "tripwire.events.FpsMessage": self._fps,
        }

    def handles(self, schema_name: str) -> bool:
        return schema_name in self._by_type

    def validate(self, schema_name: str, record: Mapping[str, Any], now_ms: int) \
            -> list[Reason]:
        check = self._by_type.get(schema_name)
        if check is None:
            return [("UNEXPECTED_TYPE", None, f"{schema_name} is not an inbound event")]
        c = _Checks(record)
        c.pattern("event_id", _UUID, "INVALID_ID", "a UUID")
        c.event_time(now_ms, self.policy)
        check(c, now_ms)
        return c.reasons

    def _card(self, c: _Checks, _now: int) -> None:
        r = c.r
        for f in ("account_id", "card_token", "merchant_id"):
            c.pattern(f, _ENTITY_ID, "INVALID_ID", "an identifier (3-64 letters, digits, _.:-)")
        c.pattern("terminal_id", _ENTITY_ID, "INVALID_ID", "an identifier", required=False)
        c.pattern("device_id", _ENTITY_ID, "INVALID_ID", "an identifier", required=False)
        c.pattern("mcc", _MCC, "INVALID_MCC", "a four-digit merchant category code")
        c.one_of("merchant_country", COUNTRIES, "INVALID_COUNTRY", "an ISO 3166-1 alpha-2 code")
        c.one_of("currency", CURRENCIES, "UNKNOWN_CURRENCY", "an ISO 4217 currency code")
        c.ip("ip")
        rate = self.rates.get(r.get("currency") or "")
        topup = r.get("kind") == "TOPUP"
        limit_gbp = (self.policy.topup_amount_limit_gbp_minor if topup
                     else self.policy.card_amount_limit_gbp_minor)
        if rate:
            c.amount("amount_minor", int(limit_gbp / rate), f" {r.get('currency')} minor units "
                     f"(£{limit_gbp / 100:,.0f})")
        else:
            c.amount("amount_minor", 10**15)
        mode, present = r.get("entry_mode"), r.get("card_present")
        if mode in _CARD_PRESENT_MODES and present is False:
            c.fail("INCONSISTENT", "card_present", f"entry mode {mode} needs the card present")
        if mode == "ECOMMERCE" and present is True:
            c.fail("INCONSISTENT", "card_present", "an e-commerce payment is card-not-present")
        declined = r.get("response") == "DECLINED"
        c.requires(declined, "decline_reason", "when the response is DECLINED")
        c.forbids(not declined, "decline_reason", "when the response is APPROVED")
        c.forbids(r.get("card_present") is True, "three_ds", "for a card-present payment")

    def _login(self, c: _Checks, _now: int) -> None:
        r = c.r
        c.pattern("user_id", _ENTITY_ID, "INVALID_ID", "an identifier")
        c.pattern("account_id", _ENTITY_ID, "INVALID_ID", "an identifier", required=False)
        c.pattern("device_id", _ENTITY_ID, "INVALID_ID", "an identifier", required=False)
        c.ip("ip")
        kind = r.get("type")
        c.requires(kind == "LOGIN_FAILED", "failure_reason", "for LOGIN_FAILED")
        c.forbids(kind != "LOGIN_FAILED", "failure_reason", f"for {kind}")
        c.requires(kind == "DEVICE_ADDED", "device_id", "for DEVICE_ADDED")
        payee = kind == "PAYEE_ADDED"
        for f in ("payee_sort_code", "payee_account_number", "payee_name"):
            c.requires(payee, f, "for PAYEE_ADDED")
            c.forbids(not payee, f, f"for {kind}")
        if payee:
            c.pattern("payee_sort_code", _SORT_CODE, "INVALID_SORT_CODE", "six digits")
            c.pattern("payee_account_number", _ACCOUNT_NUMBER, "INVALID_ACCOUNT_NUMBER",
                      "eight digits")

    def _fps(self, c: _Checks, _now: int) -> None:
        r = c.r
        p = self.policy
        c.pattern("transaction_reference", _FPS_REFERENCE, "INVALID_REFERENCE",
                  "an FPS transaction reference (1-35 letters and digits)")
        c.pattern("account_id", _ENTITY_ID, "INVALID_ID", "an identifier")
        for side in ("sender", "beneficiary"):
            c.pattern(f"{side}_sort_code", _SORT_CODE, "INVALID_SORT_CODE", "six digits")
            c.pattern(f"{side}_account_number", _ACCOUNT_NUMBER, "INVALID_ACCOUNT_NUMBER",
                      "eight digits")
        c.pattern("payment_reference", _FPS_TEXT, "INVALID_REFERENCE",
                  "1-18 characters of the FPS character set")
        if c.present("currency") and r["currency"] != "GBP":
            c.fail("UNKNOWN_CURRENCY", "currency", f"{r['currency']!r}: FPS settles in GBP only")
        c.amount("amount_minor", p.fps_amount_limit_minor, " pence (FPS scheme limit)")
        if c.present("settlement_date"):
            sd, t = r["settlement_date"], r.get("event_time")
            if not isinstance(sd, int) or isinstance(sd, bool) or not 0 < sd < 47_482:
                c.fail("INVALID_DATE", "settlement_date", f"{_day(sd)} is not a date "
                       "between 1970 and 2099")
            elif isinstance(t, int):
                day = t // DAY_MS
                if not day - p.fps_settlement_days_before <= sd <= \
                        day + p.fps_settlement_days_after:
                    c.fail("INVALID_DATE", "settlement_date",
                           f"settlement date {_day(sd)} is {sd - day:+d} days from the "
                           f"message's date {_day(day)}")
        kind = r.get("message_type")
        follows = kind in ("PAYMENT_RESPONSE", "REVERSAL")
        c.requires(follows, "original_reference", f"for {kind}")
        c.forbids(not follows, "original_reference", "for a PAYMENT_REQUEST")
        if follows:
            c.pattern("original_reference", _FPS_REFERENCE, "INVALID_REFERENCE",
                      "an FPS transaction reference")
        c.requires(kind == "PAYMENT_RESPONSE", "response_status", "for a PAYMENT_RESPONSE")
        c.forbids(kind != "PAYMENT_RESPONSE", "response_status", f"for {kind}")
        rejected = r.get("response_status") == "REJECTED"
        c.requires(rejected, "reject_reason", "when the response is REJECTED")
        c.forbids(not rejected, "reject_reason", "unless the response is REJECTED")
