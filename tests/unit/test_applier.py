"""The applier carries out each (decision, action) once, by the action policy:
what is in effect is not done again, rate limits hold what exceeds them in order
until a resume applies each once — checked against a brute-force replay of the
rules over the whole request history, for random streams with repeats."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tripwire.controls.actions import ACTION_SCHEMA, ActionPolicy, Limit, requests_of
from tripwire.controls.plane import AUDIT_SCHEMA
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import InRecord, OutRecord
from tripwire.schemas.registry import SchemaStore
from tripwire.state.manager import StateManager
from tripwire.streams.apply import OVERRIDE, RESUME, ActionStage, ApplyStage

CODEC = AvroCodec(SchemaStore.default())
T0 = 1_790_000_000_000
MIN = 60_000


def _decision(n: int, card: str, account: str, actions: list[str], t: int,
              typology: str = "card_testing") -> dict[str, Any]:
    return {"decision_id": f"d{n}", "event_id": f"e{n}", "entity_key": card, "event_time": t,
            "actions": actions, "rule_hits": [{"control_id": typology, "score": 0.9}],
            "subjects": {"card": card, "account": account}}


class Applier:
    """An apply stage over one in-memory partition, fed request by request."""

    def __init__(self, policy: ActionPolicy) -> None:
        self.stage = ApplyStage(CODEC, policy)
        self.state = StateManager(self.stage.name, list(self.stage.stores))
        self.state.open_partition(("requests", 0))
        self.offset = 0

    def feed(self, values: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
        batch = []
        for v in values:
            batch.append(InRecord("requests", 0, self.offset, None, v, T0))
            self.offset += 1
        return _decoded(self.stage.process(batch, T0, self.state))

    def requests(self, decision: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        return self.feed([CODEC.encode(ACTION_SCHEMA, r) for r in requests_of(decision)])

    def resume(self, subject: str, at: int, n: int = 0) -> list[tuple[str, dict[str, Any]]]:
        return self.feed([CODEC.encode(AUDIT_SCHEMA, {
            "audit_id": f"r{n}", "at": at, "actor": "alice", "action": RESUME,
            "subject": subject, "reason": "checked: a real attack", "details_json": "{}"})])


def _decoded(out: list[OutRecord]) -> list[tuple[str, dict[str, Any]]]:
    return [(o.topic_key, CODEC.decode(o.value)[1]) for o in out]


def _statuses(out: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str, str]]:
    return [(r["action"], r["target"], r["status"]) for k, r in out if k == "actions"]


def test_a_decision_sent_again_is_carried_out_once() -> None:
    a = Applier(ActionPolicy())
    d = _decision(1, "c1", "a1", ["BLOCK_CARD", "CUSTOMER_ALERT", "OPEN_CASE"], T0)
    first = a.requests(d)
    assert _statuses(first) == [("BLOCK_CARD", "c1", "DONE"), ("CUSTOMER_ALERT", "a1", "DONE"),
                                ("OPEN_CASE", "c1|card_testing", "DONE")]
    alerts = [r for k, r in first if k == "customer_alerts"]
    assert [(x["account_id"], x["alert_id"]) for x in alerts] == \
        [("a1", requests_of(d)[1]["action_id"])]
    assert a.requests(d) == [] and a.stage.replayed == 3


def test_what_is_in_effect_is_not_done_again() -> None:
    a = Applier(ActionPolicy(alert_quiet_ms=60 * MIN))
    a.requests(_decision(1, "c1", "a1", ["BLOCK_CARD", "CUSTOMER_ALERT", "OPEN_CASE"], T0))
    again = a.requests(_decision(2, "c1", "a1", ["BLOCK_CARD", "CUSTOMER_ALERT", "OPEN_CASE"],
                                 T0 + 10 * MIN))
    assert [s for _, _, s in _statuses(again)] == ["SUPPRESSED"] * 3
    assert not [k for k, _ in again if k == "customer_alerts"]
    # another incident (typology) is alerted; the same one again after the quiet period
    other = a.requests(_decision(3, "c2", "a1", ["CUSTOMER_ALERT"], T0 + 11 * MIN, "mule"))
    later = a.requests(_decision(4, "c3", "a1", ["CUSTOMER_ALERT"], T0 + 61 * MIN))
    assert _statuses(other) == [("CUSTOMER_ALERT", "a1", "DONE")]
    assert _statuses(later) == [("CUSTOMER_ALERT", "a1", "DONE")]


def test_a_tripped_limit_holds_in_order_until_resumed_once() -> None:
    lim = Limit("BLOCK_CARD", 3, 10 * MIN)
    a = Applier(ActionPolicy((lim,)))
    out = []
    for i in range(6):
        out += a.requests(_decision(i, f"c{i}", f"a{i}", ["BLOCK_CARD"], T0 + i * MIN))
    assert [s for _, _, s in _statuses(out)] == ["DONE"] * 3 + ["RATE_LIMITED"] * 3
    tripped = [r for k, r in out if k == "ops_alerts"]
    assert [r["kind"] for r in tripped] == ["RATE_LIMIT_TRIPPED"]
    # still held after the window has passed: only a resume releases
    late = a.requests(_decision(9, "c9", "a9", ["BLOCK_CARD"], T0 + 60 * MIN))
    assert _statuses(late) == [("BLOCK_CARD", "c9", "RATE_LIMITED")]
    # other actions are not held
    assert _statuses(a.requests(_decision(10, "c10", "a10", ["OPEN_CASE"], T0 + 61 * MIN))) \
        == [("OPEN_CASE", "c10|card_testing", "DONE")]
    released = a.resume(lim.id, T0 + 62 * MIN)
    assert _statuses(released) == [("BLOCK_CARD", c, "DONE") for c in ("c3", "c4", "c5", "c9")]
    assert all("released by alice" in r["detail"] for k, r in released if k == "actions")
    assert [(r["kind"], r["details_json"]) for k, r in released if k == "ops_alerts"] == \
        [("RATE_LIMIT_RESUMED", '{"released":4}')]
    assert _statuses(a.resume(lim.id, T0 + 63 * MIN, 1)) == []  # nothing held: nothing again
    # counting starts again from the resume
    more = []
    for i in range(20, 24):
        more += a.requests(_decision(i, f"c{i}", f"a{i}", ["BLOCK_CARD"], T0 + 64 * MIN))
    assert [s for _, _, s in _statuses(more)] == ["DONE"] * 3 + ["RATE_LIMITED"]


def test_limits_per_subject_count_each_apart() -> None:
    lim = Limit("CUSTOMER_ALERT", 1, 24 * 60 * MIN, per="account")
    a = Applier(ActionPolicy((lim,), alert_quiet_ms=1))
    out = []
    for i, acct in enumerate(["a1", "a2", "a1", "a2", "a3"]):
        out += a.requests(_decision(i, f"c{i}", acct, ["CUSTOMER_ALERT"], T0 + i * MIN,
                                    typology=f"t{i}"))
    assert [s for _, _, s in _statuses(out)] == ["DONE", "DONE", "RATE_LIMITED",
                                                 "RATE_LIMITED", "DONE"]
    released = a.resume(f"{lim.id}:a1", T0 + 10 * MIN)  # one scope: a1 only
    assert _statuses(released) == [("CUSTOMER_ALERT", "a1", "DONE")]


def test_the_actions_stage_asks_for_each_action_of_a_decision() -> None:
    stage = ActionStage(CODEC)
    d = {**_decision(1, "c1", "a1", ["BLOCK_CARD", "CUSTOMER_ALERT"], T0),
         "event_type": "tripwire.events.CardPayment", "decided_at": T0, "outcome": "DENY",
         "features": {}, "feature_errors": {}, "feature_provenance": {}, "control_errors": {},
         "control_versions": {}, "engine_version": "t", "latency_us": 0, "repeat": False}
    d["rule_hits"] = [{"control_id": "card_testing", "control_version": "v", "reason": "r",
                       "score": 0.9}]
    rec = InRecord("decisions", 0, 0, b"c1", CODEC.encode("tripwire.decisions.Decision", d), T0)
    out = stage.process([rec], T0, StateManager(stage.name, []))
    assert [(o.topic_key, o.key) for o in out] == [("action_requests", b"c1"),
                                                   ("action_requests", b"a1")]
    assert [CODEC.decode(o.value)[1]["status"] for o in out] == ["REQUESTED"] * 2


# -- against a brute force -----------------------------------------------------------
_STEP = st.one_of(
    st.tuples(st.just("decide"), st.integers(0, 11), st.integers(0, 5), st.integers(0, 3),
              st.sampled_from([["BLOCK_CARD"], ["CUSTOMER_ALERT"], ["BLOCK_CARD", "OPEN_CASE"],
                               ["CUSTOMER_ALERT", "BLOCK_CARD"]]),
              st.integers(0, 30)),
    st.tuples(st.just("again"), st.integers(0, 40)),  # a decision sent again
    st.tuples(st.just("resume"), st.sampled_from(["BLOCK_CARD", "CUSTOMER_ALERT"])),
)


def _oracle(log: list[tuple[str, Any]], policy: ActionPolicy) -> list[tuple[str, str, str]]:
    """The rules, replayed naively over the whole history."""
    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    in_effect: dict[tuple[str, str], int] = {}  # (action, target) -> when done
    times: dict[str, list[int]] = {}
    tripped: dict[str, bool] = {}
    held: dict[str, list[dict[str, Any]]] = {}

    def effect(r: dict[str, Any]) -> str:
        key = (r["action"], r["target"] + ("|" + r["typology"]
                                           if r["action"] == "CUSTOMER_ALERT" else ""))
        if key in in_effect and (r["action"] != "CUSTOMER_ALERT" or
                                 r["requested_at"] - in_effect[key] < policy.alert_quiet_ms):
            return "SUPPRESSED"
        in_effect[key] = r["requested_at"]
        return "DONE"

    for kind, item in log:
        if kind == "resume":
            lim = policy.by_action[item][0]
            if tripped.get(lim.id):
                for r in held.pop(lim.id, []):
                    out.append((r["action"], r["target"], effect(r)))
                tripped[lim.id] = False
                times[lim.id] = []
            continue
        r = item
        if r["action_id"] in seen:
            continue
        seen.add(r["action_id"])
        key = (r["action"], r["target"] + ("|" + r["typology"]
                                           if r["action"] == "CUSTOMER_ALERT" else ""))
        if key in in_effect and (r["action"] != "CUSTOMER_ALERT" or
                                 r["requested_at"] - in_effect[key] < policy.alert_quiet_ms):
            out.append((r["action"], r["target"], "SUPPRESSED"))
            continue
        limits = policy.by_action.get(r["action"], ())
        if limits:
            lim = limits[0]
            if not tripped.get(lim.id):
                window = [x for x in times.get(lim.id, []) if x > r["requested_at"] -
                          lim.window_ms]
                if len(window) < lim.max:
                    times[lim.id] = [*window, r["requested_at"]]
                    out.append((r["action"], r["target"], effect(r)))
                    continue
                tripped[lim.id] = True
            held.setdefault(lim.id, []).append(r)
            out.append((r["action"], r["target"], "RATE_LIMITED"))
            continue
        out.append((r["action"], r["target"], effect(r)))
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(_STEP, max_size=60), st.integers(1, 4))
def test_the_applier_agrees_with_a_brute_force_replay(steps: list[Any], most: int) -> None:
    policy = ActionPolicy((Limit("BLOCK_CARD", most, 10 * MIN),
                           Limit("CUSTOMER_ALERT", most + 1, 20 * MIN)), alert_quiet_ms=15 * MIN)
    a = Applier(policy)
    decided: list[dict[str, Any]] = []
    log: list[tuple[str, Any]] = []
    got: list[tuple[str, str, str]] = []
    t = T0
    for n, step in enumerate(steps):
        if step[0] == "decide":
            _, card, acct, typ, actions, gap = step
            t += gap * MIN // 2
            d = _decision(n, f"c{card}", f"a{acct}", actions, t, f"t{typ}")
            decided.append(d)
        elif step[0] == "again" and decided:
            d = decided[step[1] % len(decided)]
        elif step[0] == "resume":
            lim = policy.by_action[step[1]][0]
            log.append(("resume", step[1]))
            got += _statuses(a.resume(lim.id, t, n))
            continue
        else:
            continue
        reqs = requests_of(d)
        log += [("request", r) for r in reqs]
        got += _statuses(a.requests(d))
    assert got == _oracle(log, policy)
    # every request asked for ended exactly once (held ones once more on release)
    ended = Counter((r["action"], r["target"]) for kind, r in log if kind == "request")
    assert sum(1 for s in got if s[2] != "RATE_LIMITED") <= sum(ended.values())


def _override(a: Applier, oid: str, undo: list[dict[str, Any]], do: list[dict[str, Any]],
              to: str = "ALLOW") -> list[tuple[str, dict[str, Any]]]:
    return a.feed([CODEC.encode(AUDIT_SCHEMA, {
        "audit_id": oid, "at": T0, "actor": "carol", "action": OVERRIDE,
        "subject": "d", "reason": "the customer confirmed it was them",
        "details_json": orjson.dumps({"to": to, "undo": undo, "do": do}).decode()})])


def test_an_override_undoes_what_was_done_once_and_frees_the_card() -> None:
    lim = Limit("BLOCK_CARD", 1, 10 * MIN)
    a = Applier(ActionPolicy((lim,)))
    d1 = _decision(1, "c1", "a1", ["BLOCK_CARD", "CUSTOMER_ALERT", "OPEN_CASE"], T0)
    d2 = _decision(2, "c2", "a2", ["BLOCK_CARD"], T0 + MIN)  # held by the limit
    a.requests(d1)
    assert _statuses(a.requests(d2)) == [("BLOCK_CARD", "c2", "RATE_LIMITED")]
    undone = _override(a, "o1", requests_of(d1) + requests_of(d2), [])
    assert sorted(_statuses(undone)) == [("BLOCK_CARD", "c1", "UNDONE"),
                                        ("BLOCK_CARD", "c2", "UNDONE"),
                                        ("OPEN_CASE", "c1|card_testing", "UNDONE")]
    assert all("overridden to ALLOW by carol" in r["detail"] for _, r in undone)
    assert _override(a, "o1", requests_of(d1), []) == []  # the same override again
    # the held block was dropped: a resume releases nothing
    assert _statuses(a.resume(lim.id, T0 + 2 * MIN)) == []
    # the card is no longer blocked: a later decision blocks it again
    again = a.requests(_decision(3, "c1", "a1", ["BLOCK_CARD"], T0 + 20 * MIN))
    assert _statuses(again) == [("BLOCK_CARD", "c1", "DONE")]


def test_an_override_to_a_stricter_outcome_carries_out_its_actions() -> None:
    a = Applier(ActionPolicy())
    d = _decision(1, "c1", "a1", [], T0)
    do = requests_of({**d, "decision_id": "override:x", "actions": ["BLOCK_CARD"]})
    assert _statuses(_override(a, "o2", [], do, to="DENY")) == [("BLOCK_CARD", "c1", "DONE")]
