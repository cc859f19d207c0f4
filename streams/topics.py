"""Every topic tripwire reads or writes, declared once.

Names follow a platform team's convention: ``<domain>.<entity>.v<major>`` for
upstream events and ``tripwire.<stream>.v<major>`` for what tripwire writes. A
``namespace`` prefix (``TRIPWIRE_TOPIC_NAMESPACE``) isolates test runs and demos.

>>> topic("decisions", "t1.")
't1.tripwire.decisions.v1'
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Literal

from tripwire.features.spec import ENTITIES
from tripwire.schemas.validate import DAY_MS

__all__ = ["ANSWERS", "INPUTS", "TOPICS", "TopicSpec", "apart_entity", "declared", "node_topic_key",
           "spec", "topic"]



@dataclass(frozen=True)
class TopicSpec:
    key: str  # stable handle used in code, e.g. "card_payments"
    name: str
    purpose: str
    partitions: int = 6
    cleanup: Literal["delete", "compact"] = "delete"
    retention_ms: int | None = 7 * DAY_MS  # None: keep forever
    schema: str | None = None  # Avro full name of the value, when there is one
    keyed_by: str = ""

    def config(self) -> dict[str, str]:
        cfg: dict[str, str] = {"cleanup.policy": self.cleanup}
        if self.cleanup == "delete":
            cfg["retention.ms"] = str(self.retention_ms if self.retention_ms is not None else -1)
        return cfg


def node_topic_key(entity: str, apart: frozenset[str] | set[str] = frozenset()) -> str:
    """The topic key an entity's feature requests go to.

    >>> node_topic_key("card"), node_topic_key("ip", {"ip"})
    ('features', 'features_ip')
    """
    return f"features_{entity}" if entity in apart else "features"


_PUBLIC: tuple[TopicSpec, ...] = (
    TopicSpec("card_payments", "payments.card.v1",
              "Card authorisations and card top-ups from the card processor",
              schema="tripwire.events.CardPayment", keyed_by="card_token"),
    TopicSpec("logins", "security.login.v1",
              "Logins and account-security events (password, device, payee changes)",
              schema="tripwire.events.LoginEvent", keyed_by="user_id"),
    TopicSpec("fps", "payments.fps.v1",
              "Faster Payments messages: requests, responses, reversals, repeats",
              schema="tripwire.events.FpsMessage", keyed_by="account"),
    TopicSpec("decisions", "tripwire.decisions.v1",
              "One decision per event: outcome, actions, rule hits, features, versions",
              schema="tripwire.decisions.Decision", retention_ms=30 * DAY_MS,
              keyed_by="entity_key"),
    TopicSpec("decide_answers", "tripwire.decide-answers.v1",
              "The inline decide API's answers (the first per reference stands) and, next "
              "to each stand-in, the pipeline's late decision; as many partitions as the "
              "decisions topic", schema="tripwire.decide.InlineAnswer",
              retention_ms=30 * DAY_MS, keyed_by="entity_key"),
    TopicSpec("control_executions", "tripwire.control-executions.v1",
              "Every control execution: inputs read, outputs, version, latency, error",
              retention_ms=30 * DAY_MS, keyed_by="event_id"),
    TopicSpec("quarantine", "tripwire.quarantine.v1",
              "Refused messages with their original bytes, source position and reasons",
              partitions=3, retention_ms=90 * DAY_MS, keyed_by="source"),
    TopicSpec("action_requests", "tripwire.action-requests.v1",
              "Internal: one request per action of each decision, and resume commands, in "
              "one order (partition 0)", partitions=1, retention_ms=7 * DAY_MS,
              schema="tripwire.actions.ActionRequest", keyed_by="target"),
    TopicSpec("actions", "tripwire.actions.v1",
              "What was done about each action of each decision: done, suppressed, held by "
              "a rate limit, failed; once per action", retention_ms=90 * DAY_MS,
              schema="tripwire.actions.ActionRequest", keyed_by="target"),
    TopicSpec("customer_alerts", "tripwire.customer-alerts.v1",
              "Customer alerts (SMS/push) waiting to be sent", partitions=3,
              schema="tripwire.alerts.CustomerAlert", keyed_by="account_id"),
    TopicSpec("alert_deliveries", "tripwire.alert-deliveries.v1",
              "How each customer alert ended: sent, summarised, expired or dead", partitions=3,
              retention_ms=90 * DAY_MS, schema="tripwire.alerts.AlertDelivery",
              keyed_by="account_id"),
    TopicSpec("customer_alerts_dead", "tripwire.customer-alerts-dead.v1",
              "Customer alerts the gateway refused or never took, with the reason "
              "(`tripwire alerts replay-dead` sends them again)", partitions=1,
              retention_ms=None, schema="tripwire.alerts.CustomerAlert", keyed_by="account_id"),
    TopicSpec("alert_control", "tripwire.alert-control.v1",
              "Whether customer alerts are paused, and by whom: latest wins", partitions=1,
              cleanup="compact", schema="tripwire.ops.AuditRecord", keyed_by="channel"),
    TopicSpec("cases", "tripwire.cases.v1",
              "Fraud cases, one open per entity and typology: latest record per case wins",
              cleanup="compact", schema="tripwire.cases.Case", keyed_by="case_id"),
    TopicSpec("ops_alerts", "tripwire.ops-alerts.v1",
              "Alerts for the engineers on call: rate limits tripped and resumed",
              partitions=1, retention_ms=90 * DAY_MS, schema="tripwire.ops.OpsAlert",
              keyed_by="subject"),
    TopicSpec("soc_alerts", "tripwire.soc-alerts.v1",
              "Systemic-attack alerts for the security operations centre: raised, ongoing, "
              "cleared, with the common pattern", partitions=1, retention_ms=None,
              schema="tripwire.alerts.SystemicAttackAlert", keyed_by="tripwire"),
    TopicSpec("monitor_state", "tripwire.monitor-state.v1",
              "Internal: the system-wide monitor's counts, baselines and cursor (latest per "
              "cell wins)", partitions=1, cleanup="compact", keyed_by="cell"),
    TopicSpec("audit", "tripwire.audit.v1",
              "Audit trail: control changes, reloads, pauses and resumes", partitions=1,
              retention_ms=None),
    TopicSpec("controls", "tripwire.controls.v1",
              "Control plane: the active version of every control, latest wins",
              partitions=1, cleanup="compact", keyed_by="control_id"),
    TopicSpec("gather", "tripwire.gather.v1",
              "Internal: validated events and their feature fragments, gathered per event",
              retention_ms=DAY_MS, keyed_by="identity"),
)
# Feature requests of every entity share one topic: librdkafka sends one produce
# request per partition, so an intake batch costs one request per partition it
# writes — with a topic per entity that was up to 8 entities x 6 partitions per
# batch, and the broker's and clients' per-request work dominated moderate rates
# (docs/performance.md, 2026-11-29 session 3). An entity can still be served
# apart, by feature workers of its own (TRIPWIRE_NODES_APART): its requests then go
# to a topic of its own, so a slow or hot node holds back no other.
_FEATURE_NODES = (
    TopicSpec("features", "tripwire.features.v1",
              "Internal: feature requests for the entity nodes, keyed by entity key",
              retention_ms=DAY_MS, keyed_by="entity key"),
    *(TopicSpec(node_topic_key(entity, {entity}), f"tripwire.features.{entity}.v1",
                f"Internal: feature requests for the {entity} node served apart "
                f"(TRIPWIRE_NODES_APART), keyed by {entity}",
                partitions=1 if entity == "system" else 6, retention_ms=DAY_MS,
                keyed_by=entity)
      for entity in ENTITIES),
)


TOPICS: tuple[TopicSpec, ...] = (*_PUBLIC, *_FEATURE_NODES)
_APART = {node_topic_key(e, {e}): e for e in ENTITIES}  # an entity's own topic → the entity


def apart_entity(topic_key: str) -> str:
    """The entity whose own feature topic ``topic_key`` is ("" for any other topic).

    >>> apart_entity("features_ip"), apart_entity("features")
    ('ip', '')
    """
    return _APART.get(topic_key, "")


def declared(apart: Collection[str] = ()) -> tuple[TopicSpec, ...]:
    """The topics a deployment needs: every public and internal topic, and the
    feature topics of the entities served apart (``TRIPWIRE_NODES_APART``) only —
    the others' would stand idle on the broker.

    >>> [t.key for t in declared({"ip"}) if t.key.startswith("features")]
    ['features', 'features_ip']
    """
    return tuple(t for t in TOPICS if apart_entity(t.key) in ("", *apart))


# The answers to events — what analysts and downstream systems act on. The decision
# path sends them at once, outside its state transaction (at least once: a replay
# after a crash sends the same records again; a decision keeps its decision_id, a
# quarantine record its source topic, partition and offset).
ANSWERS: frozenset[str] = frozenset({"decisions", "control_executions", "quarantine"})

# The upstream events the decision path reads, by topic key.
INPUTS: tuple[str, ...] = ("card_payments", "logins", "fps")

_BY_KEY = {t.key: t for t in TOPICS}


def spec(key: str) -> TopicSpec:
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KeyError(f"unknown topic {key!r}; known: {', '.join(_BY_KEY)}") from None


def topic(key: str, namespace: str = "") -> str:
    """The full topic name for a declared topic under ``namespace``."""
    return f"{namespace}{spec(key).name}"


def create_topics(bootstrap: str, namespace: str = "", specs: Iterable[TopicSpec] | None = None,
                  partitions: int | None = None, timeout: float = 30.0) -> dict[str, str]:
    """Create ``specs`` (default: the declared topics, no entity served apart, see
    :func:`declared`) if missing; returns name -> "created" | "exists"."""
    from tripwire.connectors import kafka

    return kafka.create_topics(bootstrap, namespace, declared() if specs is None else specs,
                               partitions, timeout)
