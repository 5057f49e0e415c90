"""The hostile-record corpus: records no eventq producer writes, through a real daemon on the real broker.

Each case is produced with a plain Kafka client (aiokafka's producer; bytes it cannot
write, such as a header name that is not UTF-8, with :mod:`tests.rawrecords`). After
the daemon has run over the whole corpus the test checks, for every offset of every
partition: a ``processed_events`` row names it, or a dead letter names it, or it is a
copy of an event that has a row; the committed offset is the log end; the daemon never
stopped; ``/readyz`` answered 200 once caught up.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from eventq.config import KafkaSettings
from eventq.consumers import App, Consumer, ConsumerSettings, Context
from eventq.kafka import create_topics
from eventq.schemas import Event
from eventq.schemas.envelope import encode
from eventq.wire import DLT_OMITTED as OMITTED
from tests.conftest import end_offsets, read_to_end
from tests.integration.consumer_kit import committed, consumer_settings, order
from tests.rawrecords import produce_raw_record

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

Headers = list[tuple[str, bytes | None]]


def envelope(event: Event) -> tuple[bytes | None, bytes, Headers]:
    encoded = encode(event)
    return encoded.key, encoded.value, list(encoded.headers)


def replace(headers: Headers, name: str, value: bytes | None) -> Headers:
    return [(n, value if n == name else v) for n, v in headers]


def retry_headers(topic: str, **overrides: bytes) -> Headers:
    fields = {
        "topic": topic.encode(), "partition": b"0", "offset": b"0", "timestamp": b"0", "attempts": b"1",
        "due": b"0", "first-failure": b"2026-12-01T00:00:00.000+00:00", "error-type": b"x", "error-message": b"x",
    }
    fields.update(overrides)
    return [(f"eventq-retry-{name}", raw) for name, raw in fields.items()]


async def produce(
    kafka: KafkaSettings, topic: str, records: Sequence[tuple[bytes | None, bytes | None, Headers]]
) -> None:
    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        for key, value, headers in records:
            if key is None and value is None:  # aiokafka's producer refuses it; Kafka does not
                await produce_raw_record(kafka, topic, 0, key=None, value=None, headers=[], timestamp_ms=1)
                continue
            await (await producer.send(topic, value, key=key, headers=headers, partition=0))
    finally:
        await producer.stop()


async def http_status(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status


async def run_until_committed(app: App, settings: ConsumerSettings, topics: Sequence[str], kafka: KafkaSettings) -> int:
    """Run a daemon until every partition of ``topics`` is committed to its end; /readyz status then."""
    consumer = Consumer(app, settings)
    running = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(90):
            while True:
                await asyncio.sleep(0.5)
                assert not running.done(), f"the daemon stopped: {running.exception()!r}"
                done = True
                for topic in topics:
                    ends = await end_offsets(kafka, topic, nonempty=True)
                    if (await committed(kafka, settings.group_id or "", topic)) != ends:
                        done = False
                if done:
                    break
        assert consumer.health is not None
        return await http_status(consumer.health.port, "/readyz")
    finally:
        consumer.stop()
        await running


async def test_no_record_kills_wedges_or_vanishes(kafka_settings: KafkaSettings, database: str) -> None:
    """Every hostile record ends as a row or a dead letter naming it, the daemon lives, commits reach the end."""
    topic = f"hostile-{uuid.uuid4().hex[:8]}"
    retry = f"{topic}.retry.1"
    await create_topics(kafka_settings, [topic, retry, f"{topic}.retry.2", f"{topic}.retry.3", f"{topic}.retry.4"],
                        partitions=1)
    handled: list[str] = []
    app = App("hostile", topics=[topic])

    @app.handler("demo.order.created.v1", retry_topics=True)
    async def take(event: Event, ctx: Context) -> None:
        handled.append(event.id)

    valid = order(1)
    key, value, headers = envelope(valid)
    twin = order(2)
    same_id_other_source = Event(type=twin.type, source="another-shop", id=twin.id, data=twin.data, key=twin.key)
    long_key, long_value, long_headers = envelope(order(4))
    cases: list[tuple[bytes | None, bytes | None, Headers]] = [
        (key, value, headers),                                           # 0 valid
        (key, value, headers),                                           # 1 duplicate inside the batch
        (None, None, []),                                                # 2 null key and value
        (b"\xff\xfe", bytes(range(256)) * 4, []),                        # 3 random bytes, key not UTF-8
        (key, value, replace(headers, "ce_id", b"\xff\xfe\xfd")),        # 4 header value not UTF-8
        (key, value, replace(headers, "ce_id", b"i" * 10_000)),          # 5 10 kB id
        (key, value, replace(headers, "ce_id", None)),                   # 6 null id
        (key, b"[" * 10_000 + b"]" * 10_000, headers),                   # 7 10,000-deep JSON
        (key, b'{"amount_cents": NaN}', headers),                        # 8 NaN
        (key, b"x" * 1_040_000, headers),                                # 9 near the broker's size limit
        envelope(twin),                                                  # 10
        envelope(same_id_other_source),                                  # 11 same id, another source
        (key, value, replace(headers, "ce_specversion", b"0.3")),        # 12 another spec version
        (long_key, long_value, [*long_headers, ("x" * 10_000, b"v" * 10_000)]),  # 13 10 kB name
    ]
    await produce(kafka_settings, topic, cases)
    raw_offset = await produce_raw_record(                               # 14 header name not UTF-8
        kafka_settings, topic, 0, key=key, value=value,
        headers=[(name.encode(), v) for name, v in headers] + [(b"\xff\xfe", b"x")], timestamp_ms=1_700_000_000_000,
    )
    forgeries = [
        retry_headers("a,b"), retry_headers(topic, partition=b"1,2"), retry_headers("x'y\"z\n"),
        retry_headers("t" * 10_000), retry_headers(topic, offset=b"9" * 40), retry_headers("other-topic"),
    ]
    forged = []
    for n, forgery in enumerate(forgeries):
        forged_key, forged_value, forged_headers = envelope(order(100 + n))
        forged.append((forged_key, forged_value, forged_headers + forgery))
    await produce(kafka_settings, retry, forged)

    settings = consumer_settings(kafka_settings, database, topic, health_port=0)
    readyz = await run_until_committed(app, settings, [topic, retry], kafka_settings)

    assert readyz == 200
    letters = await read_to_end(kafka_settings, f"{topic}.dlt")
    lettered = {
        (dict(r.headers)["eventq-dlt-topic"].decode(), int(dict(r.headers)["eventq-dlt-offset"])): r for r in letters
    }
    conn = await asyncpg.connect(database)
    try:
        recorded = await conn.fetch(
            'SELECT topic, "offset", source, outcome FROM processed_events WHERE consumer_group = $1',
            settings.group_id,
        )
    finally:
        await conn.close()
    rows = {(r["topic"], r["offset"]): r for r in recorded}
    for offset in range(raw_offset + 1):
        if offset == 1:
            continue  # the copy of offset 0: skipped as a duplicate, its event has a row
        assert (topic, offset) in rows or (topic, offset) in lettered, f"offset {offset} has neither row nor letter"
    for offset in range(len(forged)):
        assert (retry, offset) in lettered, f"forged retry record {offset} was not dead-lettered"
        assert dict(lettered[(retry, offset)].headers)["eventq-dlt-reason"] == b"invalid"
    assert rows[(topic, 0)]["outcome"] == "handled"
    assert {rows[(topic, 10)]["source"], rows[(topic, 11)]["source"]} == {"tests", "another-shop"}
    assert handled.count(valid.id) == 1 and handled.count(twin.id) == 2
    undecodable = dict(lettered[(topic, raw_offset)].headers)
    assert undecodable["eventq-dlt-reason"] == b"undecodable"
    assert ("\ufffd\ufffd", b"x") in lettered[(topic, raw_offset)].headers  # the name, as Kafka's Java client shows it
    assert lettered[(topic, 9)].value == b"x" * 1_040_000  # the dead-letter topic has room for it
    assert await committed(kafka_settings, settings.group_id or "", topic) == {0: raw_offset + 1}


async def test_a_letter_too_large_for_an_existing_dead_letter_topic_is_sent_without_what_does_not_fit(
    kafka_settings: KafkaSettings, database: str
) -> None:
    """A source topic allowing larger records than its older dead-letter topic: the letter drops its value, says so."""
    topic = f"big-{uuid.uuid4().hex[:8]}"
    await create_topics(kafka_settings, [topic], partitions=1, config={"max.message.bytes": "3000000"})
    await create_topics(kafka_settings, [f"{topic}.dlt"], partitions=1)  # the broker's default limit, ~1 MB
    app = App("big", topics=[topic])

    @app.handler("demo.order.created.v1")
    async def take(event: Event, ctx: Context) -> None:
        pass

    key, _, headers = envelope(order(1))
    await produce(kafka_settings, topic, [(key, b"y" * 2_000_000, headers), envelope(order(2))])
    settings = consumer_settings(kafka_settings, database, topic, health_port=0)

    readyz = await run_until_committed(app, settings, [topic], kafka_settings)

    assert readyz == 200
    [letter] = await read_to_end(kafka_settings, f"{topic}.dlt")
    found = dict(letter.headers)
    assert letter.value is None
    assert found[OMITTED] == b"stacktrace,error-message,value"
    assert (found["eventq-dlt-offset"], found["eventq-dlt-topic"]) == (b"0", topic.encode())
    assert int(found["eventq-dlt-original-bytes"]) > 2_000_000


async def test_a_letter_the_broker_refuses_as_too_large_is_resent_smaller_not_retried_as_it_is(
    kafka_settings: KafkaSettings,
) -> None:
    """With no known limit, a letter the broker refuses for its size arrives without its value, saying so."""
    from eventq.consumers.deadletter import DeadLetter, DeadLetterSink, Failure, dead_letter_headers

    topic = f"small-{uuid.uuid4().hex[:8]}.dlt"
    await create_topics(kafka_settings, [topic], partitions=1, config={"max.message.bytes": "20000"})
    letter = DeadLetter(
        topic="orders", partition=0, offset=7, timestamp=0, key=b"k", value=b"z" * 50_000, headers=[],
        group="g", failure=Failure(reason="invalid", error_type="x.Y", message="m" * 5_000, stacktrace="s" * 8_000),
    )
    sink = DeadLetterSink(kafka_settings, timeout_s=10)
    await sink.start()
    try:
        async with asyncio.timeout(30):
            await sink.send([(topic, letter.key, letter.value, dead_letter_headers(letter))])
    finally:
        await sink.stop()

    [sent] = await read_to_end(kafka_settings, topic)
    found = dict(sent.headers)
    assert (sent.value, sent.key) == (None, b"k")
    assert found[OMITTED] == b"stacktrace,error-message,value"
    assert found["eventq-dlt-offset"] == b"7"
