"""Labelled traffic: a small bank's days, with an attack of every typology the
controls name inside them and the innocent look-alikes each one must leave alone.

A pure function of a seed and a start time (events of a given seed are the same
on every machine), so a backtest of it is a measurement anyone can repeat:

    tripwire simulate --days 3 --seed 1 --events events.jsonl --labels labels.csv
    tripwire backtest --events events.jsonl --labels labels.csv

The customers: each has an account, a user, a card, a phone and a home IP;
households share their IP, and the larger ones a family tablet. An office's
NAT IP carries its staff's logins and lunchtime shopping. A few business
accounts take payments in from many customers and pay their staff, or refund
small sums to many customers. Every day brings, per typology, attacks at the
sizes seen in the field (labelled, with the attack each event belongs to), and
the look-alikes (labelled genuine, with the look-alike they are):

=====================  ===============================================  =====================
typology               attack                                           look-alike
=====================  ===============================================  =====================
card_testing           10-25 small card-not-present probes of one       a commuter's fares and
                       card at many web merchants, many declined        coffees
stolen_card_topups     4-7 card-not-present wallet top-ups in a few     a customer topping up
                       hours                                            twice
credential_stuffing    one IP tries 40-80 users in minutes, 9 in 10     a busy office IP
                       fail
brute_force            one user's password guessed 8-20 times from      a forgotten password
                       2-3 IPs, then a success
account_takeover       after either: new device, new password, new      a new phone and a new
                       payee, then the money out                        landlord
device_sharing         one device paying with 10-15 cards, a proxy IP   a family tablet; the
                       with many cards and declines, or one device      office at lunch
                       logging in to 6-8 accounts
money_mule             4-8 senders pay in, 85-95 % leaves within        payroll; a retailer's
                       20 minutes to one account                        small refunds
magstripe_abroad       15-30 cards forged, magstripe contactless        a traveller paying by
                       abroad                                           chip abroad
new_payee_scam         3-5 customers each pay a scammer's new account   a builder's deposit to a
                       £1,000-£8,000                                    new payee
=====================  ===============================================  =====================

>>> run = labelled_traffic(seed=1, start_ms=0, days=1, customers=200)
>>> sorted({typology for typology, _ in run.labels.values()}) == sorted(TYPOLOGIES)
True
"""

from __future__ import annotations

import csv
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tripwire.connectors.simulator import envelope
from tripwire.schemas.validate import DAY_MS
from tripwire.streams.backtest import Labels

__all__ = ["LOOKALIKES", "TYPOLOGIES", "Labelled", "labelled_traffic"]

MIN = 60_000
HOUR = 60 * MIN
TYPOLOGIES = ("card_testing", "stolen_card_topups", "credential_stuffing", "brute_force",
              "account_takeover", "device_sharing", "money_mule", "magstripe_abroad",
              "new_payee_scam")
LOOKALIKES = ("commuter", "wallet_topper", "office_ip", "forgotten_password", "new_phone_payee",
              "family_device", "payroll", "retailer_refunds", "traveller", "builder_deposit")
OUR_SORT_CODE = "040004"
_UK = [("m-tesco-0042", "5411"), ("m-pret-0193", "5814"), ("m-boots-0311", "5912"),
       ("m-shell-0770", "5541"), ("m-amazon-uk", "5999"), ("m-argos-0101", "5311")]
_WEB = [f"m-web-{i:04d}" for i in range(300)]
_ABROAD = {"BR": "BRL", "MX": "MXN", "US": "USD"}
_TRAVEL = {"FR": "EUR", "ES": "EUR", "US": "USD", "IT": "EUR"}


@dataclass
class _Customer:
    n: int
    household: int
    home_ip: str
    payees: list[tuple[str, str]]
    tablet: str | None = None

    @property
    def account(self) -> str:
        return f"acc-{self.n:06d}"

    @property
    def user(self) -> str:
        return f"user-{self.n:06d}"

    @property
    def card(self) -> str:
        return f"tok-{self.n:06d}"

    @property
    def phone(self) -> str:
        return f"dev-{self.n:06d}"

    @property
    def account_number(self) -> str:
        return f"1{self.n:07d}"


@dataclass
class Labelled:
    """Events in event-time order (event type, Avro-shaped record); the fraud
    labels (event id → typology, attack id); the look-alikes (event id → kind)."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    labels: dict[str, tuple[str, str]] = field(default_factory=dict)
    lookalikes: dict[str, str] = field(default_factory=dict)

    def write(self, events: Path, labels: Path) -> None:
        """The events as JSON Lines (``tripwire produce`` and ``backtest`` read them)
        and every event's label as CSV: event_id, label, typology, attack_id, lookalike."""
        with events.open("wb") as f:
            for kind, rec in self.events:
                f.write(orjson.dumps(envelope(kind, rec)) + b"\n")
        with labels.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["event_id", "label", "typology", "attack_id", "lookalike"])
            for _, rec in self.events:
                eid = rec["event_id"]
                typology, attack = self.labels.get(eid, ("", ""))
                w.writerow([eid, int(bool(typology)), typology, attack,
                            self.lookalikes.get(eid, "")])

    def known(self) -> Labels:
        """What a backtest is told (as it reads from the labels file :meth:`write` makes)."""
        return Labels({rec["event_id"]: rec["event_id"] in self.labels for _, rec in self.events},
                      {k: t for k, (t, _) in self.labels.items()},
                      {k: a for k, (_, a) in self.labels.items()}, dict(self.lookalikes))


class _World:
    def __init__(self, seed: int, start_ms: int, customers: int) -> None:
        self.rng = random.Random(seed)
        self.start = start_ms
        self.out = Labelled()
        self.people: list[_Customer] = []
        rng = self.rng
        household = 0
        while len(self.people) < customers:
            size = rng.choices([1, 2, 3, 4], [45, 30, 15, 10])[0]
            ip = f"81.{household // 250 % 250}.{household % 250}.{rng.randrange(1, 250)}"
            tablet = f"dev-fam-{household:05d}" if size >= 3 else None
            for _ in range(size):
                n = len(self.people)
                self.people.append(_Customer(n, household, ip, [self.account_no() for _ in
                                                                range(3)], tablet))
            household += 1
        self.people = self.people[:customers]
        self.office = self.people[: min(60, max(8, customers // 25))]  # they work at one office
        self.office_ip = "198.51.100.20"
        self.businesses = [f"acc-biz-{i:03d}" for i in range(4)]
        self.attacks = 0

    # --- building blocks -----------------------------------------------------

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def account_no(self) -> tuple[str, str]:
        r = self.rng
        return f"{r.choice(['20', '30', '40', '60', '77'])}{r.randrange(10**4):04d}", \
            f"{r.randrange(10**8):08d}"

    def attack(self, typology: str) -> str:
        self.attacks += 1
        return f"{typology}-{self.attacks:04d}"

    def add(self, kind: str, rec: dict[str, Any], typology: str = "", attack: str = "",
            lookalike: str = "") -> dict[str, Any]:
        self.out.events.append((kind, rec))
        if typology:
            self.out.labels[rec["event_id"]] = (typology, attack)
        elif lookalike:
            self.out.lookalikes[rec["event_id"]] = lookalike
        return rec

    def card(self, t: int, c: _Customer, *, amount: int, merchant: tuple[str, str],
             mode: str = "CONTACTLESS", country: str = "GB", currency: str = "GBP",
             kind: str = "AUTHORISATION", declined: bool = False, device: str | None = None,
             ip: str | None = None, card: str | None = None) -> dict[str, Any]:
        present = mode != "ECOMMERCE"
        return {
            "event_id": self.uid(), "event_time": t, "kind": kind, "account_id": c.account,
            "card_token": card or c.card, "amount_minor": amount, "currency": currency,
            "merchant_id": merchant[0], "mcc": merchant[1], "merchant_country": country,
            "terminal_id": f"term-{self.rng.randrange(10**6):06d}" if present else None,
            "entry_mode": mode, "card_present": present,
            "device_id": None if present else device, "ip": None if present else ip,
            "response": "DECLINED" if declined else "APPROVED",
            "decline_reason": "DO_NOT_HONOUR" if declined else None,
            "wallet": None, "three_ds": None if present else "AUTHENTICATED"}

    def login(self, t: int, c: _Customer | str, typ: str, *, device: str | None = None,
              ip: str | None = None, payee: tuple[str, str] | None = None) -> dict[str, Any]:
        user, account = (c.user, c.account) if isinstance(c, _Customer) else (c, None)
        if isinstance(c, _Customer):
            device = device or c.phone
            ip = ip or c.home_ip
        return {
            "event_id": self.uid(), "event_time": t, "type": typ, "user_id": user,
            "account_id": account, "device_id": device, "ip": ip,
            "method": "PASSWORD" if typ.startswith("LOGIN") else "ONE_TIME_PASSCODE",
            "failure_reason": "WRONG_PASSWORD" if typ == "LOGIN_FAILED" else None,
            "payee_sort_code": payee[0] if payee else None,
            "payee_account_number": payee[1] if payee else None,
            "payee_name": "A PAYEE" if payee else None}

    def fps(self, t: int, account: str, account_number: str, direction: str,
            other: tuple[str, str], amount: int, reference: str = "THANKS") -> dict[str, Any]:
        ours = (OUR_SORT_CODE, account_number)
        sender, beneficiary = (ours, other) if direction == "OUTBOUND" else (other, ours)
        return {
            "event_id": self.uid(), "event_time": t, "message_type": "PAYMENT_REQUEST",
            "transaction_reference": f"FP{self.rng.getrandbits(64):020d}",
            "original_reference": None, "is_repeat": False, "direction": direction,
            "account_id": account, "settlement_date": t // DAY_MS,
            "sender_sort_code": sender[0], "sender_account_number": sender[1],
            "beneficiary_sort_code": beneficiary[0],
            "beneficiary_account_number": beneficiary[1], "amount_minor": amount,
            "currency": "GBP", "payment_reference": reference, "response_status": None,
            "reject_reason": None}

    def daytime(self, day: int, lo: float = 7, hi: float = 23) -> int:
        return self.start + day * DAY_MS + int(self.rng.uniform(lo, hi) * HOUR)

    def someone(self, victim: bool = True) -> _Customer:
        """A customer: attacks pick their victims among the odd-numbered, look-alikes
        their actors among the even, so that no look-alike is a victim's own
        activity (a stolen card's owner topping up is denied, and rightly)."""
        while True:
            c = self.rng.choice(self.people)
            if c.n % 2 == victim or len(self.people) < 2:
                return c

    def spread(self, t: int, count: int, lo_s: float, hi_s: float) -> list[int]:
        """``count`` times after ``t``, each ``lo_s`` to ``hi_s`` seconds after the last."""
        out = []
        for _ in range(count):
            t += int(self.rng.uniform(lo_s, hi_s) * 1000)
            out.append(t)
        return out

    # --- everyday traffic ----------------------------------------------------

    def everyday(self, day: int) -> None:
        r = self.rng
        for c in self.people:
            for _ in range(r.choices([0, 1, 2, 3, 4], [15, 30, 30, 15, 10])[0]):
                mode = r.choices(["CHIP", "CONTACTLESS", "ECOMMERCE"], [3, 5, 2])[0]
                self.add("CardPayment", self.card(
                    self.daytime(day), c, amount=int(r.lognormvariate(7.3, 1.0)) + 200,
                    merchant=r.choice(_UK), mode=mode, declined=r.random() < 0.02,
                    device=c.phone, ip=c.home_ip))
            for _ in range(r.choices([0, 1, 2, 3], [20, 40, 30, 10])[0]):
                t = self.daytime(day, 6, 24)
                if r.random() < 0.04:
                    t -= 20_000
                    self.add("LoginEvent", self.login(t, c, "LOGIN_FAILED"))
                self.add("LoginEvent", self.login(t + 20_000, c, "LOGIN_SUCCEEDED"))
            if r.random() < 0.3:
                self.add("FpsMessage", self.fps(self.daytime(day), c.account, c.account_number,
                                                "OUTBOUND", r.choice(c.payees),
                                                int(r.lognormvariate(9.0, 1.0)) + 100,
                                                r.choice(["RENT", "BILLS", "SAVINGS"])))
            if r.random() < 0.2:
                self.add("FpsMessage", self.fps(self.daytime(day), c.account, c.account_number,
                                                "INBOUND", self.account_no(),
                                                int(r.lognormvariate(9.5, 1.0)) + 100,
                                                "SALARY"))
            if r.random() < 0.01:
                self.add("LoginEvent", self.login(self.daytime(day), c, "PASSWORD_CHANGED"))

    # --- the look-alikes -----------------------------------------------------

    def lookalikes(self, day: int, scale: int) -> None:
        r = self.rng
        office_day = self.start + day * DAY_MS
        # the office: its staff log in from 08:30 and shop online at lunch
        for c in self.office:
            t = office_day + int(r.uniform(8.5, 9.5) * HOUR)
            if r.random() < 0.05:
                self.add("LoginEvent", self.login(t - 30_000, c, "LOGIN_FAILED",
                                                  ip=self.office_ip), lookalike="office_ip")
            self.add("LoginEvent", self.login(t, c, "LOGIN_SUCCEEDED", ip=self.office_ip),
                     lookalike="office_ip")
            if r.random() < 0.6:
                self.add("CardPayment", self.card(
                    office_day + int(r.uniform(12, 13.5) * HOUR), c,
                    amount=r.randrange(800, 9000), merchant=(r.choice(_WEB), "5999"),
                    mode="ECOMMERCE", declined=r.random() < 0.02, device=c.phone,
                    ip=self.office_ip), lookalike="office_ip")
        for _ in range(scale):
            # a family tablet: an evening's shopping with each family card, and logins
            fam = [c for c in self.people if c.tablet]
            if fam:
                head = r.choice(fam)
                family = [c for c in self.people if c.household == head.household]
                t = self.daytime(day, 18, 22)
                for c in family:
                    t += r.randrange(2, 15) * MIN
                    self.add("LoginEvent", self.login(t, c, "LOGIN_SUCCEEDED",
                                                      device=c.tablet, ip=c.home_ip),
                             lookalike="family_device")
                    self.add("CardPayment", self.card(
                        t + MIN, c, amount=r.randrange(500, 8000),
                        merchant=(r.choice(_WEB), "5999"), mode="ECOMMERCE", device=c.tablet,
                        ip=c.home_ip), lookalike="family_device")
            # a commuter: bus fares and a coffee, a few minutes apart
            c = self.someone(victim=False)
            t = self.daytime(day, 7, 9)
            for i in range(r.randrange(3, 6)):
                t += r.randrange(1, 4) * MIN
                fare = i % 2 == 0
                self.add("CardPayment", self.card(
                    t, c, amount=175 if fare else r.randrange(250, 450),
                    merchant=("m-tfl-0001", "4111") if fare else ("m-pret-0193", "5814")),
                    lookalike="commuter")
            # a customer topping up their own wallet twice today
            c = self.someone(victim=False)
            for t in sorted(self.daytime(day) for _ in range(2)):
                self.add("CardPayment", self.card(
                    t, c, amount=r.randrange(2000, 10000), merchant=("m-emoney-001", "6540"),
                    mode="ECOMMERCE", kind="TOPUP", device=c.phone, ip=c.home_ip),
                    lookalike="wallet_topper")
            # a forgotten password: a few tries, then in
            c = self.someone(victim=False)
            t = self.daytime(day)
            for _ in range(r.randrange(2, 5)):
                t += r.randrange(15, 90) * 1000
                self.add("LoginEvent", self.login(t, c, "LOGIN_FAILED"),
                         lookalike="forgotten_password")
            self.add("LoginEvent", self.login(t + 60_000, c, "LOGIN_SUCCEEDED"),
                     lookalike="forgotten_password")
            # a new phone, then a new landlord and the deposit
            c = self.someone(victim=False)
            t = self.daytime(day, 8, 18)
            landlord = self.account_no()
            for typ, dt_ in (("DEVICE_ADDED", 0), ("LOGIN_SUCCEEDED", MIN),
                             ("PAYEE_ADDED", r.randrange(5, 240) * MIN)):
                self.add("LoginEvent", self.login(t + dt_, c, typ, device=f"dev-new-{c.n:06d}",
                                                  payee=landlord if typ == "PAYEE_ADDED"
                                                  else None), lookalike="new_phone_payee")
            self.add("FpsMessage", self.fps(t + 245 * MIN, c.account, c.account_number,
                                            "OUTBOUND", landlord, r.randrange(100_000, 400_000),
                                            "DEPOSIT"), lookalike="new_phone_payee")
            # a builder's deposit to a new payee
            c = self.someone(victim=False)
            builder = self.account_no()
            t = self.daytime(day, 8, 20)
            self.add("LoginEvent", self.login(t, c, "PAYEE_ADDED", payee=builder),
                     lookalike="builder_deposit")
            self.add("FpsMessage", self.fps(t + r.randrange(2, 30) * MIN, c.account,
                                            c.account_number, "OUTBOUND", builder,
                                            r.randrange(500_000, 1_500_000), "DEPOSIT"),
                     lookalike="builder_deposit")
            # a traveller paying by chip and contactless abroad
            c = self.someone(victim=False)
            country = r.choice(list(_TRAVEL))
            for t in sorted(self.daytime(day) for _ in range(r.randrange(3, 7))):
                self.add("CardPayment", self.card(
                    t, c, amount=r.randrange(500, 12000), currency=_TRAVEL[country],
                    country=country, mode=r.choice(["CHIP", "CONTACTLESS"]),
                    merchant=(f"m-{country.lower()}-{r.randrange(900):04d}", "5812")),
                    lookalike="traveller")
        for biz in self.businesses:
            self.business(day, biz)

    def business(self, day: int, biz: str) -> None:
        """A business account: customers pay it; it pays its staff (payroll) or sends
        small refunds to many customers (a retailer)."""
        r = self.rng
        number = f"9{int(biz[-3:]):07d}"
        payroll = int(biz[-3:]) % 2 == 0
        kind = "payroll" if payroll else "retailer_refunds"
        t = self.daytime(day, 9, 15)
        takings = 0
        for _ in range(r.randrange(8, 25)):
            t += r.randrange(1, 4) * MIN
            amount = r.randrange(100_000, 600_000) if payroll else r.randrange(2_000, 30_000)
            takings += amount
            self.add("FpsMessage", self.fps(t, biz, number, "INBOUND", self.account_no(),
                                            amount, "INVOICE"), lookalike=kind)
        staff = [self.account_no() for _ in range(r.randrange(12, 25))]
        for other in staff:
            t += r.randrange(10, 60) * 1000
            amount = (min(450_000, max(150_000, takings // len(staff))) if payroll
                      else r.randrange(500, 3_000))
            self.add("FpsMessage", self.fps(t, biz, number, "OUTBOUND", other, amount,
                                            "SALARY" if payroll else "REFUND"), lookalike=kind)

    # --- the attacks ---------------------------------------------------------

    def card_testing(self, day: int) -> None:
        r = self.rng
        c, a = self.someone(), self.attack("card_testing")
        ip = f"203.0.113.{r.randrange(1, 250)}"
        for t in self.spread(self.daytime(day, 0, 24), r.randrange(10, 26), 5, 30):
            self.add("CardPayment", self.card(
                t, c, amount=r.randrange(50, 199), merchant=(r.choice(_WEB), "5999"),
                mode="ECOMMERCE", declined=r.random() < 0.5, ip=ip), "card_testing", a)

    def stolen_topups(self, day: int) -> None:
        r = self.rng
        c, a = self.someone(), self.attack("stolen_card_topups")
        device, ip = f"dev-x{r.randrange(10**5):05d}", f"203.0.113.{r.randrange(1, 250)}"
        for t in self.spread(self.daytime(day, 0, 21), r.randrange(4, 8), 300, 2400):
            self.add("CardPayment", self.card(
                t, c, amount=r.randrange(5000, 25000), kind="TOPUP", mode="ECOMMERCE",
                merchant=("m-emoney-002", "6540"), declined=r.random() < 0.25, device=device,
                ip=ip), "stolen_card_topups", a)

    def takeover(self, t: int, c: _Customer, device: str, ip: str) -> None:
        """What follows a takeover: a new device, a new password, a new payee, the
        money out."""
        r, a = self.rng, self.attack("account_takeover")
        payee = self.account_no()
        steps = ["DEVICE_ADDED", "PASSWORD_CHANGED", "PAYEE_ADDED"]
        for typ in steps:
            t += r.randrange(1, 6) * MIN
            self.add("LoginEvent", self.login(t, c, typ, device=device, ip=ip,
                                              payee=payee if typ == "PAYEE_ADDED" else None),
                     "account_takeover", a)
        for _ in range(r.randrange(1, 3)):
            t += r.randrange(2, 10) * MIN
            self.add("FpsMessage", self.fps(t, c.account, c.account_number, "OUTBOUND", payee,
                                            r.randrange(150_000, 450_000), "INVOICE 7731"),
                     "account_takeover", a)

    def credential_stuffing(self, day: int) -> None:
        r = self.rng
        a = self.attack("credential_stuffing")
        ip = f"203.0.113.{r.randrange(1, 250)}"
        device = f"dev-bot-{r.randrange(10**5):05d}"
        won: list[_Customer] = []
        for t in self.spread(self.daytime(day, 0, 24), r.randrange(40, 81), 2, 12):
            c = self.someone()
            works = r.random() < 0.05
            self.add("LoginEvent", self.login(t, c, "LOGIN_SUCCEEDED" if works else
                                              "LOGIN_FAILED", device=device, ip=ip),
                     "credential_stuffing", a)
            if works:
                won.append(c)
                last = t
        if won:
            self.takeover(last, won[0], device, ip)

    def brute_force(self, day: int) -> None:
        r = self.rng
        c, a = self.someone(), self.attack("brute_force")
        ips = [f"203.0.113.{r.randrange(1, 250)}" for _ in range(r.randrange(2, 4))]
        device = f"dev-x{r.randrange(10**5):05d}"
        times = self.spread(self.daytime(day, 0, 22), r.randrange(8, 21), 30, 150)
        for t in times:
            self.add("LoginEvent", self.login(t, c, "LOGIN_FAILED", device=device,
                                              ip=r.choice(ips)), "brute_force", a)
        t = times[-1] + 60_000
        self.add("LoginEvent", self.login(t, c, "LOGIN_SUCCEEDED", device=device, ip=ips[0]),
                 "brute_force", a)
        self.takeover(t, c, device, ips[0])

    def device_sharing(self, day: int) -> None:
        r = self.rng
        # a device farm paying with stolen cards
        a = self.attack("device_sharing")
        device, ip = f"dev-farm-{r.randrange(10**5):05d}", f"203.0.113.{r.randrange(1, 250)}"
        for t in self.spread(self.daytime(day, 0, 23), r.randrange(10, 16), 60, 240):
            c = self.someone()
            self.add("CardPayment", self.card(
                t, c, amount=r.randrange(2000, 30000), merchant=(r.choice(_WEB), "5999"),
                mode="ECOMMERCE", declined=r.random() < 0.15, device=device, ip=ip),
                "device_sharing", a)
        # a proxy IP: a fresh device per card, many declines
        a = self.attack("device_sharing")
        ip = f"203.0.113.{r.randrange(1, 250)}"
        for t in self.spread(self.daytime(day, 0, 23), r.randrange(10, 15), 60, 240):
            c = self.someone()
            self.add("CardPayment", self.card(
                t, c, amount=r.randrange(2000, 30000), merchant=(r.choice(_WEB), "5999"),
                mode="ECOMMERCE", declined=r.random() < 0.5,
                device=f"dev-x{r.randrange(10**6):06d}", ip=ip), "device_sharing", a)
        # one phone running a set of mule accounts
        a = self.attack("device_sharing")
        device = f"dev-herd-{r.randrange(10**5):05d}"
        for t in self.spread(self.daytime(day, 0, 12), r.randrange(6, 9), 300, 5400):
            self.add("LoginEvent", self.login(t, self.someone(), "LOGIN_SUCCEEDED",
                                              device=device), "device_sharing", a)

    def money_mule(self, day: int) -> None:
        r = self.rng
        c, a = self.someone(), self.attack("money_mule")
        times, total = self.spread(self.daytime(day, 0, 22), r.randrange(4, 9), 120, 400), 0
        for t in times:
            amount = r.randrange(30_000, 200_000)
            total += amount
            self.add("FpsMessage", self.fps(t, c.account, c.account_number, "INBOUND",
                                            self.account_no(), amount, "FOR THE CAR"),
                     "money_mule", a)
        out = total * r.randrange(85, 96) // 100
        parts = r.choice([[out], [out * 3 // 4, out - out * 3 // 4]])
        onward = self.account_no()
        t = times[-1]
        for part in parts:
            t += r.randrange(2, 10) * MIN
            self.add("FpsMessage", self.fps(t, c.account, c.account_number, "OUTBOUND", onward,
                                            part, "SAVINGS"), "money_mule", a)

    def magstripe_abroad(self, day: int) -> None:
        r = self.rng
        a = self.attack("magstripe_abroad")
        t = self.daytime(day, 0, 23)
        for _ in range(r.randrange(15, 31)):
            c = self.someone()
            times = self.spread(t, r.randrange(1, 3), 5, 60)
            t = times[-1]
            for when in times:
                country = r.choice(list(_ABROAD))
                self.add("CardPayment", self.card(
                    when, c, amount=r.randrange(2000, 60000), currency=_ABROAD[country],
                    country=country, mode="MAGSTRIPE_CONTACTLESS",
                    merchant=(f"m-{country.lower()}-{r.randrange(500):04d}", "5999")),
                    "magstripe_abroad", a)

    def new_payee_scam(self, day: int) -> None:
        r = self.rng
        a = self.attack("new_payee_scam")
        scammer = self.account_no()
        t = self.daytime(day, 0, 18)
        for _ in range(r.randrange(3, 6)):
            c = self.someone()
            t += r.randrange(10, 90) * MIN
            # the victim adds the payee themselves, on their own phone: not fraud of theirs
            self.add("LoginEvent", self.login(t, c, "PAYEE_ADDED", payee=scammer))
            for i in range(r.randrange(1, 3)):
                self.add("FpsMessage", self.fps(t + (i + 1) * r.randrange(2, 15) * MIN, c.account,
                                                c.account_number, "OUTBOUND", scammer,
                                                r.randrange(100_000, 800_000), "INVESTMENT"),
                         "new_payee_scam", a)


def labelled_traffic(seed: int, start_ms: int, days: float = 3.0, customers: int = 4000,
                     attacks_per_day: int = 2) -> Labelled:
    """``days`` of a bank with ``customers`` customers from ``start_ms`` (best at a
    midnight UTC: the day's hours follow it), with ``attacks_per_day`` attacks of
    each typology a day (at least one in all) and as many of each look-alike."""
    w = _World(seed, start_ms, customers)
    whole = max(1, int(days + 0.999))
    for day in range(whole):
        w.everyday(day)
        w.lookalikes(day, attacks_per_day)
        for _ in range(attacks_per_day):
            for make in (w.card_testing, w.stolen_topups, w.credential_stuffing,
                         w.brute_force, w.device_sharing, w.money_mule, w.magstripe_abroad,
                         w.new_payee_scam):
                make(day)
    end = start_ms + int(days * DAY_MS)
    out = w.out
    keep = [(k, e) for k, e in out.events if e["event_time"] < end]
    keep.sort(key=lambda ke: ke[1]["event_time"])
    kept = {e["event_id"] for _, e in keep}
    return Labelled(keep, {k: v for k, v in out.labels.items() if k in kept},
                    {k: v for k, v in out.lookalikes.items() if k in kept})
