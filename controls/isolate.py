"""Compile controls and run their examples in a child process, bounded in time
and memory, before anything compiles them here.

Compiling a control runs its module-level code, and Starlark folds constant
expressions while compiling, neither under a call's budget: a module-level loop
never ends, ``"x" * 10**9`` in a function body takes seconds and gigabytes to
compile, and a huge allocation or a crash inside Starlark ends the process it
happens in. So every control from outside the shipped library (a release on the
controls topic, ``controls publish``, ``controls test``, a backtest's candidate
directory) is first compiled, and its examples run, in a child with an
address-space cap and a wall-clock bound; a control that hangs, crashes or runs
out of memory there is refused with the reason (a ``ControlError``), and the
worker, CLI or backtest goes on.

>>> check_apart([("ok", 'def detect(event, features):\\n    return None\\n')])
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Sequence
from typing import Any

from tripwire.controls.engine import DEFAULT_BUDGET_MS, Control
from tripwire.controls.results import ControlError
from tripwire.controls.sandbox import abort_note, ended, limit_memory, start_apart

__all__ = ["CHECK_MEMORY_MB", "CHECK_TIMEOUT_S", "check_apart"]

CHECK_TIMEOUT_S = 10.0  # per check, plus 1 s per control checked together
CHECK_MEMORY_MB = 1024  # address space the child may add to what it starts with


def _check(conn: Any, items: list[tuple[str, str]], budget_ms: float, examples: str,
           memory_mb: int) -> None:
    """The child: cap the address space, then compile each control and run its
    examples (``require``: they must pass; ``run``: they must end); send None, or
    (control id, why it was refused)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # a crash's backtrace: the reason says it
    limit_memory(memory_mb)
    for cid, source in items:
        try:
            if examples == "require":
                Control.checked_here(cid, source, budget_ms)
            else:
                Control.compile(cid, source, budget_ms).check_examples()
        except MemoryError:
            conn.send((cid, f"{cid}: ran out of its {memory_mb} MB while compiling"))
            return
        except Exception as exc:
            conn.send((cid, str(exc) if isinstance(exc, ControlError)
                       else f"{cid}: {type(exc).__name__}: {exc}"))
            return
    conn.send(None)


def check_apart(items: Sequence[tuple[str, str]], budget_ms: float = DEFAULT_BUDGET_MS, *,
                examples: str = "require", timeout_s: float = CHECK_TIMEOUT_S,
                memory_mb: int = CHECK_MEMORY_MB) -> None:
    """Compile each (control id, source) and run its examples in a child: they
    must pass (``examples="require"``, what a release needs) or only end
    (``"run"``: ``controls test`` reports the failures itself). Raise a
    ControlError naming the first control refused, and why."""
    items = list(items)
    if not items:
        return
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_check, args=(child, items, budget_ms, examples, memory_mb),
                       daemon=True, name="tripwire-control-check")
    start_apart(proc)
    child.close()
    limit = timeout_s + len(items) - 1
    why: str | None = None
    try:
        if parent.poll(limit):
            try:
                answer = parent.recv()
            except EOFError:  # it died before it could answer
                proc.join(5)
                code = proc.exitcode
                why = f"the process compiling it died ({ended(code)}{abort_note(code, memory_mb)})"
            else:
                if answer is not None:
                    raise ControlError(answer[1])
                return
        else:
            why = f"did not compile and run its examples within {limit:g} s"
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        parent.close()
    if len(items) > 1:  # which one: each alone
        for item in items:
            check_apart([item], budget_ms, examples=examples, timeout_s=timeout_s,
                        memory_mb=memory_mb)
    raise ControlError(f"{', '.join(cid for cid, _ in items)}: {why}")
