"""The pipeline's shape, declared once: each stage's input topics, output topics
and processor.

    inputs ──► intake ──► features (feature nodes) ──► decide ──► decisions, executions
                  └──────────────── gather ────────────►┘

The runner (:mod:`tripwire.streams.runner`), the command line, the demo, the
benchmarks and the backtest build stages from :data:`STAGES` (the live, split
pipeline), :data:`PATH` (the same work in one processor: tests, backtests, the
one-process benchmark) and :data:`OUTCOMES` (the decisions carried out). A new
stage — the monitor, say — is a :class:`~tripwire.streams.processor.Processor`
and one entry here; its topics go in :mod:`tripwire.streams.topics`.

>>> list(STAGES)
['intake', 'features', 'decide']
>>> STAGES["features"].inputs(("ip",)), STAGES["decide"].inputs(())
(('features_ip',), ('gather',))
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from tripwire.controls.actions import ActionPolicy
from tripwire.controls.engine import ControlSet
from tripwire.controls.plane import ReleaseSource
from tripwire.features.batch import BatchTable
from tripwire.features.engine import FeatureLibrary
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.validate import Validator
from tripwire.streams.apply import ActionStage, ApplyStage
from tripwire.streams.decision_path import DecisionPath
from tripwire.streams.gather import DecisionStage
from tripwire.streams.hops import NODE_TIMEOUT_MS
from tripwire.streams.intake import IntakeStage
from tripwire.streams.nodes import FeatureStage
from tripwire.streams.processor import Processor
from tripwire.streams.topics import ANSWERS, INPUTS, node_topic_key

__all__ = ["OUTCOMES", "PATH", "STAGES", "Parts", "Stage"]


@dataclass(frozen=True)
class Parts:
    """What the stages' processors are made of, one set per worker."""

    codec: AvroCodec
    controls: ControlSet | None = None  # decide and the one-process path: required
    library: FeatureLibrary = field(default_factory=FeatureLibrary)
    node_timeout_ms: int = NODE_TIMEOUT_MS  # decide: how long a silent node is waited for
    batch: BatchTable | None = None  # batch features (TRIPWIRE_BATCH_TABLE)
    sources: Sequence[ReleaseSource] = ()  # decide: where control releases come from
    eager_hops: bool = True  # internal messages sent at once (TRIPWIRE_HOPS)
    apart: Collection[str] = ()  # entities whose requests go to topics of their own
    validator: Validator | None = None  # intake: the default policy unless given
    policy: ActionPolicy = field(default_factory=ActionPolicy)  # apply: limits, periods

    def network(self) -> ControlSet:
        if self.controls is None:
            raise ValueError("deciding needs controls (Parts.controls)")
        return self.controls


@dataclass(frozen=True)
class Stage:
    """One stage: what it reads and writes (topic keys) and how it is built."""

    name: str
    purpose: str
    # the topic keys a loop of the stage consumes; its argument: the feature nodes
    # that loop serves apart (a features loop only; empty: the shared topic)
    inputs: Callable[[Collection[str]], tuple[str, ...]]
    # the topic keys it may write, given the entities served apart
    outputs: Callable[[Collection[str]], tuple[str, ...]]
    build: Callable[[Parts], Processor]


def _node_topics(apart: Collection[str], library: FeatureLibrary | None = None) \
        -> tuple[str, ...]:
    entities = (library or FeatureLibrary()).entities()
    return tuple(sorted({node_topic_key(e, set(apart)) for e in entities}))


def _node_inputs(nodes: Collection[str]) -> tuple[str, ...]:
    return tuple(node_topic_key(e, set(nodes)) for e in nodes) if nodes else ("features",)


_ANSWERS = tuple(sorted(ANSWERS))
_DECIDE_OUT = (*_ANSWERS, "audit")  # decisions, executions, quarantine; releases audited

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("intake", "decode, validate, dedup; a request to each entity's node, the event "
          "to the gather topic",
          inputs=lambda nodes: INPUTS,
          outputs=lambda apart: (*_node_topics(apart), "gather", "quarantine"),
          build=lambda p: IntakeStage(p.codec, p.library, p.validator,
                                      eager_hops=p.eager_hops, apart=p.apart)),
    Stage("features", "the entity nodes: exact windows, one order for every worker",
          inputs=_node_inputs,
          outputs=lambda apart: ("gather",),
          build=lambda p: FeatureStage(p.codec, p.library, eager_hops=p.eager_hops)),
    Stage("decide", "gather each event's fragments, run the controls, decide",
          inputs=lambda nodes: ("gather",),
          outputs=lambda apart: _DECIDE_OUT,
          build=lambda p: DecisionStage(p.codec, p.network(), p.node_timeout_ms,
                                        library=p.library, batch=p.batch,
                                        sources=p.sources)),
)}

# The same work in one processor, one log: exact when every entity's events share
# an ordered log (a backtest's OneLogState, one partition), the unit tests' path.
PATH = Stage("decision-path", "intake, features and decide in one processor",
             inputs=lambda nodes: INPUTS,
             outputs=lambda apart: _DECIDE_OUT,
             build=lambda p: DecisionPath(p.codec, p.network(), p.validator,
                                          features=p.library, batch=p.batch,
                                          sources=p.sources))

# What happens after a decision: its actions carried out (tripwire.streams.apply).
# They run in a loop of their own, every output inside its transaction.
OUTCOMES: dict[str, Stage] = {s.name: s for s in (
    Stage("actions", "each action of each decision as a request, all in one order",
          inputs=lambda nodes: ("decisions",),
          outputs=lambda apart: ("action_requests",),
          build=lambda p: ActionStage(p.codec)),
    Stage("apply", "carry each request out once: what is in effect, rate limits, resumes",
          inputs=lambda nodes: ("action_requests",),
          outputs=lambda apart: ("actions", "customer_alerts", "cases", "ops_alerts",
                                 "alert_control"),
          build=lambda p: ApplyStage(p.codec, p.policy)),
)}
