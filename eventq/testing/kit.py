"""The test kit: run an App's handlers on fed records, without Kafka, and see what became of each.

:class:`TestKit` runs the daemon's own stages on records held in memory: decode
(:mod:`eventq.consumers.decode`), dedupe (:func:`~eventq.consumers.dedupe.mark_duplicates`),
handle (:class:`~eventq.consumers.handle.Handle`: the one attempt loop, back-off,
``Reject``, ``RetryLater``, batch handlers, retry topics), and the derivation of
rows, dead letters (:func:`~eventq.consumers.deadletter.letter_record`, the same
headers) and retry records from each record's outcome (:mod:`eventq.consumers.outcome`).
Only the two ends are stood in for: Kafka by :mod:`eventq.testing.broker`, and
PostgreSQL by :mod:`eventq.testing.rows` unless a database URL is given.

Guarantees:

- A record fed to the kit gets the outcome the daemon would give it with the same
  App and settings, and the same dead letter (headers, key, value), the same row and
  the same follow-up events (``tests/integration/test_kit_equivalence.py`` runs one
  test body both ways, on the kit and on the real broker and database).
- Back-off is not waited for unless ``waits=True``; the delays the daemon would have
  waited are reported (:attr:`Outcome.delays`).
- ``transactional=True`` handlers run in a real PostgreSQL transaction when the kit has
  ``database_url``; without one, running such a handler (or touching ``ctx.db``)
  raises :class:`DatabaseRequired` from :meth:`TestKit.run_until_idle` and the record
  stays unconsumed.

What differs from the daemon, on purpose: keyless records go to partition 0 (a real
producer spreads them); a round takes up to ``max_batch_size`` records of every
partition (the daemon's poll takes that many across partitions); dead letters are
never shrunk to fit a topic (there is no size limit in memory); nothing is traced
(the instruments seam is the kit's own); follow-ups of a transactional handler appear
in their topic as soon as its transaction commits (the outbox relay's job; a topic the
kit lacks is created, where a relay would wait for it), and their outbox rows stay in
the database.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import asyncpg

from eventq.consumers import store
from eventq.consumers.app import App
from eventq.consumers.deadletter import letter_record, on_the_wire
from eventq.consumers.decode import decode_items
from eventq.consumers.dedupe import identities, mark_duplicates
from eventq.consumers.handle import Handle
from eventq.consumers.health import Status
from eventq.consumers.instruments import Instruments
from eventq.consumers.outcome import DEAD_LETTERED, HANDLED, Interrupt, Item, Slice
from eventq.consumers.settings import ConsumerSettings
from eventq.consumers.topics import derived_names
from eventq.dlq.letters import Letter, parse
from eventq.errors import ConfigError, EventqError
from eventq.migrations import migrate
from eventq.outbox.writer import Added, Outbox
from eventq.schemas.envelope import Event, decode, encode_parts, record_headers
from eventq.testing.broker import KitProducer, Record, Topics
from eventq.testing.rows import DatabaseRows, MemoryRows

_CURRENT: contextvars.ContextVar[Item | None] = contextvars.ContextVar("eventq_kit_item", default=None)


class DatabaseRequired(ConfigError):
    """A handler needs PostgreSQL (``transactional=True``, or ``ctx.db``) and the kit has none."""


class NotIdle(EventqError):
    """The kit was still not idle after ``max_rounds`` rounds (a handler feeding its own topic?)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one fed (or published, or retried) record.

    ``status`` is the record's outcome: ``handled``, ``duplicate`` (finished before:
    the handler did not run), ``skipped`` (no handler and ``on_unknown_type=skip``),
    ``dead_lettered`` or ``retry_handed_off`` (sent on to ``retry_topic``).
    ``attempts`` counts handler runs, across retry topics; ``errors`` and ``delays``
    are this record's failed attempts and the back-off after each one that was retried.
    """

    status: str
    record: Record
    event: Event | None
    handler: str | None
    attempts: int
    errors: tuple[BaseException, ...]
    delays: tuple[float, ...]
    dead_letter: Letter | None
    retry_topic: str | None
    invalid: EventqError | None  # why the record is not a valid event, if it is not

    @property
    def event_id(self) -> str | None:
        return self.event.id if self.event is not None else None


@dataclass(frozen=True, slots=True)
class FollowUp:
    """An event a handler published (``ctx.publish``), as it reached its topic."""

    topic: str
    event: Event
    record: Record


class _NoDatabase:
    """``ctx.db`` of a kit without a database: any use raises :class:`DatabaseRequired`."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        raise DatabaseRequired(
            f"a handler used ctx.db.{name}, but this TestKit has no database; give it one: "
            "TestKit(app, database_url=...) (or pytest --eventq-database-url / EVENTQ_TEST_DATABASE_URL)"
        )


class _NoWaits(Interrupt):
    """Back-off and retry-topic due times pass at once (the delays are still reported)."""

    async def sleep(self, delay: float) -> bool:
        await asyncio.sleep(0)
        return False


class _Recorder(Instruments):
    """The kit's instruments: each record's failed attempts and delays; transactional follow-ups until commit."""

    per_event = True

    def __init__(self, kit: TestKit) -> None:
        self._kit = kit
        self.errors: dict[int, list[BaseException]] = {}
        self.delays: dict[int, list[float]] = {}
        self.retry_topics: dict[int, str] = {}
        self.outboxed: dict[int, list[tuple[str, Event]]] = {}  # id(item) -> follow-ups in its open transaction
        self.misuse: list[DatabaseRequired] = []

    def activate(self, item: Item) -> Any:
        self.outboxed[id(item)] = []  # a new attempt: a new transaction
        return _CURRENT.set(item)

    def deactivate(self, token: Any) -> None:
        if isinstance(token, contextvars.Token):
            _CURRENT.reset(token)

    def attempt_failed(
        self, item: Item, error: BaseException, attempt: int, delay_s: float | None, retry_topic: str | None = None,
    ) -> None:
        self.errors.setdefault(id(item), []).append(error)
        if delay_s is not None:
            self.delays.setdefault(id(item), []).append(delay_s)
        if retry_topic is not None:
            self.retry_topics[id(item)] = retry_topic
        self.outboxed.pop(id(item), None)  # rolled back
        if isinstance(error, DatabaseRequired):
            self.misuse.append(error)

    def event_finished(self, item: Item) -> None:
        added = self.outboxed.pop(id(item), None)
        if added and item.claimed and item.outcome == HANDLED:  # committed: the relay publishes them
            for topic, event in added:
                self._kit._relayed(topic, event)  # noqa: SLF001 - the kit's own instruments


class _KitOutbox(Outbox):
    """The real outbox (rows in the handler's transaction), also telling the kit what each attempt added."""

    def __init__(self, recorder: _Recorder, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recorder = recorder

    async def add(self, conn: Any, event: Event, *, topic: str | None = None) -> Added:
        added = await super().add(conn, event, topic=topic)
        item = _CURRENT.get()
        if item is not None:
            self._recorder.outboxed.setdefault(id(item), []).append((added.topic, event))
        return added


class _KitHandle(Handle):
    """The daemon's handle stage; without a database there is no outage to wait out."""

    database = True

    async def _outage(self, errors: list[Exception | None]) -> bool:
        return await super()._outage(errors) if self.database else False


class TestKit:
    """Feed records to an :class:`~eventq.consumers.App`, run until idle, read each record's outcome.

    ::

        async with TestKit(app) as kit:
            kit.feed(Event(type="order.created.v1", source="tests", data={...}))
            await kit.run_until_idle()
            assert kit.outcome(event).status == "handled"

    ``settings`` are the daemon's (default: :class:`ConsumerSettings` defaults, not the
    environment); its ``topics`` and ``group_id`` override the App's, as for the
    daemon. The App's topics, their dead-letter and retry topics and ``topics`` exist
    in the kit, each with ``partitions`` partitions; ``ctx.publish`` to any other topic
    raises :class:`~eventq.errors.TopicNotFound`, as on a broker that does not create
    topics. ``database_url``: a PostgreSQL database the kit migrates and then uses for
    rows, dedupe and ``transactional=True`` handlers (the daemon's own queries).
    """

    __test__ = False  # (not a pytest test class)

    def __init__(
        self,
        app: App,
        settings: ConsumerSettings | None = None,
        *,
        database_url: str | None = None,
        topics: Sequence[str] = (),
        partitions: int = 1,
        waits: bool = False,
        max_rounds: int = 1000,
    ) -> None:
        if isinstance(topics, str):
            raise ConfigError(f"topics must be a list of names, e.g. topics=[{topics!r}]")
        if partitions < 1:
            raise ConfigError(f"partitions must be at least 1, not {partitions!r}")
        self.app = app
        self.settings = s = settings or ConsumerSettings()
        self.group, self.consumed = s.subscription(app)
        self.database_url = database_url
        self.registry = s.registry_for(app)
        self.topics = Topics(partitions)
        derived, retry = derived_names(s, app, self.consumed)
        self.topics.create(*self.consumed, *derived, *topics)
        self._retry_topics = frozenset(retry)
        self._polled = (*self.consumed, *sorted(retry))
        self._dead_letter_topics = sorted(set(derived) - set(retry))
        self.producer = KitProducer(self.topics, s.producer_for(app.schemas), registry=self.registry)
        self._recorder = _Recorder(self)
        self._interrupt = Interrupt() if waits else _NoWaits()
        self._max_rounds = max_rounds
        self._rows: MemoryRows = MemoryRows()
        self._pool: Any = None
        self._handle: _KitHandle | None = None
        self.outcomes: list[Outcome] = []  # every processed record's, in the order they finished

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> TestKit:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Connect to the database (if any) and migrate it; idempotent."""
        if self._handle is not None:
            return
        s = self.settings
        pool: Any = _NoDatabase()
        if self.database_url is not None:
            try:
                self._pool = pool = await asyncpg.create_pool(
                    self.database_url, min_size=1, max_size=max(2, s.pool_size), timeout=s.database.connect_timeout_s,
                )
            except (OSError, asyncpg.PostgresError) as exc:
                raise DatabaseRequired(
                    f"TestKit cannot connect to its database ({type(exc).__name__}: {exc}); "
                    "check database_url (--eventq-database-url / EVENTQ_TEST_DATABASE_URL)"
                ) from exc
            async with pool.acquire() as conn:
                await migrate(conn)
            self._rows = DatabaseRows(pool)
        outbox = _KitOutbox(self._recorder, self.producer.settings, registry=self.registry)
        self._handle = _KitHandle(
            app=self.app, settings=s, group=self.group, producer=self.producer, pool=pool, status=Status(),
            instruments=self._recorder, outbox=outbox,
        )
        self._handle.database = self._pool is not None
        await self.producer.start()

    async def stop(self) -> None:
        """Close the database pool (if any)."""
        await self.producer.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        self._handle = None

    # -- input -------------------------------------------------------------------------

    def feed(self, *events: Event, topic: str | None = None) -> list[Record]:
        """Put events on ``topic`` (default: the first consumed topic) as any producer would write them.

        They are encoded but not validated against their schemas: a record on a topic can
        come from any producer, and the consumer validates. The records, with offsets.
        """
        name = topic or self.consumed[0]
        max_bytes = self.producer.settings.max_event_bytes
        out = []
        for event in events:
            parts = encode_parts(event, max_event_bytes=max_bytes)
            out.append(self.topics.append(name, parts[0], parts[1], record_headers(parts), parts[2]))
        return out

    def feed_record(
        self, value: bytes | None, *, key: bytes | None = None, headers: Sequence[tuple[str, bytes | None]] = (),
        topic: str | None = None, timestamp_ms: int | None = None,
    ) -> Record:
        """Put a raw record on ``topic`` (default: the first consumed topic): bad input, foreign producers."""
        return self.topics.append(topic or self.consumed[0], key, value, headers, timestamp_ms)

    # -- running -------------------------------------------------------------------------

    async def run_until_idle(self) -> list[Outcome]:
        """Process every unconsumed record of the consumed (and retry) topics, and what that publishes to them.

        Returns the outcomes of this call's records. Raises :class:`DatabaseRequired` (those
        records stay unconsumed) or :class:`NotIdle` after ``max_rounds`` rounds.
        """
        handle = self._handle
        if handle is None:
            raise RuntimeError("TestKit is not started; use 'async with TestKit(app) as kit:'")
        first = len(self.outcomes)
        s = self.settings
        max_bytes = self.producer.settings.max_event_bytes
        for _ in range(self._max_rounds):
            batches = [
                batch for topic in self._polled
                for batch in self.topics.unconsumed(self.group, topic, s.max_batch_size)
            ]
            if not batches:
                return self.outcomes[first:]
            slices = [
                Slice(b[0].topic, b[0].partition,
                      decode_items(b, self.app, self.registry, max_bytes, self._retry_topics))
                for b in batches
            ]
            seen = await self._rows.finished(self.group, identities(i for sl in slices for i in sl.items))
            for sl in slices:
                mark_duplicates(sl.items, seen)
                self._require_database(sl)
            await asyncio.gather(*(self._process(handle, sl) for sl in slices))
            if self._recorder.misuse:
                raise self._recorder.misuse[0]
        raise NotIdle(
            f"still not idle after {self._max_rounds} rounds: does a handler publish to a topic its app consumes, "
            "for every event? (raise max_rounds if that is meant)"
        )

    def _require_database(self, sl: Slice) -> None:
        if self._pool is not None:
            return
        for item in sl.items:
            handler = item.handler
            if item.outcome is None and item.invalid is None and handler is not None and handler.transactional:
                raise DatabaseRequired(
                    f"handler {handler.name} is transactional=True: it runs in a PostgreSQL transaction, "
                    "so this TestKit needs a database: TestKit(app, database_url=...) "
                    "(or pytest --eventq-database-url / EVENTQ_TEST_DATABASE_URL)"
                )

    async def _process(self, handle: Handle, sl: Slice) -> None:
        """Handle one partition's slice, then derive rows, dead letters and retry records, as the daemon does."""
        await handle.run(sl.items, self._interrupt)
        rows = sl.rows
        await self._rows.record(self.group, [row for row in rows if row.outcome != DEAD_LETTERED])
        letters: dict[int, Letter] = {}
        for item in sl.lettered:
            topic, key, value, headers = on_the_wire(letter_record(item.letter(self.group), self.settings,
                                                                   self._retry_topics))
            letters[id(item)] = parse(self.topics.append(topic, key, value, headers))
        for topic, key, value, headers in sl.handoffs:
            self.topics.append(topic, key, value, headers)
        await self._rows.record(self.group, [row for row in rows if row.outcome == DEAD_LETTERED])
        for item in sl.items:
            if item.claimed and item.event is not None:
                topic, partition, offset, _ = item.position
                self._rows.claimed(
                    self.group, store.Processed(item.event.id, topic, partition, offset, HANDLED, item.event.source)
                )
            self.outcomes.append(self._outcome(item, letters.get(id(item))))
        self.topics.commit(self.group, sl.topic, sl.partition, sl.next_offset)

    def _outcome(self, item: Item, letter: Letter | None) -> Outcome:
        rec = self._recorder
        key = id(item)
        return Outcome(
            status=item.outcome or "", record=item.record, event=item.event,
            handler=item.handler.name if item.handler is not None else None, attempts=item.attempts,
            errors=tuple(rec.errors.pop(key, ())), delays=tuple(rec.delays.pop(key, ())), dead_letter=letter,
            retry_topic=rec.retry_topics.pop(key, None), invalid=item.invalid,
        )

    def _relayed(self, topic: str, event: Event) -> None:
        """A committed transactional follow-up reaches its topic (what the outbox relay does)."""
        parts = encode_parts(event, max_event_bytes=self.producer.settings.max_event_bytes)
        self.producer.sent.append(self.topics.append(topic, parts[0], parts[1], record_headers(parts), parts[2]))

    # -- what happened -------------------------------------------------------------------

    def history(self, event: Event | str) -> list[Outcome]:
        """Every outcome of records carrying ``event`` (or that event id), in order: redeliveries, retry hops."""
        event_id = event if isinstance(event, str) else event.id
        return [o for o in self.outcomes if o.event_id == event_id]

    def outcome(self, event: Event | str) -> Outcome:
        """The outcome of the last record carrying ``event`` (or that event id)."""
        found = self.history(event)
        if not found:
            event_id = event if isinstance(event, str) else event.id
            raise LookupError(f"no record of event {event_id} was processed; feed it, then await kit.run_until_idle()")
        return found[-1]

    @property
    def rows(self) -> list[store.Processed]:
        """The ``processed_events`` rows written, in order (in the database too, with ``database_url``)."""
        return list(self._rows.written)

    @property
    def dead_letters(self) -> list[Letter]:
        """The records of the dead-letter topics, read as ``eventq dlq`` reads them."""
        return [parse(r) for topic in self._dead_letter_topics for r in self.topics.records(topic)]

    @property
    def published(self) -> list[FollowUp]:
        """Events handlers published (``ctx.publish``; a transactional handler's once committed), in order."""
        return [  # (records the kit's producer encoded: no header without a value)
            FollowUp(r.topic, decode(r.key, r.value, r.headers, timestamp_ms=r.timestamp), r)  # type: ignore[arg-type]
            for r in self.producer.sent
        ]

    def follow_ups(self, event: Event | str) -> list[Event]:
        """The events published while handling ``event`` (their causation id is its id)."""
        event_id = event if isinstance(event, str) else event.id
        return [f.event for f in self.published if f.event.causation_id == event_id]

    def records(self, topic: str) -> list[Record]:
        """Every record of a kit topic (fed, published, dead-lettered, retried)."""
        return self.topics.records(topic)
