"""A consumer process killed at each step of a slice: handlers re-run at most once, rows once, nothing lost."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections import Counter

import asyncpg
import pytest

from eventq.config import KafkaSettings
from eventq.consumers import App, Context
from eventq.schemas import Event
from tests.conftest import TopicFactory
from tests.integration.consumer_kit import committed, consumer_settings, order, publish, rows, run_until_idle

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


async def crash_then_recover(
    kafka: KafkaSettings, database: str, topic: str, point: str
) -> tuple[str, dict[int, int], Counter[str]]:
    """Run the crash worker until it dies at ``point``, then a healthy daemon of the same group until idle.

    Returns the group, its committed offsets right after the crash, and handler runs per event id.
    """
    group = f"crash-{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database)
    await conn.execute("CREATE TABLE IF NOT EXISTS side_effects (event_id uuid NOT NULL)")
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.crash_worker", topic, group, database, point,
        env={**os.environ, "EVENTQ_BOOTSTRAP_SERVERS": kafka.bootstrap_servers},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(worker.communicate(), 90)
    assert worker.returncode == 137, stderr.decode()[-2000:]
    after_crash = await committed(kafka, group, topic)

    app = App(group, topics=[topic])

    @app.handler("demo.order.created.v1")
    async def handle(event: Event, ctx: Context) -> None:
        await ctx.db.execute("INSERT INTO side_effects VALUES ($1)", event.id)

    # session timeout 6 s: the dead member's partitions come back to the group after it
    await run_until_idle(app, consumer_settings(kafka, database, topic, group_id=group), timeout=90)
    runs = Counter(str(r[0]) for r in await conn.fetch("SELECT event_id FROM side_effects"))
    await conn.close()
    return group, after_crash, runs


async def test_a_crash_between_handler_and_record_reruns_the_handler_once_and_records_once(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """Killed after handlers ran but before their rows: those handlers run again once; every event has one row."""
    topic = await new_topic(partitions=2)
    events = [order(n) for n in range(200)]
    await publish(kafka_settings, topic, events)

    group, after_crash, runs = await crash_then_recover(kafka_settings, database, topic, "after_handlers")

    assert after_crash == {}  # nothing was committed before the crash
    assert set(runs) == {e.id for e in events}
    assert set(runs.values()) <= {1, 2} and 2 in runs.values()  # the crashed slice re-ran, once
    recorded = Counter(r["event_id"] for r in await rows(database, group))
    assert recorded == Counter({e.id: 1 for e in events})


async def test_a_crash_in_a_handler_reruns_it_and_loses_nothing(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """Killed inside a handler: the event is delivered again, handled, and recorded once."""
    topic = await new_topic(partitions=1)
    events = [order(n, key="k") for n in range(10)]
    await publish(kafka_settings, topic, events)

    group, _, runs = await crash_then_recover(kafka_settings, database, topic, "in_handler")

    assert runs[events[3].id] == 2 and all(runs[e.id] == 1 for e in events[4:])
    assert Counter(r["event_id"] for r in await rows(database, group)) == Counter({e.id: 1 for e in events})


async def test_a_crash_before_commit_redelivers_and_recorded_events_skip_their_handler(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """Killed after recording but before committing: the redelivered events are committed without running again."""
    topic = await new_topic(partitions=1)
    events = [order(n, key="k") for n in range(50)]
    await publish(kafka_settings, topic, events)

    group, after_crash, runs = await crash_then_recover(kafka_settings, database, topic, "before_commit")

    assert after_crash == {}  # redelivery really happened: nothing was committed
    assert runs == Counter({e.id: 1 for e in events})  # ...and no handler ran twice
    assert await committed(kafka_settings, group, topic) == {0: 50}
