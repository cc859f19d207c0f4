"""Where control releases come from: the compacted controls topic (the control
plane every worker follows) or a directory of ``.star`` files watched for changes.

A source's :meth:`poll` returns the releases seen since the last call, never
blocking; the worker applies them between batches
(:meth:`tripwire.controls.decider.Decider.reload`).
"""

from __future__ import annotations

import getpass
import hashlib
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from tripwire.connectors.kafka import closed_on_failure, consumer
from tripwire.controls.plane import RELEASE_SCHEMA, ReleaseSource, release
from tripwire.schemas.codec import AvroCodec

__all__ = ["DirectorySource", "ReleaseSource", "TopicSource"]


class TopicSource:
    """Every release on the controls topic, from the beginning (compacted: the
    newest per control), then each new one as it is committed."""

    def __init__(self, bootstrap: str, topic_name: str, codec: AvroCodec) -> None:
        self.codec = codec
        self.topic = topic_name
        self.consumer = consumer(bootstrap, f"tripwire-controls-{uuid.uuid4().hex[:12]}",
                                 **{"enable.auto.commit": False})
        with closed_on_failure(self.consumer):
            md = self.consumer.list_topics(topic_name, timeout=30)
            parts = md.topics[topic_name].partitions if topic_name in md.topics else {}
            if not parts:
                raise RuntimeError(f"controls topic {topic_name} does not exist; run "
                                   "`tripwire topics create` first")
            self.consumer.assign([TopicPartition(topic_name, p, OFFSET_BEGINNING)
                                  for p in parts])

    def poll(self) -> list[dict[str, Any]]:
        """The releases read since the last call. A record that is not a readable
        release comes as one of kind ``UNREADABLE``: the worker refuses and audits
        it, and goes on (the topic is read again at every start)."""
        out = []
        for m in self.consumer.consume(500, 0):
            if m.error() is not None or m.value() is None:
                continue
            where = f"{m.topic()}[{m.partition()}]@{m.offset()}"
            try:
                schema, rec = self.codec.decode(m.value())
                problem = None if schema.name == RELEASE_SCHEMA else \
                    f"a {schema.name} record, not a {RELEASE_SCHEMA}"
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem is not None:
                rec = release(where, None, "unknown", problem, m.timestamp()[1], "UNREADABLE")
            out.append(rec)
        return out

    def close(self) -> None:
        self.consumer.close()


class DirectorySource:
    """Changes to the ``*.star`` files of a directory since the last poll (the
    files present when it is created are the baseline): a changed or new file is
    a release, a deleted one a retirement."""

    def __init__(self, directory: Path, author: str | None = None,
                 every_s: float = 1.0) -> None:
        self.directory = Path(directory)
        self.author = author or f"{getpass.getuser()} (file)"
        self.every_s = every_s  # look at the folder at most this often
        self._looked = time.monotonic()
        self.seen = self._scan()

    def _scan(self) -> dict[str, str]:
        return {p.stem: hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(self.directory.glob("*.star"))}

    def poll(self) -> list[dict[str, Any]]:
        if time.monotonic() - self._looked < self.every_s:
            return []
        self._looked = time.monotonic()
        now = self._scan()
        at = int(time.time() * 1000)
        out = []
        for cid, digest in now.items():
            if self.seen.get(cid) != digest:
                source = (self.directory / f"{cid}.star").read_text()
                out.append(release(cid, source, self.author,
                                   f"{cid}.star changed in {self.directory}", at))
        for cid in self.seen.keys() - now.keys():
            out.append(release(cid, None, self.author,
                               f"{cid}.star removed from {self.directory}", at, "RETIRE"))
        self.seen = now
        return out
