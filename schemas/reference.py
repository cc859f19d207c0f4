"""Reference data for validation: ISO 3166-1 countries and ISO 4217 currencies
(from pycountry, which tracks the ISO tables)."""

from __future__ import annotations

import pycountry

__all__ = ["COUNTRIES", "CURRENCIES"]

COUNTRIES: frozenset[str] = frozenset(c.alpha_2 for c in pycountry.countries)
# Funds and precious-metal codes (XAU, XDR, ...) are not payment currencies.
CURRENCIES: frozenset[str] = frozenset(
    c.alpha_3 for c in pycountry.currencies
    if not c.alpha_3.startswith("X") or c.alpha_3 in {"XAF", "XOF", "XPF", "XCD"})
