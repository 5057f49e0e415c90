"""A partition's slice of a fetched batch: its records decoded, how to interrupt it, what it leaves to do.

The daemon fetches a batch, splits it per partition and hands each slice to the
:class:`~eventq.consumers.processor.Processor`, which returns a :class:`SliceResult`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.trace import SpanContext

from eventq.consumers import store
from eventq.consumers.app import App, Handler
from eventq.consumers.deadletter import REPLAY_COUNT, DeadLetter
from eventq.errors import EventqError, UndecodableRecord
from eventq.kafkarecords import printable, undecodable_names
from eventq.schemas.envelope import Event, decode


class Item:
    """One fetched record: decoded event (or why it is not one), its handler, whether it is finished."""

    __slots__ = ("record", "event", "invalid", "handler", "done", "parent")

    def __init__(self, record: Any, event: Event | None, invalid: EventqError | None, handler: Handler | None):
        self.record = record
        self.event = event
        self.invalid = invalid
        self.handler = handler
        self.done = False
        self.parent: otel_context.Context | None = None  # the event's creation context (tracing on)


class Interrupt:
    """Asks a running slice to stop between events (shutdown, partition revocation).

    The handler running at that moment finishes; a retry back-off is cut short and
    its event left unfinished (so it is delivered again).
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = asyncio.Event()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    async def sleep(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; True (at once) if interrupted meanwhile."""
        if delay > 0 and not self._event.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._event.wait()
        return self._event.is_set()


@dataclass(slots=True)
class SliceResult:
    """What a slice leaves to do before its commit."""

    next_offset: int = 0  # everything before it is finished: the offset to commit
    rows: list[store.Processed] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    handoffs: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = field(default_factory=list)
    handled: int = 0
    duplicates: int = 0
    retries: int = 0
    span: SpanContext | None = None  # the slice's ``process`` span; None when tracing is off


def is_replayed(record: Any) -> bool:
    """True if the record was republished from a dead-letter topic (``eventq dlq replay``)."""
    return any(name == REPLAY_COUNT for name, _ in record.headers or ())


def decode_items(
    records: Iterable[Any], app: App, registry: Any, max_event_bytes: int
) -> list[Item]:
    """Decode and validate fetched records; an invalid one becomes an Item with ``invalid`` set."""
    route = app.route
    items = []
    for record in records:
        headers = record.headers or ()
        broken = undecodable_names(headers)
        if broken:
            names = ", ".join(printable(name).encode("utf-8", "replace").hex() for name in broken[:3])
            problem = UndecodableRecord(f"header name(s) not valid UTF-8 (hex, undecodable bytes as U+FFFD): {names}")
            items.append(Item(record, None, problem, None))
            continue
        try:
            event = decode(
                record.key, record.value, headers, max_event_bytes=max_event_bytes, timestamp_ms=record.timestamp
            )
        except EventqError as exc:
            items.append(Item(record, None, exc, None))
            continue
        except Exception as exc:  # decode promises InvalidEvent only; never let a record stop a partition
            problem = UndecodableRecord(f"unexpected {type(exc).__name__} while decoding: {exc}")
            items.append(Item(record, None, problem, None))
            continue
        invalid: EventqError | None = None
        if event.type in registry:
            try:
                registry.validate(event.type, event.data)
            except EventqError as exc:
                invalid = exc
        items.append(Item(record, event, invalid, route(event.type)))
    return items
