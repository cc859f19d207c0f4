"""Controls are compiled, and their examples run, in a bounded child before they
may run here (issue 19): a module-level loop that never ends, a constant that
takes gigabytes to fold, a huge allocation and a crash inside Starlark refuse the
control with the reason; this process never sees them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tripwire.controls.engine import Control, ControlSet
from tripwire.controls.isolate import check_apart
from tripwire.controls.results import ControlError

QUIET = "def detect(event, features):\n    return None\n"
HANGS = ("def spin():\n    n = 0\n    for i in range(100000):\n        for j in range(100000):\n"
         "            n += 1\n    return n\nN = spin()\n" + QUIET)
HEAVY = "def detect(event, features):\n    s = \"x\" * 1000000000\n    return None\n"
HUGE = "X = [0] * 1000000000\n" + QUIET
DEEP = ('def detect(event, features):\n    x = []\n    for i in range(5000):\n'
        '        x = [x]\n    return {"score": 0.5, "signal": "s", "reason": json.encode(x)}\n'
        'EXAMPLES = [{"event": {}, "features": {}, "signal": "s"}]\n')


@pytest.mark.parametrize(("source", "why"), [
    (HANGS, "did not compile and run its examples within 3 s"),
    (HEAVY, ""),  # a timeout or running out of memory, whichever comes first
    (HUGE, "SIGABRT"),
    (DEEP, "died (SIGSEGV)"),
])
def test_a_control_that_hangs_or_crashes_is_refused_with_the_reason(source: str,
                                                                   why: str) -> None:
    started = time.monotonic()
    with pytest.raises(ControlError) as info:
        check_apart([("bad", source)], timeout_s=3)
    assert time.monotonic() - started < 10
    assert str(info.value).startswith("bad: ") and why in str(info.value), info.value


def test_a_good_control_passes_and_a_failing_example_is_named() -> None:
    check_apart([("ok", QUIET)])
    with pytest.raises(ControlError, match="example 0"):
        check_apart([("odd", QUIET + 'EXAMPLES = [{"event": {}, "features": {}, '
                             '"signal": "x"}]\n')])
    check_apart([("odd", QUIET + 'EXAMPLES = [{"event": {}, "features": {}, "signal": "x"}]\n')],
                examples="run")  # controls test reports failures itself


def test_a_release_and_a_directory_are_checked_apart(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="SIGABRT"):
        Control.checked("huge", HUGE)
    for name, src in (("a_quiet", QUIET), ("b_huge", HUGE)):
        (tmp_path / f"{name}.star").write_text(src)
    with pytest.raises(ControlError, match=r"^b_huge: .*SIGABRT"):
        ControlSet.from_dir(tmp_path)  # each alone, to name the culprit


def test_one_slow_builtin_fails_the_call_though_it_returned() -> None:
    """The budget is checked between Starlark steps; a string of 10**8 characters
    is one step (~0.3 s here): the call fails as over budget all the same."""
    slow = Control.compile("slow", 'def detect(event, features):\n'
                           '    s = "x" * (event["n"] * 100000000)\n'
                           '    return {"score": 0.5, "signal": "s"}\nON_ERROR = "DENY"\n')
    result = slow.run({"n": 1}, {})
    assert result.error is not None and "inside one step" in result.error, result
    assert result.outcome == "DENY"
    assert slow.run({"n": 0}, {}).error is None
