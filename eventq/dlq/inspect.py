"""Looking at dead-letter topics: summaries, one letter whole, and archiving old ones.

Kafka cannot delete chosen records from a topic, only a partition's oldest records up
to an offset. :func:`archive` therefore writes the oldest letters (optionally only
those dead-lettered before a time) to a JSON-lines file, flushes it to disk, and only
then, if asked, deletes exactly that prefix of each partition (docs/adr/0008). A letter
eventq cannot read ends its partition's prefix: it is never deleted without a faithful copy.
"""

from __future__ import annotations

import base64
import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import RecordsToDelete

from eventq.config import KafkaSettings
from eventq.dlq.letters import Letter, admin_client, scan
from eventq.errors import ConsumerError
from eventq.kafkarecords import printable, raw_name

DEAD_LETTER_SUFFIXES = (".dlt", "-dlt", ".DLT")  # eventq's default, Spring's since 3.3 and before
PROBLEMS_KEPT = 20  # a summary lists this many letters with problems (and counts them all)


@dataclass(slots=True)
class TopicSummary:
    """One dead-letter topic at a glance."""

    topic: str
    count: int = 0
    oldest: datetime | None = None
    newest: datetime | None = None
    by_failure: Counter[tuple[str, str]] = field(default_factory=Counter)  # (error type, handler) -> letters
    by_reason: Counter[str] = field(default_factory=Counter)
    sources: Counter[str] = field(default_factory=Counter)
    problem_count: int = 0  # letters eventq cannot read (or show faithfully)
    problems: list[tuple[str, str]] = field(default_factory=list)  # the first PROBLEMS_KEPT: (position, what)

    def add(self, letter: Letter) -> None:
        self.count += 1
        if letter.time_known:  # a clamped time would make oldest or newest a lie
            when = letter.time
            self.oldest = when if self.oldest is None or when < self.oldest else self.oldest
            self.newest = when if self.newest is None or when > self.newest else self.newest
        found = letter.problems()
        if found:
            self.problem_count += 1
            if len(self.problems) < PROBLEMS_KEPT:
                self.problems.append((letter.position, "; ".join(found)))
        self.by_failure[(letter.error_type or "?", letter.handler or "-")] += 1
        self.by_reason[letter.reason or letter.dialect] += 1
        self.sources[letter.source_topic or "?"] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "count": self.count,
            "oldest": self.oldest.isoformat(timespec="seconds") if self.oldest else None,
            "newest": self.newest.isoformat(timespec="seconds") if self.newest else None,
            "by_failure": [
                {"error_type": e, "handler": h, "count": n} for (e, h), n in self.by_failure.most_common()
            ],
            "by_reason": dict(self.by_reason.most_common()),
            "sources": dict(self.sources.most_common()),
            "problem_count": self.problem_count,
            "problems": [{"position": p, "problem": what} for p, what in self.problems],
        }


async def dead_letter_topics(kafka: KafkaSettings) -> list[str]:
    """Topics named like dead-letter topics (``.dlt``, ``-dlt``, ``.DLT``)."""
    async with admin_client(kafka) as admin:
        names: Iterable[str] = await admin.list_topics()
    return sorted(n for n in names if n.endswith(DEAD_LETTER_SUFFIXES))


async def summarize(kafka: KafkaSettings, topics: Iterable[str]) -> list[TopicSummary]:
    """A :class:`TopicSummary` of each topic (reads every letter once)."""
    summaries = []
    for topic in topics:
        summary = TopicSummary(topic)
        async for letter in scan(kafka, topic):
            summary.add(letter)
        summaries.append(summary)
    return summaries


async def find(
    kafka: KafkaSettings, topic: str, *, offset: int | None = None, partition: int | None = None,
    event_id: str | None = None,
) -> list[Letter]:
    """The letters at ``offset`` (in ``partition``, or any) or carrying ``event_id``."""
    if (offset is None) == (event_id is None):
        raise ValueError("give exactly one of offset and event_id")
    found = []
    async for letter in scan(kafka, topic, start=offset):
        if offset is not None:
            if letter.offset == offset and (partition is None or letter.partition == partition):
                found.append(letter)
        elif letter.event_id == event_id:
            found.append(letter)
    return found


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode()


def _archived_header(name: str, value: bytes) -> list[str | None]:
    shown = printable(name)
    if shown == name:
        return [name, _b64(value)]
    return [shown, _b64(value), _b64(raw_name(name))]  # the name is not UTF-8: its bytes, third


def archive_line(letter: Letter) -> str:
    """One JSON line: the readable view plus the exact bytes (base64) to restore the record.

    A header is ``[name, value]``; one whose name is not UTF-8 is ``[name with U+FFFD,
    value, name bytes]``.
    """
    view = letter.as_dict()
    view["record"] = {
        "key": _b64(letter.key),
        "value": _b64(letter.value),
        "headers": [_archived_header(name, value) for name, value in letter.headers],
        "timestamp_ms": letter.timestamp_ms,
    }
    return json.dumps(view, separators=(",", ":"), default=str)


async def archive(
    kafka: KafkaSettings, topic: str, path: Path, *, before: datetime | None = None, delete: bool = False
) -> dict[int, int]:
    """Append each partition's oldest letters (all, or those dead-lettered before ``before``) to ``path``.

    Returns partition → letters archived. With ``delete``, the archived prefix of each
    partition is then deleted from the topic (only after the file is on disk).
    """
    archived: dict[int, int] = {}
    cut: dict[int, int] = {}  # partition -> first offset kept
    closed: set[int] = set()  # partitions whose prefix ended (a newer letter was seen)
    with path.open("a", encoding="utf-8") as out:
        async for letter in scan(kafka, topic):
            if letter.partition in closed:
                continue
            if letter.unreadable is not None or (before is not None and letter.time >= before):
                closed.add(letter.partition)
                continue
            out.write(archive_line(letter) + "\n")
            archived[letter.partition] = archived.get(letter.partition, 0) + 1
            cut[letter.partition] = letter.offset + 1
        out.flush()
        os.fsync(out.fileno())
    if delete and cut:
        async with admin_client(kafka) as admin:
            try:
                await admin.delete_records({TopicPartition(topic, p): RecordsToDelete(o) for p, o in cut.items()})
            except Exception as exc:
                raise ConsumerError(
                    f"archived to {path}, but deleting from {topic!r} failed ({type(exc).__name__}: {exc}); "
                    "the letters are still in the topic"
                ) from exc
    return archived
