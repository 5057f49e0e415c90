"""The topics a consumer derives from its own: dead-letter topics and retry topics.

Before the daemon subscribes, every derived topic must exist. A missing one is created
(unless ``create_topics`` is off, then the daemon stops with the command that creates
it) in the shape of the topic it serves: as many partitions, as many replicas (so a
dead-letter topic is not the one topic lost with a single broker), and room for any
source record plus eventq's headers (``max.message.bytes`` + ``HEADROOM_BYTES``), so
every dead letter fits.
"""

from __future__ import annotations

import structlog

from eventq.consumers.app import App
from eventq.consumers.deadletter import HEADROOM_BYTES
from eventq.consumers.retrytopics import retry_topic
from eventq.consumers.settings import ConsumerSettings
from eventq.errors import ConsumerError, EventqError
from eventq.kafka import create_topics, max_message_bytes, topic_shapes

log = structlog.get_logger("eventq.consumer")


def derived_names(
    s: ConsumerSettings, app: App, topics: tuple[str, ...],
) -> tuple[dict[str, str], dict[str, str]]:
    """(every derived topic -> the source topic it serves, retry topic -> its source) of ``topics``.

    Dead-letter topics for every source; retry topics ``<topic>.retry.1`` … up to the
    largest attempt limit of the App's ``retry_topics=True`` handlers, minus one.
    """
    derived = {s.dead_letter_topic_for(t): t for t in topics}
    retry_handlers = [h for h in app.handlers.values() if h.retry_topics]
    levels = max(((h.max_attempts or s.max_attempts) - 1 for h in retry_handlers), default=0)
    retry_names = {retry_topic(t, n): t for t in topics for n in range(1, levels + 1)}
    derived.update(retry_names)
    return derived, retry_names


async def provision_derived_topics(
    s: ConsumerSettings, app: App, topics: tuple[str, ...], existing: set[str],
) -> tuple[dict[str, str], dict[str, int]]:
    """Create the missing derived topics; (retry topic -> its source, dead-letter/retry topic -> its size limit)."""
    derived, retry_names = derived_names(s, app, topics)
    missing_derived = sorted(set(derived) - existing)
    if missing_derived and not s.create_topics:
        raise ConsumerError(
            f"topic(s) {', '.join(missing_derived)} do not exist; create them (eventq topics create "
            f"{' '.join(missing_derived)}) or allow EVENTQ_CREATE_TOPICS"
        )
    shapes = await topic_shapes(s.kafka, set(derived.values())) if missing_derived else {}
    limits = await max_message_bytes(s.kafka, [*topics, *derived])
    for name in missing_derived:
        # The source's shape: as many partitions, and as many replicas (so a dead-letter
        # topic is not the one topic lost with a single broker); and room for any
        # source record plus eventq's headers, so every letter fits.
        partitions, replication = shapes.get(derived[name], (1, 1))
        config = {}
        if derived[name] in limits:
            config["max.message.bytes"] = str(limits[derived[name]] + HEADROOM_BYTES)
        try:
            await create_topics(
                s.kafka, [name], partitions=partitions, replication_factor=replication, config=config
            )
        except EventqError as exc:
            raise ConsumerError(f"cannot create topic {name!r}: {getattr(exc, 'reason', exc)}") from exc
        log.info("consumer.topic_created", topic=name, partitions=partitions, replication_factor=replication,
                 **config)
    letter_limits = await max_message_bytes(s.kafka, derived) if missing_derived else {
        name: limit for name, limit in limits.items() if name in derived
    }
    return retry_names, letter_limits
