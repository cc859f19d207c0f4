"""Typed models of the inbound events, for publishers (SDK, HTTP ingest, files).

They mirror the Avro schemas (a test keeps field names and optionality equal)
and convert to the Avro record form: timestamps become epoch milliseconds,
dates become days since 1970-01-01. Type errors are caught here; meaning (IDs,
dates, amounts) is checked by :class:`~tripwire.schemas.validate.Validator`.

>>> m = parse_event({"event_type": "CardPayment", "event_id": "...", ...})  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

__all__ = ["EVENT_MODELS", "CardPayment", "FpsMessage", "InboundEvent", "LoginEvent",
           "parse_event"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _millis(t: dt.datetime) -> int:
    if t.tzinfo is None:
        raise ValueError("timestamps must carry a time zone (e.g. 2026-11-24T08:00:00Z)")
    return (t - _EPOCH) // dt.timedelta(milliseconds=1)


class _Event(BaseModel):
    # strict: nothing is repaired or guessed - no "1234" for an amount, no "true" for
    # a boolean; only times and dates may come as text (JSON has no other form)
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True, strict=True)

    schema_name: ClassVar[str]
    topic_key: ClassVar[str]
    key_field: ClassVar[str]

    event_id: str
    event_time: AwareDatetime = Field(strict=False)

    def to_avro(self) -> dict[str, Any]:
        """The record in Avro form (integers for timestamps and dates)."""
        rec = self.model_dump(exclude={"event_type"})
        for k, v in rec.items():
            if isinstance(v, dt.datetime):
                rec[k] = _millis(v)
            elif isinstance(v, dt.date):
                rec[k] = (v - _EPOCH.date()).days
        return rec

    @property
    def key(self) -> str:
        return str(getattr(self, self.key_field))


class CardPayment(_Event):
    schema_name = "tripwire.events.CardPayment"
    topic_key = "card_payments"
    key_field = "card_token"

    event_type: Literal["CardPayment"] = "CardPayment"
    kind: Literal["AUTHORISATION", "TOPUP"]
    account_id: str
    card_token: str
    amount_minor: int
    currency: str
    merchant_id: str
    mcc: str
    merchant_country: str
    terminal_id: str | None = None
    entry_mode: Literal["CHIP", "CONTACTLESS", "MAGSTRIPE", "MAGSTRIPE_CONTACTLESS",
                        "ECOMMERCE", "MANUAL"]
    card_present: bool
    device_id: str | None = None
    ip: str | None = None
    response: Literal["APPROVED", "DECLINED"]
    decline_reason: str | None = None
    wallet: Literal["APPLE_PAY", "GOOGLE_PAY", "SAMSUNG_PAY", "OTHER"] | None = None
    three_ds: Literal["AUTHENTICATED", "ATTEMPTED", "FAILED", "NOT_ENROLLED"] | None = None


class LoginEvent(_Event):
    schema_name = "tripwire.events.LoginEvent"
    topic_key = "logins"
    key_field = "user_id"

    event_type: Literal["LoginEvent"] = "LoginEvent"
    type: Literal["LOGIN_SUCCEEDED", "LOGIN_FAILED", "PASSWORD_CHANGED", "DEVICE_ADDED",
                        "PAYEE_ADDED"]
    user_id: str
    account_id: str | None = None
    device_id: str | None = None
    ip: str | None = None
    method: Literal["PASSWORD", "BIOMETRIC", "ONE_TIME_PASSCODE", "PASSKEY", "CARD_READER",
                    "NONE"]
    failure_reason: str | None = None
    payee_sort_code: str | None = None
    payee_account_number: str | None = None
    payee_name: str | None = None


class FpsMessage(_Event):
    schema_name = "tripwire.events.FpsMessage"
    topic_key = "fps"
    key_field = "account_id"

    event_type: Literal["FpsMessage"] = "FpsMessage"
    message_type: Literal["PAYMENT_REQUEST", "PAYMENT_RESPONSE", "REVERSAL"]
    transaction_reference: str
    original_reference: str | None = None
    is_repeat: bool = False
    direction: Literal["INBOUND", "OUTBOUND"]
    account_id: str
    settlement_date: dt.date = Field(strict=False)
    sender_sort_code: str
    sender_account_number: str
    beneficiary_sort_code: str
    beneficiary_account_number: str
    amount_minor: int
    currency: str = "GBP"
    payment_reference: str
    response_status: Literal["ACCEPTED_APPLIED", "ACCEPTED_NOT_APPLIED", "REJECTED"] | None \
        = None
    reject_reason: str | None = None


InboundEvent = Annotated[CardPayment | LoginEvent | FpsMessage,
                         Field(discriminator="event_type")]
_ADAPTER: TypeAdapter[CardPayment | LoginEvent | FpsMessage] = TypeAdapter(InboundEvent)
EVENT_MODELS: dict[str, type[_Event]] = {m.schema_name: m for m in
                                         (CardPayment, LoginEvent, FpsMessage)}


def parse_event(data: dict[str, Any] | bytes | str) -> CardPayment | LoginEvent | FpsMessage:
    """Parse one event (``{"event_type": "CardPayment" | "LoginEvent" | "FpsMessage",
    ...fields}``); raises pydantic's ValidationError with field paths."""
    if isinstance(data, (bytes, str)):
        return _ADAPTER.validate_json(data)
    return _ADAPTER.validate_python(data)
