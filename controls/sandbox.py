"""Controls in a separate process with an address-space limit.

Starlark bounds time and call depth but not memory: one ``[0] * 10**9`` asks for
8 GB at once, and a failed allocation ends the whole process. The sandbox runs
controls in a child process whose address space is capped; when a control blows
it, only the child dies. The sandbox then starts a new child and runs the batch
again one control and one event at a time, so exactly the culprit gets an error
result ("exceeded the sandbox memory limit") and every other control its own
result. Used for tier-2 controls (asynchronous, never on the decision path).

>>> box = Sandbox([control])                                        # doctest: +SKIP
>>> box.run([("CardPayment", event, features, "acc-1")])            # doctest: +SKIP
[[ControlResult(...)]]
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import resource
import signal
import sys
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from typing import Any

from tripwire.controls.engine import Control
from tripwire.controls.results import ControlResult

__all__ = ["DEFAULT_MEMORY_MB", "Item", "Sandbox", "abort_note", "ended",
           "limit_memory", "start_apart"]

DEFAULT_MEMORY_MB = 512
Item = tuple[str, dict[str, Any], dict[str, Any], str]  # event type, event, features, entity key


def start_apart(proc: BaseProcess) -> None:
    """Start a spawned child that needs nothing of this program's main script.
    Spawning runs the parent's main script again in the child before its target
    (what the script defines may be pickled), unless the main is a module run
    with ``-m``: for the `tripwire` console script that is the whole CLI, ~0.4 s
    of every start or restart of a controls' child, and a script without a
    ``__main__`` guard would start children without end. The script's path is
    hidden while the child starts."""
    main = sys.modules.get("__main__")
    path = None if main is None or getattr(main, "__spec__", None) is not None else \
        main.__dict__.get("__file__")
    if path is None:
        proc.start()
        return
    del main.__file__  # type: ignore[union-attr]
    try:
        proc.start()
    finally:
        main.__file__ = path  # type: ignore[union-attr]


def limit_memory(memory_mb: int) -> None:
    """In a child: cap its address space at what it has now plus ``memory_mb``."""
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
    cap = vm + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def ended(code: int | None) -> str:
    """How a child process ended (its exit code), for a control's error."""
    return signal.Signals(-code).name if code is not None and code < 0 else f"exit {code}"


def abort_note(code: int | None, memory_mb: int) -> str:
    """What an abort most likely was: its memory cap."""
    return (f": out of its {memory_mb} MB, or an abort inside Starlark"
            if code == -signal.SIGABRT else "")


def _serve(conn: Any, sources: list[tuple[str, str, float]], memory_mb: int) -> None:
    """The child: cap the address space, compile, answer batches until told to stop."""
    limit_memory(memory_mb)
    controls = {cid: Control.compile(cid, src, budget) for cid, src, budget in sources}
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        items, only = msg
        conn.send([[c.run(event, features, key) for cid, c in controls.items()
                    if c.applies(kind) and (only is None or cid in only)]
                   for kind, event, features, key in items])


class Sandbox:
    """A child process running ``controls``; restarted when a control kills it."""

    def __init__(self, controls: Sequence[Control], memory_mb: int = DEFAULT_MEMORY_MB) -> None:
        self.controls = list(controls)
        self.memory_mb = memory_mb
        self.restarts = 0
        self._ctx = mp.get_context("spawn")
        self._start()

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        sources = [(c.control_id, c.source, c.budget.budget_ns / 1e6) for c in self.controls]
        self.proc = self._ctx.Process(target=_serve, args=(child, sources, self.memory_mb),
                                      daemon=True, name="tripwire-sandbox")
        start_apart(self.proc)
        child.close()
        self.conn = parent
        if parent.recv() != "ready":
            raise RuntimeError("the control sandbox did not start")

    def _restart(self) -> None:
        self.restarts += 1
        self.conn.close()
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
        self._start()

    def _ask(self, items: list[Item], only: list[str] | None) -> list[list[ControlResult]] | None:
        try:
            self.conn.send((items, only))
            answer: list[list[ControlResult]] = self.conn.recv()
            return answer
        except (EOFError, OSError):
            self._restart()
            return None

    def run(self, items: list[Item]) -> list[list[ControlResult]]:
        """Every applicable control's result for every item, in control order."""
        answer = self._ask(items, None)
        if answer is not None:
            return answer
        out = []
        for item in items:  # isolate the culprit: one control, one event at a time
            results = []
            for c in self.controls:
                if not c.applies(item[0]):
                    continue
                one = self._ask([item], [c.control_id])
                results += one[0] if one is not None else [self._killed(c, item)]
            out.append(results)
        return out

    def _killed(self, c: Control, item: Item) -> ControlResult:
        return c.failed(f"exceeded the sandbox memory limit of {self.memory_mb} MB (its "
                        "process was ended and restarted)", item[1], item[2], item[3])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
