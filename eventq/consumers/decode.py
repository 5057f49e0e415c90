"""Stage 2 of 7 — decode: fetched records become :class:`~eventq.consumers.outcome.Item` objects.

Each record is decoded as a CloudEvent (:func:`eventq.schemas.envelope.decode`),
validated against its schema if the registry declares its type, and routed to its
handler. Nothing here raises for a record: a record that is not a valid event keeps
the reason in ``Item.invalid`` and is dead-lettered by the handle stage (unless the
dedupe stage finds it finished before). A record in a retry topic must carry a sound
retry state (only eventq writes those topics); one that does not is invalid too.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from typing import Any

from eventq.consumers import retrytopics
from eventq.consumers.app import App
from eventq.consumers.outcome import Item
from eventq.errors import EventqError, InvalidEvent, UndecodableRecord
from eventq.kafkarecords import printable, undecodable_names
from eventq.schemas.envelope import decode


def decode_items(
    records: Iterable[Any], app: App, registry: Any, max_event_bytes: int,
    retry_topics: AbstractSet[str] = frozenset(),
) -> list[Item]:
    """Decode, validate and route fetched records; an invalid one becomes an Item with ``invalid`` set."""
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
        item = Item(record, event, invalid, route(event.type))
        if record.topic in retry_topics:
            item.origin = retrytopics.parse(headers, topic=record.topic)
            if item.origin is None and invalid is None:
                # Only eventq writes retry topics; a record there without a sound retry state
                # (forged, or from another producer) is bad input, not an event to retry.
                item.invalid = InvalidEvent(
                    f"record in retry topic {record.topic} has no valid eventq-retry-* headers"
                )
        items.append(item)
    return items
