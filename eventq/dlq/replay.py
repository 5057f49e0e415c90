"""Replaying dead letters to their source topic: filtered, rate-limited, resumable, loop-guarded.

Guarantees:

- **Nothing twice, nothing lost, across interruptions.** A replay *run* (a name; one is
  made up if you give none) republishes with a transactional producer
  (``transactional.id = eventq-replay.<run>``) and commits its progress through the
  dead-letter topic (consumer group ``eventq-replay.<run>``) in the same transaction,
  every 100 letters or second. Killed at any moment, the open transaction is aborted
  when the run is resumed (same name): its records are never visible to
  ``read_committed`` consumers (eventq's daemon reads that way) and it continues from the
  last committed position. A resumed run must use the criteria it started with and
  keeps the time window it started with (so ``--since 2h`` can be given again).
- **The event stays the same event.** Key, value and headers are republished unchanged
  (the letter's dead-letter headers removed: eventq's, or Spring's or Karafka's when it
  was written by them), so the event keeps its id
  and correlation id, and consumers that already handled it skip it; a dead letter of
  the group whose row says ``dead_lettered`` runs its handler again. Added headers:
  ``eventq-replay-count`` (how often it was replayed), ``eventq-replay-from`` (each
  dead-letter position it was replayed from), ``eventq-replay-run`` and
  ``eventq-replay-at``.
- **Loop guard.** A letter already replayed ``max_replays`` times is refused (reported,
  not republished).
- **Only the newest dead letter of an event counts.** When a replayed event failed
  again, its older dead letters are *superseded* (skipped): replaying an old copy would
  restart the replay count and sidestep the loop guard.
- Every letter scanned is counted exactly once as replayed, filtered, superseded,
  refused or failed (no source topic, target topic missing, or a letter eventq cannot
  read: reported with its position and reason, never republished).
- **Header names that are not UTF-8** cannot be republished as they are (aiokafka's
  producer encodes names as strict UTF-8): such a letter is replayed with U+FFFD in place
  of the undecodable bytes, counted as replayed, listed in ``ReplayReport.renamed`` and
  logged as ``dlq.header_name_replaced``.

With tracing on, a run is a ``replay {topic}`` span, and each replayed letter a
``send {source}`` span that is a child of the dead letter's own ``send`` span (its
``eventq-dlt-traceparent`` header; else the event's original ``traceparent``) and
linked to the run: the replayed record's ``traceparent`` names that span, so the
event's processing after the replay continues the event's original trace
(docs/adr/0010-tracing-model.md). With tracing off, the original ``traceparent`` is
republished unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka import errors as ke
from aiokafka.structs import OffsetAndMetadata
from opentelemetry.trace import Span

from eventq.config import KafkaSettings
from eventq.dlq.letters import UNREADABLE, Letter, admin_client, clip, scan
from eventq.errors import ConfigError, ConsumerError, EventqError
from eventq.kafka import explain, translate
from eventq.kafkarecords import printable
from eventq.telemetry import Telemetry
from eventq.telemetry import tracing as tr
from eventq.wire import DLT_TRACEPARENT, H_TRACEPARENT, H_TRACESTATE, REPLAY_AT, REPLAY_COUNT, REPLAY_FROM, REPLAY_RUN

log = structlog.get_logger("eventq.dlq")

DEFAULT_MAX_REPLAYS = 3
MIN_RATE = 0.01  # letters per second; below it a replay would, in practice, never end
MAX_RATE = 1_000_000.0
_CHUNK_LETTERS = 100
_CHUNK_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Filters:
    """Which dead letters to replay; every given criterion must match (None = any)."""

    since: datetime | None = None  # dead-lettered at or after
    until: datetime | None = None  # dead-lettered before
    error_type: str | None = None  # exact, or the class name alone: RuntimeError; the error's or its cause's
    event_type: str | None = None
    key: str | None = None
    correlation_id: str | None = None
    handler: str | None = None  # exact, or the function name alone
    offsets: tuple[int, int] | None = None  # dead-letter offsets, inclusive, in every partition

    def matches(self, letter: Letter) -> bool:
        if self.since is not None and letter.time < self.since:
            return False
        if self.until is not None and letter.time >= self.until:
            return False
        if self.error_type is not None and not (
            _names(letter.error_type, self.error_type) or _names(letter.cause_type, self.error_type)
        ):  # Spring's error type is often only the wrapper (ListenerExecutionFailedException)
            return False
        if self.event_type is not None and letter.event_type != self.event_type:
            return False
        if self.key is not None and letter.key_text != self.key:
            return False
        if self.correlation_id is not None and letter.correlation_id != self.correlation_id:
            return False
        if self.handler is not None and not _names(letter.handler, self.handler):
            return False
        return self.offsets is None or self.offsets[0] <= letter.offset <= self.offsets[1]

    def fingerprint(self) -> str:
        """A short stable digest of every criterion but the time window: a resumed run must
        have the same criteria, and keeps the window it started with (``--since 2h`` means
        two hours before the run *started*, however late it is resumed)."""
        text = repr((self.error_type, self.event_type, self.key, self.correlation_id, self.handler, self.offsets))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def checkpoint_metadata(self) -> str:
        """What a run stores with its progress: the fingerprint and the absolute time window."""
        return json.dumps({
            "filters": self.fingerprint(),
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
        }, separators=(",", ":"))


def _names(actual: str | None, wanted: str) -> bool:
    if actual is None:
        return False
    return actual == wanted or actual.rsplit(".", 1)[-1] == wanted


@dataclass(slots=True)
class ReplayReport:
    """What a replay (or its dry run) did with each letter it scanned."""

    run: str
    topic: str
    dry_run: bool = False
    replayed: list[str] = field(default_factory=list)  # dead-letter positions
    filtered: int = 0
    superseded: int = 0  # an older dead letter of an event that has a newer one
    refused: list[tuple[str, str]] = field(default_factory=list)  # (position, why)
    failed: list[tuple[str, str]] = field(default_factory=list)
    renamed: list[tuple[str, int]] = field(default_factory=list)  # replayed with N header names not UTF-8
    targets: dict[str, int] = field(default_factory=dict)  # target topic -> letters (to be) replayed
    stopped_at_limit: bool = False
    resumed: bool = False  # continued an earlier run (with its time window)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        verb = "would replay" if self.dry_run else "replayed"
        where = ", ".join(f"{n} to {t}" for t, n in sorted(self.targets.items())) or "none"
        return (
            f"{verb} {len(self.replayed)} ({where}); skipped {self.filtered + self.superseded} "
            f"({self.filtered} filtered, {self.superseded} superseded by a newer dead letter of the same event); "
            f"refused {len(self.refused)} (loop guard); failed {len(self.failed)}"
        )


def new_run_name() -> str:
    """A name for a replay run: time-sortable and unique enough."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


class _Rate:
    """At most ``per_second`` letters per second, measured from the first one."""

    def __init__(self, per_second: float | None) -> None:
        self.per_second = per_second
        self.started: float | None = None
        self.count = 0

    async def wait(self) -> None:
        if not self.per_second:
            return
        now = time.monotonic()
        if self.started is None:
            self.started = now
        due = self.started + self.count / self.per_second
        if due > now:
            await asyncio.sleep(due - now)
        self.count += 1


async def replay(
    kafka: KafkaSettings,
    topic: str,
    filters: Filters | None = None,
    *,
    run: str | None = None,
    to: str | None = None,
    max_replays: int = DEFAULT_MAX_REPLAYS,
    rate: float | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    progress: Callable[[Letter], None] | None = None,
    telemetry: Telemetry | None = None,
) -> ReplayReport:
    """Replay the dead letters of ``topic`` that match ``filters``; see the module docstring.

    ``to`` sends every letter to one topic instead of its source; ``rate`` caps letters
    per second; ``limit`` stops after that many are replayed (a resumed run goes on from
    there); ``dry_run`` classifies without publishing or recording progress.
    """
    filters = filters or Filters()
    if max_replays < 1:
        raise ConfigError("max_replays must be at least 1")
    if rate is not None and not (math.isfinite(rate) and MIN_RATE <= rate <= MAX_RATE):
        raise ConfigError(f"rate must be from {MIN_RATE:g} to {MAX_RATE:g} letters per second, not {rate!r}")
    if limit is not None and limit < 1:
        raise ConfigError("limit must be at least 1")
    name = run or new_run_name()
    group = f"eventq-replay.{name}"
    report = ReplayReport(run=name, topic=topic, dry_run=dry_run)
    # The producer starts first: starting it fences any earlier process of this run
    # (and aborts its open transaction), so the progress read next is final.
    producer = None if dry_run else await _producer(kafka, group)
    try:
        start, existing = await _checkpoint(kafka, group, topic)
        if dry_run:
            start = {}  # a preview looks at the whole topic, whatever earlier runs did
        elif existing is not None:
            filters = _resumed(name, filters, existing)
            report.resumed = True
        known_topics = await _topics(kafka)
        newest = await _newest_letters(kafka, topic)
    except BaseException:
        if producer is not None:
            await producer.stop()
        raise
    tracing = tr.Tracing((telemetry or Telemetry()).tracer_provider)
    run_span = tracing.replay(topic, name) if producer is not None and tracing.enabled else None
    metadata = filters.checkpoint_metadata()
    limiter = _Rate(rate)
    sent: list[tuple[asyncio.Future[Any], str]] = []  # this transaction's sends, by dead-letter position
    pending: dict[int, int] = {}  # partition -> next offset, not yet committed
    chunk_started = time.monotonic()
    in_chunk = 0
    open_transaction = False
    try:
        if producer is not None:
            await producer.begin_transaction()
            open_transaction = True
        async for letter in scan(kafka, topic, start=start):
            if limit is not None and len(report.replayed) >= limit:
                report.stopped_at_limit = True
                break
            verdict, target = _decide(letter, filters, to, max_replays, known_topics, newest)
            if verdict == "filtered":
                report.filtered += 1
            elif verdict == "superseded":
                report.superseded += 1
            elif verdict == "refused":
                report.refused.append((letter.position, target))
                log.warning("dlq.replay_refused", position=letter.position, event_id=clip(letter.event_id),
                            reason=clip(target))
            elif verdict == "failed":
                report.failed.append((letter.position, target))
                log.warning("dlq.replay_failed", position=letter.position, event_id=clip(letter.event_id),
                            reason=clip(target))
            else:
                report.replayed.append(letter.position)
                report.targets[target] = report.targets.get(target, 0) + 1
                if letter.undecodable_names:
                    report.renamed.append((letter.position, letter.undecodable_names))
                    log.warning("dlq.header_name_replaced", position=letter.position,
                                count=letter.undecodable_names, dry_run=dry_run)
                if producer is not None:
                    await limiter.wait()
                    headers = _replay_headers(letter, name)
                    span = _replay_span(tracing, run_span, letter, target, headers)
                    try:
                        future = await producer.send(target, letter.value, key=letter.key, headers=headers)
                    except BaseException as exc:
                        tr.end_failed(span, exc)
                        raise
                    if span is not None:
                        future.add_done_callback(lambda done, span=span: _end_span(span, done))
                    sent.append((future, letter.position))
            if progress is not None:
                progress(letter)
            if producer is not None:
                pending[letter.partition] = letter.offset + 1
                in_chunk += 1
                if in_chunk >= _CHUNK_LETTERS or time.monotonic() - chunk_started >= _CHUNK_SECONDS:
                    await _acknowledged(sent, name)
                    await _commit_chunk(producer, group, topic, pending, metadata)
                    open_transaction = False
                    await producer.begin_transaction()
                    open_transaction = True
                    chunk_started, in_chunk = time.monotonic(), 0
        if producer is not None:
            await _acknowledged(sent, name)
            await _commit_chunk(producer, group, topic, pending, metadata)
            open_transaction = False
    except BaseException as exc:
        if run_span is not None:
            tr.fail(run_span, exc)
        if producer is not None and open_transaction:
            # The open transaction's records and progress vanish together.
            with contextlib.suppress(Exception):
                await producer.abort_transaction()
        if isinstance(exc, EventqError) or not isinstance(exc, Exception):
            raise
        raise ConsumerError(
            f"replay run {name!r} stopped: {translate(exc, topic=topic, settings=kafka)}; resume it with the "
            f"same command and --run {name}", retriable=True,
        ) from exc
    finally:
        if producer is not None:
            await producer.stop()
        if run_span is not None:
            run_span.set_attribute(tr.REPLAYED, len(report.replayed))
            run_span.end()
    log.info("dlq.replay_finished", run=name, topic=topic, dry_run=dry_run, replayed=len(report.replayed),
             filtered=report.filtered, refused=len(report.refused), failed=len(report.failed))
    return report


async def _acknowledged(sent: list[tuple[asyncio.Future[Any], str]], run: str) -> None:
    """Wait for this transaction's sends; a refused one must not be committed as replayed.

    (A batch the broker refuses outright fails only its own future: the transaction
    itself would still commit, with the progress past the lost letter.)
    """
    results = await asyncio.gather(*(future for future, _ in sent), return_exceptions=True)
    refused = [(position, result) for (_, position), result in zip(sent, results, strict=True)
               if isinstance(result, BaseException)]
    sent.clear()
    if refused:
        positions = ", ".join(position for position, _ in refused[:5]) + (", …" if len(refused) > 5 else "")
        error = refused[-1][1]
        raise ConsumerError(
            f"the broker refused the replay of {positions} ({type(error).__name__}: {error}); nothing of this "
            f"chunk was committed. Resume with --run {run} once fixed, or leave that letter out "
            "(--offset-range) in a new run"
        )


def _newness(letter: Letter) -> tuple[int, int, int, int]:
    return (letter.replay_count, letter.timestamp_ms, letter.partition, letter.offset)


Newest = dict[tuple[str, str | None], tuple[int, int, int, int]]


async def _newest_letters(kafka: KafkaSettings, topic: str) -> Newest:
    """For each (event id, consumer group) in the topic, which of its dead letters is the newest.

    Per group: groups consuming one source topic share its dead-letter topic, and one
    group's failure says nothing about another's.
    """
    newest: Newest = {}
    async for letter in scan(kafka, topic):
        if letter.event_id is not None:
            rank, key = _newness(letter), (letter.event_id, letter.group)
            if rank > newest.get(key, (-1, -1, -1, -1)):
                newest[key] = rank
    return newest


def _resumed(run: str, filters: Filters, stored: str) -> Filters:
    """The filters to resume a run with: the given criteria (which must be the same), the stored window."""
    try:
        saved = json.loads(stored)
        fingerprint, since, until = saved["filters"], saved["since"], saved["until"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"replay run {run!r} has progress eventq cannot read; start a new run") from None
    if fingerprint != filters.fingerprint():
        raise ConfigError(
            f"replay run {run!r} was started with other filters; resume it with the same filters, "
            "or start a new run (leave out --run)"
        )
    return dataclasses.replace(
        filters,
        since=datetime.fromisoformat(since) if since else None,
        until=datetime.fromisoformat(until) if until else None,
    )


def _decide(
    letter: Letter,
    filters: Filters,
    to: str | None,
    max_replays: int,
    known_topics: set[str],
    newest: Newest | None = None,
) -> tuple[str, str]:
    """(verdict, target or reason) for one letter."""
    if letter.dialect == UNREADABLE:
        # No criterion but the offsets can be judged: report it rather than guess it away.
        if filters.offsets is not None and not filters.offsets[0] <= letter.offset <= filters.offsets[1]:
            return "filtered", ""
        return "failed", f"eventq cannot read this letter ({letter.unreadable}); inspect it with dlq show"
    if not filters.matches(letter):
        return "filtered", ""
    rank = _newness(letter)
    if newest and letter.event_id is not None and newest.get((letter.event_id, letter.group), rank) > rank:
        # The event failed again after an earlier replay: only its newest dead letter
        # counts, or the loop guard could be sidestepped by replaying an old copy.
        return "superseded", ""
    if letter.replay_count >= max_replays:
        return "refused", f"already replayed {letter.replay_count} times (max_replays={max_replays})"
    target = to or letter.source_topic
    if not target:
        return "failed", "no source topic in its headers (no eventq, Spring or Karafka dead-letter headers); use --to"
    if target not in known_topics:
        return "failed", f"target topic {clip(target)!r} does not exist"
    return "replay", target


def _replay_span(
    tracing: tr.Tracing, run_span: Span | None, letter: Letter, target: str, headers: list[tuple[str, bytes]]
) -> Span | None:
    """Start a replayed letter's ``send`` span and make ``headers`` carry it (None when tracing is off)."""
    if run_span is None:
        return None
    found = dict(letter.headers)
    raw = found.get(DLT_TRACEPARENT) or found.get(H_TRACEPARENT)
    tracestate = found.get(H_TRACESTATE)
    parent = tr.context_from_traceparent(
        raw.decode("ascii", "replace") if raw else None, tracestate.decode("ascii", "replace") if tracestate else None
    )
    span = tracing.replay_send(target, parent, run_span.get_span_context(), {
        tr.MESSAGE_ID: clip(letter.event_id) or "", tr.REPLAY_POSITION: letter.position,
    })
    headers[:] = [(n, v) for n, v in headers if n not in (H_TRACEPARENT, H_TRACESTATE)] + tr.trace_headers(span)
    return span


def _end_span(span: Span, future: asyncio.Future[Any]) -> None:
    if future.cancelled():
        tr.fail(span, "cancelled")
    elif future.exception() is not None:
        tr.fail(span, future.exception())  # type: ignore[arg-type]
    span.end()


def _replay_headers(letter: Letter, run: str) -> list[tuple[str, bytes]]:
    # display_name: a name that is not UTF-8 cannot be sent as it is (see the module docstring).
    headers = [(printable(n), v) for n, v in letter.original_headers()]
    headers.append((REPLAY_COUNT, str(letter.replay_count + 1).encode()))
    for earlier in letter.replays:
        headers.append((REPLAY_FROM, earlier.encode()))
    headers.append((REPLAY_FROM, letter.position.encode()))
    headers.append((REPLAY_RUN, run.encode()))
    headers.append((REPLAY_AT, datetime.now(UTC).isoformat(timespec="milliseconds").encode()))
    return headers


async def _commit_chunk(
    producer: AIOKafkaProducer, group: str, topic: str, pending: dict[int, int], metadata: str
) -> None:
    if pending:
        offsets = {TopicPartition(topic, p): OffsetAndMetadata(o, metadata) for p, o in pending.items()}
        await producer.send_offsets_to_transaction(offsets, group)
        pending.clear()
    await producer.commit_transaction()


async def _producer(kafka: KafkaSettings, group: str) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        **kafka.client_kwargs(), transactional_id=group, enable_idempotence=True, acks="all",
        max_request_size=16 * 1024 * 1024,
    )
    try:
        await producer.start()  # fences an earlier process of the same run and aborts its open transaction
    except Exception as exc:
        await producer.stop()
        reason = explain(exc, kafka, transactional_id=group)
        if reason is not None:
            raise ConsumerError(f"replay run cannot start: {reason}") from exc
        raise translate(exc, topic="", settings=kafka) from exc
    return producer


async def _topics(kafka: KafkaSettings) -> set[str]:
    async with admin_client(kafka) as admin:
        return set(await admin.list_topics())


async def _checkpoint(kafka: KafkaSettings, group: str, topic: str) -> tuple[dict[int, int], str | None]:
    """Where an earlier process of this run got to (partition → next offset) and its checkpoint metadata."""
    async with admin_client(kafka) as admin:
        try:
            offsets: Any = await admin.list_consumer_group_offsets(group)
        except ke.GroupAuthorizationFailedError as exc:
            raise ConsumerError(f"replay run cannot start: {explain(exc, kafka, group=group)}") from exc
    start: dict[int, int] = {}
    fingerprint: str | None = None
    for tp, meta in offsets.items():
        if tp.topic == topic and meta.offset >= 0:
            start[tp.partition] = meta.offset
            fingerprint = meta.metadata or fingerprint
    return start, fingerprint
