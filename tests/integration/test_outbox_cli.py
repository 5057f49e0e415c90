"""``eventq outbox`` as an operator runs it: relay, status, unpark; bad input is one line, exit 1 or 2."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import asyncpg
import orjson
import pytest

from eventq.config import KafkaSettings
from eventq.outbox import Outbox
from eventq.producers import ProducerSettings
from eventq_dev.demo import SCHEMAS as DEMO_SCHEMAS
from tests.conftest import Reader, TopicFactory
from tests.integration.consumer_kit import order
from tests.integration.test_operator_failures import EVENTQ, REFUSED_DB, REPO, STACK_ENV

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]
DB_DOWN = "cannot use the database"


def eventq(argv: list[str], database: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTQ_", "OTEL_"))}
    base.update({"PYTHONPATH": str(REPO), "OTEL_SDK_DISABLED": "true", **STACK_ENV,
                 "EVENTQ_DATABASE_URL": database, "EVENTQ_OUTBOX_POLL_INTERVAL_S": "0.2", **env})
    return subprocess.run([EVENTQ, *argv], env=base, capture_output=True, text=True, timeout=120, check=False)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert lines and lines[-1].startswith("Error:"), result.stderr
    return lines[-1]


async def add(database: str, topic: str, count: int, *, start: int = 0) -> list[str]:
    outbox = Outbox(ProducerSettings(schemas=DEMO_SCHEMAS))
    conn = await asyncpg.connect(database)
    try:
        async with conn.transaction():
            added = await outbox.add_many(conn, [order(n) for n in range(start, start + count)], topic=topic)
    finally:
        await conn.close()
    return [a.event_id for a in added]


async def test_status_shows_what_waits_per_topic_and_the_relay_drains_it(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader
) -> None:
    """status --json counts pending events per topic with their age; relay --until-empty publishes them, exit 0."""
    topic = await new_topic(partitions=2)
    ids = await add(database, topic, 5)
    result = await asyncio.to_thread(eventq, ["outbox", "status", "--json"], database)
    assert result.returncode == 0, result.stderr
    found = orjson.loads(result.stdout)
    assert found["pending"] == 5 and found["relays"] == [] and len(found["unowned_shares"]) == 16
    (state,) = found["topics"]
    assert (state["topic"], state["pending"], state["parked"]) == (topic, 5, 0) and state["oldest_age_s"] >= 0
    table = await asyncio.to_thread(eventq, ["outbox", "status"], database)
    assert topic in table.stdout and "relays: none running" in table.stdout
    relayed = await asyncio.to_thread(eventq, ["outbox", "relay", "--until-empty"], database)
    assert relayed.returncode == 0, relayed.stderr
    assert sorted(dict(r.headers)["ce_id"].decode() for r in await read_topic(topic, 5)) == sorted(ids)
    after = orjson.loads((await asyncio.to_thread(eventq, ["outbox", "status", "--json"], database)).stdout)
    assert after["pending"] == 0 and after["topics"] == []


async def test_a_running_relay_shows_in_status_and_stops_cleanly_on_sigterm(database: str, tmp_path: Path) -> None:
    """A relay process appears in status holding all 16 shares; SIGTERM makes it exit 0 and release them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTQ_", "OTEL_"))}
    env.update({"PYTHONPATH": str(REPO), "OTEL_SDK_DISABLED": "true", **STACK_ENV, "EVENTQ_DATABASE_URL": database})
    process = await asyncio.create_subprocess_exec(
        EVENTQ, "outbox", "relay", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(30):
            while True:
                found = orjson.loads((await asyncio.to_thread(eventq, ["outbox", "status", "--json"], database)).stdout)
                if found["relays"] and len(found["relays"][0]["shares"]) == 16:
                    break
                await asyncio.sleep(0.2)
        assert found["relays"][0]["name"].startswith("eventq-relay ")
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode == 0, stderr.decode()[-2000:]
    found = orjson.loads((await asyncio.to_thread(eventq, ["outbox", "status", "--json"], database)).stdout)
    assert found["relays"] == []


async def test_unpark_puts_parked_events_back_for_one_topic_or_all(database: str) -> None:
    """unpark --topic clears only that topic's parked rows; without it, every parked row."""
    await add(database, "t.one", 2)
    await add(database, "t.two", 3, start=10)
    conn = await asyncpg.connect(database)
    await conn.execute("UPDATE eventq_outbox SET parked_at = now(), last_error = 'MessageTooLarge: ...'")
    one = await asyncio.to_thread(eventq, ["outbox", "unpark", "--topic", "t.one"], database)
    assert one.returncode == 0 and one.stdout.strip() == "unparked 2 events of topic t.one", one.stderr
    parked = await conn.fetchval("SELECT count(*) FROM eventq_outbox WHERE parked_at IS NOT NULL")
    rest = await asyncio.to_thread(eventq, ["outbox", "unpark"], database)
    assert parked == 3 and rest.stdout.strip() == "unparked 3 events"
    assert await conn.fetchval("SELECT count(*) FROM eventq_outbox WHERE parked_at IS NOT NULL") == 0
    await conn.close()


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        pytest.param(["outbox", "status"], {"EVENTQ_DATABASE_URL": REFUSED_DB}, DB_DOWN, id="db-down"),
        pytest.param(["outbox", "relay"], {"EVENTQ_DATABASE_URL": REFUSED_DB}, DB_DOWN, id="relay-db-down"),
        pytest.param(["outbox", "relay"], {"EVENTQ_OUTBOX_BATCH_SIZE": "lots"}, "EVENTQ_OUTBOX_BATCH_SIZE",
                     id="bad-variable"),
        pytest.param(["outbox", "relay"], {"EVENTQ_OUTBOX_BACKOFF_MAX_S": "0.01"}, "EVENTQ_OUTBOX_BACKOFF_MAX_S",
                     id="backoff-bounds"),
        pytest.param(["outbox", "relay"], {"EVENTQ_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, "Kafka", id="broker-down"),
    ],
)
def test_a_relay_or_status_that_cannot_work_says_why_in_one_line(
    database: str, argv: list[str], env: dict[str, str], expected: str
) -> None:
    """Unreachable services and bad variables end as one Error: line naming the cause, exit 1, no traceback."""
    result = eventq(argv, database, **env)
    assert result.returncode == 1, result.stderr
    assert expected in one_error_line(result)


async def test_a_database_without_the_outbox_table_says_to_migrate(database: str) -> None:
    """status, unpark and relay on a database lacking eventq_outbox: one line saying to run eventq db migrate."""
    conn = await asyncpg.connect(database)
    await conn.execute("DROP TABLE eventq_outbox")
    await conn.close()
    for argv in (["outbox", "status"], ["outbox", "unpark"], ["outbox", "relay"]):
        result = await asyncio.to_thread(eventq, argv, database)
        assert result.returncode == 1, (argv, result.stderr)
        assert "eventq db migrate" in one_error_line(result)


def test_unpark_with_a_topic_no_kafka_topic_can_have_is_wrong_usage(database: str) -> None:
    """An empty or overlong --topic is a usage error (exit 2), before any connection."""
    for topic in ("", "x" * 250):
        result = eventq(["outbox", "unpark", "--topic", topic], database)
        assert result.returncode == 2 and "--topic" in result.stderr and "Traceback" not in result.stderr
