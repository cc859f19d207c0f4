"""Controls fail safe: errors, runaway loops and deep recursion are recorded as
values, other controls still run, and the declared fail policy applies."""

import time

import pytest

from tripwire.controls.engine import Control, ControlError, ControlSet

BASE = '''
APPLIES_TO = ["CardPayment"]
ON_ERROR = "MANUAL_REVIEW"
def evaluate(event, features):
    {body}
'''


def _control(name: str, body: str, budget_ms: float = 20) -> Control:
    return Control.compile(name, BASE.format(body=body), budget_ms)


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
    r = Control.compile("deep", src).run({}, {})
    assert r.error is not None and r.outcome is None  # default policy: IGNORE


def test_errors_are_values_and_the_others_still_run() -> None:
    broken = _control("broken", 'return {"outcome": "DENY", "reason": event["nope"]}')
    fine = _control("fine", 'return {"outcome": "STEP_UP", "reason": "ok"}')
    results = ControlSet([broken, fine]).evaluate("CardPayment", {}, {})
    assert [r.control_id for r in results] == ["broken", "fine"]
    assert results[0].error and "nope" in results[0].error
    assert results[0].outcome == "MANUAL_REVIEW"
    assert results[1].outcome == "STEP_UP" and results[1].error is None


def test_a_bad_return_value_is_an_error() -> None:
    r = _control("odd", 'return {"outcome": "MAYBE"}').run({}, {})
    assert r.error is not None and "expected None or a dict" in r.error


@pytest.mark.parametrize(("src", "message"), [
    ("def nothing(): pass", "defines no function evaluate"),
    ("def evaluate(e, f):\n  return (", "c"),
    ('ON_ERROR = "PANIC"\ndef evaluate(e, f): return None', "ON_ERROR"),
    ('APPLIES_TO = "CardPayment"\ndef evaluate(e, f): return None', "APPLIES_TO"),
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
def evaluate(event, features):
    return None
EXAMPLES = [{"event": {}, "features": {}, "outcome": "DENY"}]
'''
    (failure,) = Control.compile("c", src).check_examples()
    assert failure.expected == "DENY" and failure.got is None


def test_controls_test_command(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    def run(directory):  # type: ignore[no-untyped-def]
        return subprocess.run([sys.executable, "-m", "tripwire", "controls", "test", "--dir",
                               str(directory)], capture_output=True, text=True, timeout=60)

    ok = run(__import__("tripwire.controls.engine", fromlist=["LIBRARY"]).LIBRARY)
    assert ok.returncode == 0 and "card_outliers" in ok.stdout and "pass" in ok.stdout
    (tmp_path / "wrong.star").write_text(
        'def evaluate(event, features):\n    return None\n'
        'EXAMPLES = [{"event": {}, "features": {}, "outcome": "DENY"}]\n')
    bad = run(tmp_path)
    assert bad.returncode == 1 and "wrong example 0: expected DENY, got None" in bad.stdout
    (tmp_path / "wrong.star").write_text("def evaluate(event, features):\n    return (\n")
    broken = run(tmp_path)
    assert broken.returncode == 2 and "a control does not load" in broken.stderr


def test_shadow_runs_but_never_decides_and_canary_decides_for_a_stable_share() -> None:
    from tripwire.connectors.simulator import CARD_SCHEMA, normal_card_payments
    from tripwire.streams.decision_path import DecisionPath
    from tripwire.streams.records import InRecord
    from tripwire.streams.state import StateManager

    deny = 'def evaluate(event, features):\n    return {"outcome": "DENY", "reason": "x"}\n'
    shadow = Control.compile("shadow_deny", 'MODE = "SHADOW"\n' + deny)
    canary = Control.compile("canary_deny", 'MODE = "CANARY"\nCANARY_PERCENT = 30\n' + deny)
    base = DecisionPath.default()
    events = list(normal_card_payments(3, 1_790_000_000_000, 400, cards=400))

    def outcomes(controls: list[Control]) -> dict[str, tuple[str, list[str]]]:
        path = DecisionPath(base.codec, ControlSet(controls))
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
                got[rec["event_id"]] = (prev[0], [*prev[1], rec["mode"]])
        return got

    shadowed = outcomes([shadow])
    assert {o for o, _ in shadowed.values()} == {"ALLOW"}  # logged, never decides
    assert all(modes == ["SHADOW"] for _, modes in shadowed.values())
    canaried = outcomes([canary])
    denied = {e["account_id"] for e in events if canaried[e["event_id"]][0] == "DENY"}
    allowed = {e["account_id"] for e in events if canaried[e["event_id"]][0] == "ALLOW"}
    assert not denied & allowed  # the same account always gets the same treatment
    share = len(denied) / len(denied | allowed)
    assert 0.2 < share < 0.4  # about the declared 30 %
    assert outcomes([canary]) == canaried  # deterministic


def test_mode_declarations_are_checked() -> None:
    with pytest.raises(ControlError, match="MODE"):
        Control.compile("c", 'MODE = "SOMETIMES"\ndef evaluate(e, f): return None')
    with pytest.raises(ControlError, match="CANARY_PERCENT"):
        Control.compile("c", 'MODE = "CANARY"\ndef evaluate(e, f): return None')
