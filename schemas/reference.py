"""Reference data for validation: ISO 3166-1 countries and ISO 4217 currencies
(from pycountry, which tracks the ISO tables)."""

from __future__ import annotations

from collections.abc import Mapping

import pycountry

__all__ = ["COUNTRIES", "CURRENCIES", "GBP_PER_UNIT"]

COUNTRIES: frozenset[str] = frozenset(c.alpha_2 for c in pycountry.countries)
# Funds and precious-metal codes (XAU, XDR, ...) are not payment currencies.
CURRENCIES: frozenset[str] = frozenset(
    c.alpha_3 for c in pycountry.currencies
    if not c.alpha_3.startswith("X") or c.alpha_3 in {"XAF", "XOF", "XPF", "XCD"})

# Reference rates for scoring only (GBP per unit of currency). A batch feature
# node replaces this table with the treasury's daily rates.
GBP_PER_UNIT: Mapping[str, float] = {
    "GBP": 1.0, "EUR": 0.85, "USD": 0.79, "CHF": 0.89, "JPY": 0.0052, "CAD": 0.57,
    "AUD": 0.52, "NOK": 0.073, "SEK": 0.073, "DKK": 0.114, "PLN": 0.195, "BRL": 0.14,
    "INR": 0.0094, "CNY": 0.11, "HKD": 0.10, "SGD": 0.59, "AED": 0.215, "ZAR": 0.043,
    "MXN": 0.041, "TRY": 0.021, "NGN": 0.0005, "RUB": 0.0086, "KES": 0.0061,
}
