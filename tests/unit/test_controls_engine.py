"""The control network (detectors → action controls → selection), and fail-safe
controls: errors, runaway loops and deep recursion are recorded as values, other
controls still run, and the declared fail policy applies."""

import time
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tripwire.controls.engine import LIBRARY, Control, ControlSet
from tripwire.controls.results import ControlError, ControlResult

BASE = '''
APPLIES_TO = ["CardPayment"]
ON_ERROR = "MANUAL_REVIEW"
def detect(event, features):
    {body}
'''
SELECT = Control.compile("select", (LIBRARY / "select.star").read_text())
RESPOND = Control.compile("respond", (LIBRARY / "respond.star").read_text())


def _control(name: str, body: str, budget_ms: float = 20) -> Control:
    return Control.compile(name, BASE.format(body=body), budget_ms)


def _network(*controls: Control) -> ControlSet:
    return ControlSet([*controls, RESPOND, SELECT])


def test_a_runaway_loop_is_stopped_by_the_budget() -> None:
    c = _control("spin", "for i in range(1000000000):\n        pass")
    t = time.monotonic()
    r = c.run({}, {})
    assert time.monotonic() - t < 1.0
    assert r.error == "exceeded its 20 ms budget"
    assert r.outcome == "MANUAL_REVIEW" and "fail policy MANUAL_REVIEW" in r.reason


def test_deep_recursion_is_stopped() -> None:
    src = '''
def down(n):
    return down(n + 1)

def evaluate(event, features):
    return down(0)
'''
    r = Control.compile("deep", src.replace("evaluate", "detect")).run({}, {})
    assert r.error is not None and r.outcome is None  # default policy: IGNORE


def test_errors_are_values_and_the_others_still_run() -> None:
    broken = _control("broken", 'return {"score": 1, "reason": event["nope"]}')
    fine = _control("fine", 'return {"signal": "possible_card_testing", "score": 0.5, '
                            '"reason": "ok"}')
    verdict = _network(broken, fine).evaluate("CardPayment", {}, {})
    results = verdict.results
    assert [r.control_id for r in results] == ["broken", "fine", "respond", "select"]
    assert results[0].error and "nope" in results[0].error
    assert "broken.star:5:" in results[0].error  # the control's own line, not the engine's
    assert results[0].outcome == "MANUAL_REVIEW"  # its fail policy, proposed to selection
    assert results[1].signal == "possible_card_testing" and results[1].error is None
    assert verdict.outcome == "MANUAL_REVIEW"
    assert "fail policy MANUAL_REVIEW" in verdict.reason and "ok" in verdict.reason


def test_detectors_feed_actions_and_selection_picks_the_outcome() -> None:
    testing = _control("testing", 'if features.get("card_declines_10m", 0) >= 4:\n'
                                  '        return {"signal": "card_testing", "score": 0.9, '
                                  '"reason": "declines"}\n    return None')
    quiet = _control("quiet", "return None")
    net = _network(testing, quiet)
    verdict = net.evaluate("CardPayment", {"amount_minor": 5, "card_token": "tok-1",
                                           "ignored": 1},
                           {"card_declines_10m": 5, "card_auths_1h": 9})
    assert verdict.outcome == "DENY"
    assert verdict.actions == ("BLOCK_CARD", "CUSTOMER_ALERT", "OPEN_CASE")
    stages = [(r.control_id, r.stage) for r in verdict.results]
    assert stages == [("quiet", "DETECTOR"), ("testing", "DETECTOR"), ("respond", "ACTION"),
                      ("select", "SELECTION")]
    # each control was given only what it names: the inputs of its execution record
    assert verdict.results[1].inputs == {"event": {}, "features": {"card_declines_10m": 5}}
    assert verdict.results[2].inputs["detections"] == {
        "testing": {"signal": "card_testing", "score": 0.9, "reason": "declines"}}
    assert [p["control_id"] for p in verdict.results[3].inputs["proposals"]] == ["respond"]
    calm = net.evaluate("CardPayment", {}, {"card_declines_10m": 1})
    assert calm.outcome == "ALLOW" and [r.stage for r in calm.results] == ["DETECTOR"] * 2


def test_a_failing_selection_falls_back_to_the_most_severe_proposal() -> None:
    odd = Control.compile("select", "def select(event, proposals):\n    return 1 // 0\n")
    sure = _control("sure", 'return {"signal": "sanctioned_country", "score": 1, '
                            '"reason": "KP"}')
    verdict = ControlSet([sure, RESPOND, odd]).evaluate("CardPayment", {}, {})
    assert verdict.outcome == "DENY" and verdict.actions == ("OPEN_CASE",)
    assert verdict.reason.startswith("selection failed") and verdict.results[-1].error


def test_a_bad_return_value_is_an_error() -> None:
    r = _control("odd", 'return {"outcome": "MAYBE"}').run({}, {})
    assert r.error is not None and "score between 0 and 1" in r.error
    action = Control.compile("a", "def act(e, f, d):\n    return {'outcome': 'MAYBE'}\n")
    assert "expected None or a dict" in (action.run({}, {}, detections={}).error or "")


def test_a_network_needs_exactly_one_selection_control() -> None:
    with pytest.raises(ControlError, match="exactly one selection"):
        ControlSet([RESPOND])
    with pytest.raises(ControlError, match="exactly one selection"):
        ControlSet([SELECT, Control.compile("select2", SELECT.source)])


@pytest.mark.parametrize(("src", "message"), [
    ("def nothing(): pass", "defines no function of detect"),
    ("def detect(e, f): return None\ndef act(e, f, d): return None", "more than one"),
    ("def detect(e, f):\n  return (", "c"),
    ('ON_ERROR = "PANIC"\ndef detect(e, f): return None', "ON_ERROR"),
    ('APPLIES_TO = "CardPayment"\ndef detect(e, f): return None', "APPLIES_TO"),
    ("TIER = 3\ndef detect(e, f): return None", "TIER"),
    ("TIER = 2\ndef act(e, f, d): return None", "only detectors"),
    ('MODE = "SHADOW"\ndef select(e, p): return None', "must be ACTIVE"),
    ("def detect(e, f): return None\ndef tripwire_engine_entry(a): return a",
     "the engine's name"),
])
def test_broken_controls_are_refused_at_load(src: str, message: str) -> None:
    with pytest.raises(ControlError, match=message):
        Control.compile("c", src)


def test_the_shipped_library_passes_its_own_examples() -> None:
    controls = ControlSet.from_dir()
    assert all(c.examples for c in controls.controls)
    assert controls.check_examples() == []


def test_a_wrong_example_is_reported() -> None:
    src = '''
def detect(event, features):
    return None
EXAMPLES = [{"event": {}, "features": {}, "signal": "card_testing"}]
'''
    (failure,) = Control.compile("c", src).check_examples()
    assert failure.expected == "card_testing" and failure.got is None


def test_controls_test_command(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    def run(directory):  # type: ignore[no-untyped-def]
        return subprocess.run([sys.executable, "-m", "tripwire", "controls", "test", "--dir",
                               str(directory)], capture_output=True, text=True, timeout=60)

    ok = run(__import__("tripwire.controls.engine", fromlist=["LIBRARY"]).LIBRARY)
    assert ok.returncode == 0 and "card_outliers" in ok.stdout and "pass" in ok.stdout
    (tmp_path / "select.star").write_text(SELECT.source)
    (tmp_path / "wrong.star").write_text(
        'def detect(event, features):\n    return None\n'
        'EXAMPLES = [{"event": {}, "features": {}, "signal": "card_testing"}]\n')
    bad = run(tmp_path)
    assert bad.returncode == 1 and "wrong example 0: expected card_testing, got None" in \
        bad.stdout
    (tmp_path / "wrong.star").write_text("def detect(event, features):\n    return (\n")
    broken = run(tmp_path)
    assert broken.returncode == 2 and "a control does not load" in broken.stderr


def test_shadow_runs_but_never_decides_and_canary_decides_for_a_stable_share() -> None:
    from tripwire.connectors.simulator import CARD_SCHEMA, normal_card_payments
    from tripwire.schemas.records import InRecord
    from tripwire.state.manager import StateManager
    from tripwire.streams.decision_path import DecisionPath

    deny = ('def detect(event, features):\n    return {"signal": "sanctioned_country", '
            '"score": 1, "reason": "x"}\n')
    shadow = Control.compile("shadow_deny", 'MODE = "SHADOW"\n' + deny)
    canary = Control.compile("canary_deny", 'MODE = "CANARY"\nCANARY_PERCENT = 30\n' + deny)
    base = DecisionPath.default()
    events = list(normal_card_payments(3, 1_790_000_000_000, 400, cards=400))

    def outcomes(controls: list[Control]) -> dict[str, tuple[str, list[str]]]:
        path = DecisionPath(base.codec, ControlSet([*controls, RESPOND, SELECT]))
        state = StateManager(path.name, list(path.stores))
        recs = [InRecord("t", 0, i, b"k", base.codec.encode(CARD_SCHEMA, e), e["event_time"])
                for i, e in enumerate(events)]
        outs = path.process(recs, events[-1]["event_time"], state)
        got = {}
        for o in outs:
            rec = base.codec.decode(o.value)[1]
            if o.topic_key == "decisions":
                got[rec["event_id"]] = (rec["outcome"], got.get(rec["event_id"], ("", []))[1])
            elif o.topic_key == "control_executions":
                prev = got.get(rec["event_id"], ("", []))
                got[rec["event_id"]] = (prev[0], [*prev[1], *(e["mode"] for e in
                                                            rec["executions"])])
        return got

    shadowed = outcomes([shadow])
    assert {o for o, _ in shadowed.values()} == {"ALLOW"}  # logged, never decides
    assert all(modes == ["SHADOW"] for _, modes in shadowed.values())  # nothing fed on
    canaried = outcomes([canary])
    denied = {e["account_id"] for e in events if canaried[e["event_id"]][0] == "DENY"}
    allowed = {e["account_id"] for e in events if canaried[e["event_id"]][0] == "ALLOW"}
    assert not denied & allowed  # the same account always gets the same treatment
    share = len(denied) / len(denied | allowed)
    assert 0.2 < share < 0.4  # about the declared 30 %
    assert outcomes([canary]) == canaried  # deterministic


def test_mode_declarations_are_checked() -> None:
    with pytest.raises(ControlError, match="MODE"):
        Control.compile("c", 'MODE = "SOMETIMES"\ndef detect(e, f): return None')
    with pytest.raises(ControlError, match="CANARY_PERCENT"):
        Control.compile("c", 'MODE = "CANARY"\ndef detect(e, f): return None')


def test_tier_two_is_deferred_and_the_emergency_stop_halts_it() -> None:
    slow = Control.compile("deep_scan", 'TIER = 2\ndef detect(event, features):\n'
                                        '    return {"score": 1, "reason": "deep"}\n')
    net = _network(slow)
    verdict = net.evaluate("CardPayment", {}, {})
    assert verdict.outcome == "ALLOW" and verdict.results == []  # never in the decision
    (later,) = net.evaluate_deferred("CardPayment", {}, {})
    assert later.signal == "deep_scan" and later.score == 1
    assert net.emergency_stop(tier=2) == ["deep_scan"]
    assert net.evaluate_deferred("CardPayment", {}, {}) == []
    with pytest.raises(ControlError, match="selection"):
        net.emergency_stop(["select"])
    net.resume()
    assert len(net.evaluate_deferred("CardPayment", {}, {})) == 1


def test_when_runs_a_control_only_on_matching_events() -> None:
    topups = Control.compile("topups", 'WHEN = {"kind": ["TOPUP", "REFUND"]}\n'
                                       'def detect(event, features):\n'
                                       '    return {"score": 1, "reason": event["kind"]}\n')
    net = _network(topups)
    assert net.evaluate("CardPayment", {"kind": "AUTHORISATION"}, {}).results == []
    hit = net.evaluate("CardPayment", {"kind": "REFUND"}, {})
    assert hit.results[0].reason == "REFUND" and hit.outcome == "MANUAL_REVIEW"
    with pytest.raises(ControlError, match="WHEN"):
        Control.compile("c", 'WHEN = ["kind"]\ndef detect(e, f): return None')


_REPEATS = st.lists(st.tuples(st.sampled_from(["GB", "FR", "NG"]), st.integers(0, 4),
                              st.sampled_from(["acc-1", "acc-2", "acc-3", "acc-4"])),
                    min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(_REPEATS, st.integers(1, 6))
def test_a_remembering_set_answers_as_every_call_would(
        events: list[tuple[str, int, str]], remember: int) -> None:
    """Repeats of a control's inputs are answered from its memo: the same results
    (a failure is called again, never kept), a canary still decides by entity, the
    memo never outgrows ``remember``, and a remembered answer carries the duration
    of the call that gave it and says it was remembered."""
    body = ('if features["n"] == 3:\n        return {"score": 1, "reason": event["nope"]}\n'
            '    if features["n"] > 1 or event["country"] != "GB":\n'
            '        return {"signal": "x", "score": features["n"], "reason": event["country"]}\n'
            '    return None')
    counted = _control("counted", body)
    canary = Control.compile("canary", 'MODE = "CANARY"\nCANARY_PERCENT = 50\n'
                             + BASE.format(body=body))
    plain = _network(counted, canary)
    memo = plain.remembering(remember)
    for country, n, key in events:
        args = ("CardPayment", {"country": country}, {"n": n}, key)
        known = {cid: dict(m) for cid, m in memo._memos.items()}
        want, got = plain.evaluate(*args), memo.evaluate(*args)
        assert (want.outcome, want.actions, want.reason) == (got.outcome, got.actions, got.reason)
        assert [replace(r, duration_us=0) for r in want.results] == \
            [replace(r, duration_us=0, remembered=False) for r in got.results]
        for r in got.results:
            assert r.error is None or r.inputs_json not in memo._memos[r.control_id]
            # answered from the memo exactly when its inputs were there
            assert r.remembered == (r.inputs_json in known.get(r.control_id, {}))
            if r.remembered:
                assert r.duration_us == known[r.control_id][r.inputs_json].duration_us
    assert all(len(m) <= remember for m in memo._memos.values())
    assert not plain._memos  # a plain set calls every time and keeps nothing


def test_a_remembering_set_calls_each_input_once() -> None:
    spin = _control("spin", 'x = 0\n    for i in range(20000):\n        x += i\n'
                            '    return {"score": 1, "reason": event["country"]}', budget_ms=500)
    net = _network(spin).remembering(100)
    firsts = [net.evaluate("CardPayment", {"country": c}, {}).results[0] for c in "ABC"]
    again = [net.evaluate("CardPayment", {"country": c}, {}).results[0] for c in "CBA"]
    assert [r.duration_us for r in again] == [r.duration_us for r in reversed(firsts)]
    assert len(net._memos["spin"]) == 3 and firsts[0].duration_us > 0
    assert not any(r.remembered for r in firsts) and all(r.remembered for r in again)
    assert replace(again[0], remembered=False) == firsts[2]  # the whole result, duration too
    assert net.evaluate("CardPayment", {"country": "A"}, {}).results[0] is again[2]


def test_a_result_is_made_again_from_its_values() -> None:
    verdict = _network(_control("fine", 'return {"signal": "x", "score": 0.5, "reason": "ok"}')) \
        .evaluate("CardPayment", {"country": "GB"}, {})
    for r in verdict.results:
        again = ControlResult.of(r.values())
        assert again == r and again.values() == r.values() and again.fired == r.fired
        kept = r.as_remembered()  # a memo's copy: the same but for the mark
        assert kept.remembered and not r.remembered and replace(kept, remembered=False) == r
        assert ControlResult.of(kept.values()) == kept and kept.output_json == r.output_json
    with pytest.raises(ValueError):
        ControlResult.of(verdict.results[0].values()[:-1])  # one value short
