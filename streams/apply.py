"""Decisions carried out: each action of each decision once, by the action policy.

    decisions ──► actions ──► tripwire.action-requests.v1 ──► apply ──► actions (statuses)
    (by entity)   (any number     (one partition: one order,     │        customer alerts
                   of workers)     one owner at a time)          └──────► ops alerts, alert control

* **actions** (:class:`ActionStage`, stateless): every action of a decision
  becomes a request (:func:`~tripwire.controls.actions.requests_of`), its id
  derived from the decision, so a decision sent again (the decide stage sends
  at least once) gives the same requests.
* **apply** (:class:`ApplyStage`): one partition, so its rate limits count every
  worker's actions and hold across workers (a partition has one owner at a time);
  per subject it keeps what is in effect (a blocked card, an open case, the last
  alert per incident), and the ids of the requests it has applied.

Both run in a loop that commits outputs, state and input offsets in one Kafka
transaction (``eager=False``): after a crash or a rebalance the inputs since the
last commit are read again against the state of that commit, and what they gave
before was never visible to read-committed readers. Each (decision, action)
therefore has exactly one record on ``tripwire.actions.v1`` with the status it
ended in (and one customer alert where one was sent), however often decisions
and requests arrive.

A rate limit that trips holds its actions (``RATE_LIMITED``), in order, in the
applier's state, and raises an ops alert; ``tripwire actions resume LIMIT``
writes an audited resume into the request log, where it takes its place in the
one order, and the held actions are applied then, each once.
"""

from __future__ import annotations

import bisect
import logging
import struct
from collections.abc import Sequence
from typing import Any

import orjson

from tripwire.controls.actions import (
    ACTION_SCHEMA,
    ALERT_SCHEMA,
    CASE_SCHEMA,
    OPS_ALERT_SCHEMA,
    ActionPolicy,
    Limit,
    requests_of,
)
from tripwire.controls.decider import DECISION_SCHEMA
from tripwire.controls.plane import AUDIT_SCHEMA
from tripwire.schemas.codec import AvroCodec, DecodeError
from tripwire.schemas.records import InRecord, OutRecord
from tripwire.state.expiring import Expiring
from tripwire.state.manager import StateManager, StateView
from tripwire.streams.processor import Processor, decoded

__all__ = ["APPLIER_STORE", "CLOSE_CASE", "OVERRIDE", "REQUESTS_PARTITION", "RESUME",
           "ActionStage", "ApplyStage"]

logger = logging.getLogger(__name__)

APPLIER_STORE = "applier.v1"
RESUME = "actions.resume"  # the audit action of a resume, also the command's
CLOSE_CASE = "cases.close"  # ... of a case closed (its subject: the case's target)
OVERRIDE = "override"  # ... of a decision overturned (details: what to undo, what to do)
# every request and command goes to this partition of the request topic (one order,
# whatever partition count the topic was created with)
REQUESTS_PARTITION = 0
_SEQ = struct.Struct(">Q")


class ActionStage(Processor):
    """Decisions → action requests (one per action), all to the one request partition."""

    name = "actions"

    def __init__(self, codec: AvroCodec) -> None:
        self.codec = codec
        self.requested = 0

    def process(self, batch: Sequence[InRecord], now_ms: int,
                state: StateManager) -> list[OutRecord]:
        out = []
        for _, schema, decision in decoded(self.codec, batch):
            if schema.name != DECISION_SCHEMA:
                continue
            for req in requests_of(decision):
                out.append(OutRecord("action_requests", req["target"].encode(),
                                     self.codec.encode(ACTION_SCHEMA, req), REQUESTS_PARTITION))
        self.requested += len(out)
        return out


def _json(raw: bytes | None, default: Any) -> Any:
    return default if raw is None else orjson.loads(raw)


def _decode_limit(raw: bytes | None) -> dict[str, Any]:
    st = _json(raw, None) or {"times": [], "tripped_at": None, "held": 0, "seq": 0}
    st["times"].sort()
    return st


class ApplyStage(Processor):
    """Action requests (and resume commands) → what was done, once each."""

    name = "apply"
    stores: tuple[str, ...] = (APPLIER_STORE,)

    def __init__(self, codec: AvroCodec, policy: ActionPolicy | None = None) -> None:
        self.codec = codec
        self.policy = policy or ActionPolicy()
        self.seen = Expiring(APPLIER_STORE)  # action id -> the status it ended in
        self.replayed = 0  # requests applied before (a decision or request sent again)
        self._watermark: dict[tuple[str, int], int] = {}

    def process(self, batch: Sequence[InRecord], now_ms: int,
                state: StateManager) -> list[OutRecord]:
        out: list[OutRecord] = []
        views: dict[tuple[str, int], StateView] = {}
        for rec in batch:
            if rec.value is None:
                continue
            tp = (rec.topic, rec.partition)
            view = views.get(tp) or views.setdefault(tp, state.view(*tp))
            try:
                schema, msg = self.codec.decode(rec.value)
            except DecodeError as exc:
                logger.error("action request %s[%d]@%d unreadable (%s); skipped", rec.topic,
                             rec.partition, rec.offset, exc)
                continue
            if schema.name == AUDIT_SCHEMA and msg["action"] == RESUME:
                out += self._resume(view, msg)
            elif schema.name == AUDIT_SCHEMA and msg["action"] == OVERRIDE:
                out += self._override(view, msg)
            elif schema.name == AUDIT_SCHEMA and msg["action"] == CLOSE_CASE:
                # a case closed: its entity and typology may have a case again
                view.delete(APPLIER_STORE, f"t:OPEN_CASE|{msg['subject']}".encode())
            elif schema.name == ACTION_SCHEMA:
                out += self._request(view, msg)
                mark = self._watermark.get(tp, 0)
                self._watermark[tp] = max(mark, msg["requested_at"])
        for tp, view in views.items():
            self.seen.expire(view, self._watermark.get(tp, 0) - self.policy.remember_ms)
        state.batch_done()
        return out

    # -- requests ---------------------------------------------------------------
    def _request(self, view: StateView, req: dict[str, Any]) -> list[OutRecord]:
        key = req["action_id"].encode()
        if self.seen.get(view, key) is not None:
            self.replayed += 1
            return []
        out: list[OutRecord] = []
        in_effect = self._in_effect(view, req)
        if in_effect:
            return self._ended(view, req, "SUPPRESSED", in_effect, out)
        t = req["requested_at"]
        limits = self.policy.by_action.get(req["action"], ())
        counters = []
        for lim in limits:
            scope = lim.scope(req)
            st = self._limit(view, scope)
            if st["tripped_at"] is None:
                # times are kept sorted: those within the window are the tail
                old = bisect.bisect_right(st["times"], t - lim.window_ms)
                if len(st["times"]) - old < lim.max:
                    counters.append((st, old))
                    continue
                del st["times"][:old]
                st["tripped_at"] = t
                out.append(self._ops_alert(
                    f"{scope}@{t}", t, "RATE_LIMIT_TRIPPED", scope,
                    f"{req['action']}: more than {lim.max} in {lim.window_ms // 60_000} min "
                    f"({'system-wide' if lim.per == 'system' else 'per ' + lim.per}); this "
                    f"and later {req['action']} actions are held until `tripwire actions "
                    f"resume {lim.id}`", {"limit": lim.id, "action_id": req["action_id"]}))
            return self._hold(view, req, lim, scope, st, out)
        for st, old in counters:
            del st["times"][:old]
            bisect.insort(st["times"], t)
        return self._carry_out(view, req, "", out)

    def _hold(self, view: StateView, req: dict[str, Any], lim: Limit, scope: str,
              st: dict[str, Any], out: list[OutRecord]) -> list[OutRecord]:
        st["seq"] += 1
        st["held"] += 1
        view.put(APPLIER_STORE, b"h:" + scope.encode() + b"\0" + _SEQ.pack(st["seq"]),
                 orjson.dumps(req))
        return self._ended(view, req, "RATE_LIMITED",
                           f"held by limit {lim.id} (tripped at {st['tripped_at']})", out)

    @staticmethod
    def _limit(view: StateView, scope: str) -> dict[str, Any]:
        """A limit's counter, decoded once and written back once per batch or commit
        (a system-wide limit is one hot key: every action of its type reads it).
        Changed in place."""
        m = view.manager
        return m.decoded(APPLIER_STORE, _decode_limit, orjson.dumps).get(
            m, view.tp, b"l:" + scope.encode())

    def _in_effect(self, view: StateView, req: dict[str, Any]) -> str:
        """Why the request's effect is already in place ("" when it is not)."""
        action, target = req["action"], req["target"]
        if action in ("BLOCK_CARD", "OPEN_CASE"):
            prior = _json(view.get(APPLIER_STORE, f"t:{action}|{target}".encode()), None)
            if prior is not None:
                what = "card already blocked" if action == "BLOCK_CARD" else "case already open"
                return f"{what} (action {prior['action_id']})"
        elif action == "CUSTOMER_ALERT":
            prior = _json(view.get(APPLIER_STORE, self._incident(req)), None)
            if prior is not None and \
                    req["requested_at"] - prior["at"] < self.policy.alert_quiet_ms:
                return (f"customer already alerted for this incident "
                        f"(action {prior['action_id']})")
        return ""

    @staticmethod
    def _incident(req: dict[str, Any]) -> bytes:
        return f"t:CUSTOMER_ALERT|{req['target']}|{req['typology']}".encode()

    def _carry_out(self, view: StateView, req: dict[str, Any], detail: str,
                   out: list[OutRecord]) -> list[OutRecord]:
        """Apply the request now (its effect is checked again: a held action may have
        been overtaken while it waited)."""
        in_effect = self._in_effect(view, req)
        if in_effect:
            return self._ended(view, req, "SUPPRESSED", "; ".join(
                x for x in (detail, in_effect) if x), out)
        action, target, t = req["action"], req["target"], req["requested_at"]
        done = orjson.dumps({"action_id": req["action_id"], "at": t})
        if action in ("BLOCK_CARD", "OPEN_CASE"):
            view.put(APPLIER_STORE, f"t:{action}|{target}".encode(), done)
        elif action == "CUSTOMER_ALERT":
            view.put(APPLIER_STORE, self._incident(req), done)
            out.append(OutRecord("customer_alerts", target.encode(), self.codec.encode(
                ALERT_SCHEMA, {
                    "alert_id": req["action_id"], "account_id": target,
                    "decision_id": req["decision_id"], "channel": "SMS",
                    "template": f"fraud_check.{req['typology'] or 'general'}",
                    "parameters": {"event_id": req["event_id"], "typology": req["typology"]},
                    "created_at": t})))
        if action == "OPEN_CASE":
            out.append(OutRecord("cases", req["action_id"].encode(), self.codec.encode(
                CASE_SCHEMA, {
                    "case_id": req["action_id"], "entity_key": req["entity_key"],
                    "typology": req["typology"], "target": target, "status": "OPEN",
                    "opened_at": t, "updated_at": t, "decision_id": req["decision_id"],
                    "event_id": req["event_id"], "assignee": None, "label": None,
                    "actor": "applier", "note": ""})))
        elif action == "PAUSE_CUSTOMER_ALERTS":
            out.append(OutRecord("alert_control", b"customer_alerts", self.codec.encode(
                AUDIT_SCHEMA, {
                    "audit_id": req["action_id"], "at": t, "actor": "applier",
                    "action": "alerts.pause", "subject": "customer_alerts",
                    "reason": f"decision {req['decision_id']} ({req['typology']})",
                    "details_json": "{}"})))
        return self._ended(view, req, "DONE", detail, out)

    def _ended(self, view: StateView, req: dict[str, Any], status: str, detail: str,
               out: list[OutRecord]) -> list[OutRecord]:
        """Record how a request ended (on the actions topic) and remember it."""
        self.seen.put(view, req["action_id"].encode(), status.encode(),
                      req["requested_at"] + self.policy.remember_ms)
        record = {**req, "status": status, "detail": detail or None}
        out.append(OutRecord("actions", req["target"].encode(),
                             self.codec.encode(ACTION_SCHEMA, record),
                             meta=("action", req["action"], status)))
        return out

    # -- overrides ---------------------------------------------------------------
    def _override(self, view: StateView, cmd: dict[str, Any]) -> list[OutRecord]:
        """An analyst overturned a decision: its actions carried out are undone (a
        block lifted, funds released, a case slot freed; an alert sent stays sent),
        held ones dropped, and the actions of the new outcome requested. Once per
        override: the same override sent again does nothing."""
        key = b"override:" + cmd["audit_id"].encode()
        if self.seen.get(view, key) is not None:
            self.replayed += 1
            return []
        details = orjson.loads(cmd["details_json"])
        why = f"overridden to {details['to']} by {cmd['actor']}: {cmd['reason']}"
        out: list[OutRecord] = []
        for req in details.get("undo", []):
            status = self.seen.get(view, req["action_id"].encode())
            if status == b"RATE_LIMITED":
                for k, raw in list(view.items(APPLIER_STORE, b"h:")):
                    if orjson.loads(raw)["action_id"] == req["action_id"]:
                        view.delete(APPLIER_STORE, k)
            elif status != b"DONE" or req["action"] == "CUSTOMER_ALERT":
                continue  # never done, already undone, or not undoable (a message sent)
            action, target = req["action"], req["target"]
            if action in ("BLOCK_CARD", "OPEN_CASE"):
                slot = f"t:{action}|{target}".encode()
                held = _json(view.get(APPLIER_STORE, slot), None)
                if held is not None and held["action_id"] == req["action_id"]:
                    view.delete(APPLIER_STORE, slot)
            self._ended(view, req, "UNDONE", why, out)
        for req in details.get("do", []):
            out += self._request(view, req)
        self.seen.put(view, key, b"DONE", cmd["at"] + self.policy.remember_ms)
        return out

    # -- resume -----------------------------------------------------------------
    def _resume(self, view: StateView, cmd: dict[str, Any]) -> list[OutRecord]:
        """Apply every action a tripped limit holds, in order, and reset it. The
        subject is a limit's id (every scope of it) or one scope."""
        wanted = cmd["subject"]
        out: list[OutRecord] = []
        view.manager.checkpoint()  # every counter in the store, to be listed
        scopes = sorted({k[2:].decode() for k, _ in view.items(APPLIER_STORE, b"l:")})
        released = 0
        for scope in scopes:
            if scope != wanted and not scope.startswith(wanted + ":"):
                continue
            st = self._limit(view, scope)
            if st["tripped_at"] is None:
                continue
            prefix = b"h:" + scope.encode() + b"\0"
            held = list(view.items(APPLIER_STORE, prefix))  # in order: keys end in seq
            detail = f"held, then released by {cmd['actor']}: {cmd['reason']}"
            for key, raw in held:
                view.delete(APPLIER_STORE, key)
                self._carry_out(view, orjson.loads(raw), detail, out)
            released += len(held)
            st.update(times=[], tripped_at=None, held=0)
        out.append(self._ops_alert(
            f"resume:{cmd['audit_id']}", cmd["at"], "RATE_LIMIT_RESUMED", wanted,
            f"{released} held action(s) applied on resume by {cmd['actor']}: {cmd['reason']}",
            {"released": released}))
        return out

    def _ops_alert(self, alert_id: str, at: int, kind: str, subject: str, summary: str,
                   details: dict[str, Any]) -> OutRecord:
        return OutRecord("ops_alerts", subject.encode(), self.codec.encode(OPS_ALERT_SCHEMA, {
            "alert_id": alert_id, "raised_at": at, "kind": kind, "subject": subject,
            "summary": summary, "details_json": orjson.dumps(details).decode()}))
