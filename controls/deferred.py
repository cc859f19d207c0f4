"""Tier-2 controls: run after the decision, off the decision path, never blocking it.

The decision path hands each event that has tier-2 controls to :meth:`submit`
(non-blocking); a thread runs them in batches in a memory-capped
:class:`~tripwire.controls.sandbox.Sandbox` process and writes their
control-execution records. An emergency stop
(:meth:`~tripwire.controls.engine.ControlSet.emergency_stop`, ``tripwire controls
stop tier:2``) takes effect for the next batch. When the queue is full the
event's tier-2 controls are recorded as not run, with the reason: nothing is
skipped silently.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from tripwire.controls.engine import Control, ControlSet
from tripwire.controls.results import ControlResult
from tripwire.controls.sandbox import DEFAULT_MEMORY_MB, Sandbox
from tripwire.schemas.records import OutRecord

__all__ = ["DeferredRunner"]

logger = logging.getLogger(__name__)

# (event type, event, features, entity key, event id, decision id, decided at)
Job = tuple[str, dict[str, Any], dict[str, Any], str, str, str, int]
Executions = Callable[[str, str, list[ControlResult], int], list[OutRecord]]


class DeferredRunner:
    def __init__(self, controls: Callable[[], ControlSet], executions: Executions,
                 send: Callable[[list[OutRecord]], None], memory_mb: int = DEFAULT_MEMORY_MB,
                 max_queue: int = 50_000, batch: int = 200,
                 flush: Callable[[], object] = lambda: None) -> None:
        self.controls, self.executions, self.send, self.flush = controls, executions, send, flush
        self.memory_mb, self.batch = memory_mb, batch
        self.queue: queue.Queue[Job | None] = queue.Queue(max_queue)
        self.done = 0
        self.refused = 0
        self._sandbox: Sandbox | None = None
        self._running: list[Control] = []
        self._thread = threading.Thread(target=self._run, name="tier2", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            self.refused += 1
            results = [_not_run(c, "tier-2 queue full: not run")
                       for c in self.controls().for_type(job[0], deferred=True)]
            self.send(self.executions(job[4], job[5], results, job[6]))

    def _run(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                break
            jobs = [job]
            while len(jobs) < self.batch:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._work(jobs)
                    return
                jobs.append(nxt)
            self._work(jobs)

    def _work(self, jobs: list[Job]) -> None:
        cs = self.controls()
        running = [c for c in cs.controls if c.tier == 2 and c.control_id not in cs.stopped]
        if not running:
            return  # emergency stop: nothing runs
        try:
            if running != self._running or self._sandbox is None:
                if self._sandbox is not None:
                    self._sandbox.close()
                self._sandbox = Sandbox(running, self.memory_mb)
                self._running = running
            answers = self._sandbox.run([(j[0], j[1], j[2], j[3]) for j in jobs])
        except Exception:
            logger.exception("tier-2 controls could not run")
            answers = [[_not_run(c, "the tier-2 sandbox failed") for c in running
                        if c.applies(j[0])] for j in jobs]
        out: list[OutRecord] = []
        for j, results in zip(jobs, answers, strict=True):
            out += self.executions(j[4], j[5], results, j[6])
        self.send(out)
        self.done += len(jobs)

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop."""
        self.queue.put(None)
        self._thread.join(timeout)
        if self._sandbox is not None:
            self._sandbox.close()
        self.flush()  # the records written so far reach Kafka


def _not_run(c: Control, why: str) -> ControlResult:
    return ControlResult(c.control_id, c.version, None, "", (), 0.0, why, 0, c.mode, False,
                         c.stage)
