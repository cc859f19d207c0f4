"""The starting feature library used by the controls.

Windows are exact and sliding; names say entity, what and window. To change a
window or filter, bump the feature's ``version``: its state starts afresh.
"""

from __future__ import annotations

from tripwire.features.spec import FeatureSpec

__all__ = ["DEFAULT_FEATURES"]

_AUTH = {"event_type": "CardPayment", "kind": "AUTHORISATION"}
_CARD = {"event_type": "CardPayment"}
_FPS_IN = {"event_type": "FpsMessage", "message_type": "PAYMENT_REQUEST", "direction": "INBOUND"}
_FPS_OUT = {"event_type": "FpsMessage", "message_type": "PAYMENT_REQUEST",
            "direction": "OUTBOUND"}
_ATTEMPT = {"event_type": "LoginEvent", "type": ["LOGIN_SUCCEEDED", "LOGIN_FAILED"]}
_FAILED = {"event_type": "LoginEvent", "type": "LOGIN_FAILED"}

DEFAULT_FEATURES: tuple[FeatureSpec, ...] = (
    # cards: testing and velocity
    FeatureSpec("card_auths_1m", "card", "count", "1m", where=_AUTH),
    FeatureSpec("card_auths_1h", "card", "count", "1h", where=_AUTH),
    FeatureSpec("card_declines_10m", "card", "count", "10m",
                where={**_CARD, "response": "DECLINED"}),
    FeatureSpec("card_distinct_merchants_10m", "card", "distinct", "10m", field="merchant_id",
                where=_CARD),
    FeatureSpec("card_small_auths_10m", "card", "count", "10m",
                where={**_AUTH, "small_amount": True}),
    FeatureSpec("card_topups_24h", "card", "count", "24h",
                where={"event_type": "CardPayment", "kind": "TOPUP"}),
    FeatureSpec("card_cnp_amount_1h", "card", "sum", "1h", field="amount_gbp_minor",
                where={**_CARD, "card_not_present": True}),
    # devices and IPs shared by many cards
    FeatureSpec("device_distinct_cards_1h", "device", "distinct", "1h", field="card_token",
                where=_CARD),
    FeatureSpec("ip_distinct_cards_1h", "ip", "distinct", "1h", field="card_token",
                where=_CARD),
    FeatureSpec("ip_card_declines_1h", "ip", "count", "1h",
                where={**_CARD, "response": "DECLINED"}),
    FeatureSpec("device_distinct_users_24h", "device", "distinct", "24h", field="user_id",
                where={"event_type": "LoginEvent", "type": "LOGIN_SUCCEEDED"}),
    # accounts
    FeatureSpec("account_card_amount_24h", "account", "sum", "24h", field="amount_gbp_minor",
                where=_CARD),
    FeatureSpec("account_fps_in_distinct_senders_1h", "account", "distinct", "1h",
                field="counterparty", where=_FPS_IN),
    FeatureSpec("account_fps_in_value_1h", "account", "sum", "1h", field="amount_minor",
                where=_FPS_IN),
    FeatureSpec("account_fps_out_value_1h", "account", "sum", "1h", field="amount_minor",
                where=_FPS_OUT),
    FeatureSpec("account_fps_out_count_1h", "account", "count", "1h", where=_FPS_OUT),
    FeatureSpec("account_fps_out_distinct_payees_1h", "account", "distinct", "1h",
                field="counterparty", where=_FPS_OUT),
    FeatureSpec("account_new_payees_24h", "account", "count", "24h",
                where={"event_type": "LoginEvent", "type": "PAYEE_ADDED"}),
    FeatureSpec("account_since_password_change", "account", "since_last", "30d",
                where={"event_type": "LoginEvent", "type": "PASSWORD_CHANGED"}),
    FeatureSpec("account_since_device_added", "account", "since_last", "30d",
                where={"event_type": "LoginEvent", "type": "DEVICE_ADDED"}),
    FeatureSpec("account_failed_logins_24h", "account", "count", "24h", where=_FAILED),
    # logins: credential stuffing (one IP, many users, mostly failing) and brute force
    # (one user, many failures)
    FeatureSpec("user_failed_logins_10m", "user", "count", "10m", where=_FAILED),
    FeatureSpec("user_failed_logins_1h", "user", "count", "1h", where=_FAILED),
    FeatureSpec("ip_failed_logins_10m", "ip", "count", "10m", where=_FAILED),
    FeatureSpec("ip_login_attempts_10m", "ip", "count", "10m", where=_ATTEMPT),
    FeatureSpec("ip_distinct_users_10m", "ip", "distinct", "10m", field="user_id",
                where=_ATTEMPT),
    # payees (FPS counterparties): money-mule fan-in
    FeatureSpec("payee_distinct_payers_24h", "payee", "distinct", "24h", field="account_id",
                where=_FPS_OUT),
    FeatureSpec("account_payee_payments_7d", "account_payee", "count", "7d", where=_FPS_OUT),
    # merchants and the whole system
    FeatureSpec("merchant_declines_10m", "merchant", "count", "10m",
                where={**_CARD, "response": "DECLINED"}),
    FeatureSpec("system_card_auths_10m", "system", "count", "10m", where=_AUTH),
    FeatureSpec("system_magstripe_abroad_10m", "system", "count", "10m",
                where={**_AUTH, "entry_mode": "MAGSTRIPE_CONTACTLESS", "domestic": False}),
)
