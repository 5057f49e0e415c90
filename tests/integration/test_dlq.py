"""Dead-letter tooling against the real broker and database: inspect, replay, resume, archive."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from eventq.config import KafkaSettings
from eventq.consumers import App, Context
from eventq.dlq import Filters, archive, find, replay, summarize
from eventq.errors import Reject
from eventq.schemas import Event, decode
from tests.conftest import TopicFactory, end_offsets, read_to_end
from tests.integration.consumer_kit import committed, consumer_settings, order, publish, rows, run_until_idle

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

ORDER = "demo.order.created.v1"


class Payments:
    """A handler's outside world: which orders fail, until 'fixed'."""

    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.fixed = False
        self.calls: Counter[str] = Counter()

    def app(self, topic: str) -> App:
        app = App("billing", topics=[topic])

        @app.handler(ORDER, max_attempts=1)
        async def charge(event: Event, ctx: Context) -> None:
            self.calls[event.id] += 1
            if event.id in self.failing and not self.fixed:
                if event.data["amount_cents"] % 2:
                    raise Reject("card expired")
                raise TimeoutError("payment provider timed out")

        return app


async def read_committed(kafka: KafkaSettings, topic: str) -> list[Event]:
    """Every event visible to a read_committed reader (aborted transactions hidden)."""
    return [decode(r.key, r.value, r.headers) for r in await read_to_end(kafka, topic)]


async def dead_letter_some(
    kafka: KafkaSettings, database: str, topic: str, n: int = 20, failing_every: int = 4
) -> tuple[list[Event], Payments, str]:
    """Publish n orders, run the daemon once: every failing_every-th fails and is dead-lettered."""
    events = [order(i, key=f"k{i % 3}") for i in range(n)]
    await publish(kafka, topic, events)
    payments = Payments({e.id for i, e in enumerate(events) if i % failing_every == 0})
    settings = consumer_settings(kafka, database, topic)
    await run_until_idle(payments.app(topic), settings)
    return events, payments, settings.group_id or ""


async def test_replay_after_a_fix_runs_each_dead_letter_once_and_twice_replayed_still_one_row(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """Dead letters replayed after the handler is fixed are handled once; a second replay changes nothing."""
    topic = await new_topic(partitions=3)
    events, payments, group = await dead_letter_some(kafka_settings, database, topic)
    failing = payments.failing
    outcomes = {r["event_id"]: r["outcome"] for r in await rows(database, group)}
    assert {i for i, o in outcomes.items() if o == "dead_lettered"} == failing

    payments.fixed = True
    first = await replay(kafka_settings, f"{topic}.dlt")
    settings = consumer_settings(kafka_settings, database, topic, group_id=group)
    await run_until_idle(payments.app(topic), settings)
    second = await replay(kafka_settings, f"{topic}.dlt")
    await run_until_idle(payments.app(topic), settings)

    assert len(first.replayed) == len(failing) and first.targets == {topic: len(failing)}
    assert len(second.replayed) == len(failing)  # republished again, but...
    assert all(payments.calls[i] == 2 for i in failing)  # ...handled once after the fix (1 failure + 1)
    assert all(payments.calls[e.id] == 1 for e in events if e.id not in failing)
    recorded = await rows(database, group)
    assert Counter(r["event_id"] for r in recorded) == Counter({e.id: 1 for e in events})
    assert {r["outcome"] for r in recorded} == {"handled"}
    replayed = [e for e in await read_committed(kafka_settings, topic) if e.id in failing]
    assert Counter(e.id for e in replayed) == Counter({i: 3 for i in failing})  # original + 2 replays
    assert all(e.correlation_id == next(o for o in events if o.id == e.id).correlation_id for e in replayed)


async def test_each_filter_selects_its_letters_and_a_dry_run_changes_nothing(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """Every filter narrows the replay as named; the dry run publishes nothing and records no progress."""
    topic = await new_topic(partitions=1)
    events, payments, _ = await dead_letter_some(kafka_settings, database, topic, n=24, failing_every=3)
    dlt = f"{topic}.dlt"
    failing = [e for e in events if e.id in payments.failing]
    rejected = [e for e in failing if e.data["amount_cents"] % 2]
    timed_out = [e for e in failing if not e.data["amount_cents"] % 2]
    letters = {letter.event_id: letter for letter in await _all(kafka_settings, dlt)}
    split = sorted(letter.time for letter in letters.values())[len(letters) // 2]
    ends_before = await end_offsets(kafka_settings, topic)

    async def count(**criteria: object) -> int:
        report = await replay(kafka_settings, dlt, Filters(**criteria), dry_run=True)  # type: ignore[arg-type]
        return len(report.replayed)

    assert await count() == len(failing) == 8
    assert await count(error_type="Reject") == len(rejected)
    assert await count(error_type="builtins.TimeoutError") == len(timed_out)
    assert await count(event_type=ORDER) == 8 and await count(event_type="demo.order.paid.v1") == 0
    assert await count(key="k0") == sum(1 for e in failing if e.key == "k0")
    assert await count(correlation_id=failing[2].correlation_id) == 1
    assert await count(handler="charge") == 8 and await count(handler="refund") == 0
    assert await count(offsets=(2, 4)) == 3
    assert await count(since=split) == sum(1 for x in letters.values() if x.time >= split)
    assert await count(until=split) == sum(1 for x in letters.values() if x.time < split)
    assert await count(error_type="Reject", key="k0") == sum(1 for e in rejected if e.key == "k0")
    assert await end_offsets(kafka_settings, topic) == ends_before  # nothing republished


async def test_rate_limit_spreads_the_republished_records(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """--rate 10/s over 12 letters takes over a second, measured by the replayed records' timestamps."""
    topic = await new_topic(partitions=1)
    await dead_letter_some(kafka_settings, database, topic, n=12, failing_every=1)
    started = time.monotonic()
    report = await replay(kafka_settings, f"{topic}.dlt", rate=10)
    elapsed = time.monotonic() - started

    assert len(report.replayed) == 12
    assert elapsed >= 1.0  # 12 letters at 10/s: the last is due 1.1 s after the first
    stamps = sorted(r.timestamp for r in await _records(kafka_settings, topic) if _header(r, "eventq-replay-run"))
    assert stamps[-1] - stamps[0] >= 900


async def test_a_replay_killed_mid_run_resumes_without_republishing_anything_twice(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """kill -9 during `eventq dlq replay --run R`, then the same command again: each letter is replayed once."""
    topic = await new_topic(partitions=2)
    events, payments, _ = await dead_letter_some(kafka_settings, database, topic, n=60, failing_every=1)
    command = [
        sys.executable, "-m", "eventq.cli", "dlq", "replay", f"{topic}.dlt", "--yes", "--run", "resume-me",
        "--rate", "10/s", "--bootstrap-servers", kafka_settings.bootstrap_servers,
    ]
    first = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                 stderr=asyncio.subprocess.PIPE, env=dict(os.environ))
    async with asyncio.timeout(30):  # killed once its first chunk is committed (~1 s into 6 s of work)
        while not await committed(kafka_settings, "eventq-replay.resume-me", f"{topic}.dlt"):
            await asyncio.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    second = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                  stderr=asyncio.subprocess.PIPE, env=dict(os.environ))
    out, err = await asyncio.wait_for(second.communicate(), 90)

    assert second.returncode == 0, err.decode()[-2000:]
    resumed = int(out.decode().split("replayed ")[1].split(" ")[0])
    assert 0 < resumed < 60  # the rerun did only what the killed run had not committed
    replayed = [e for e in await read_committed(kafka_settings, topic) if e.id in payments.failing]
    assert Counter(e.id for e in replayed) == Counter({e.id: 2 for e in events})  # original + exactly one replay


async def test_the_loop_guard_refuses_letters_replayed_too_often(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """A dead letter whose event was already replayed max_replays times is refused, not republished."""
    topic = await new_topic(partitions=1)
    events, payments, group = await dead_letter_some(kafka_settings, database, topic, n=4, failing_every=2)
    settings = consumer_settings(kafka_settings, database, topic, group_id=group)
    for _ in range(2):  # still broken: each replay dead-letters the events again, one replay count higher
        await replay(kafka_settings, f"{topic}.dlt", Filters(), max_replays=2)
        await run_until_idle(payments.app(topic), settings)
    report = await replay(kafka_settings, f"{topic}.dlt", max_replays=2)

    letters = await _all(kafka_settings, f"{topic}.dlt")
    assert max(letter.replay_count for letter in letters) == 2
    assert len(report.refused) == 2  # the two letters that already carry 2 replays
    assert all("already replayed 2 times" in why for _, why in report.refused)


async def test_spring_and_karafka_dead_letters_are_replayed_to_their_source_topic(
    kafka_settings: KafkaSettings, new_topic: TopicFactory
) -> None:
    """Dead letters written with Spring's or Karafka's headers go back to the topic those headers name."""
    source, dlt = await new_topic(partitions=1), await new_topic(partitions=1)
    from eventq.schemas.envelope import encode

    from_spring, from_karafka = order(1), order(2)
    spring_record, karafka_record = encode(from_spring), encode(from_karafka)
    spring = [*spring_record.headers, ("kafka_dlt-original-topic", source.encode()),
              ("kafka_dlt-original-partition", (0).to_bytes(4, "big")),
              ("kafka_dlt-original-offset", (41).to_bytes(8, "big")),
              ("kafka_dlt-exception-fqcn", b"java.lang.IllegalStateException")]
    karafka = [*karafka_record.headers, ("source_topic", source.encode()), ("source_partition", b"0"),
               ("source_offset", b"42"), ("source_consumer_group", b"ruby-billing")]
    raw = AIOKafkaProducer(**kafka_settings.client_kwargs())
    await raw.start()
    await raw.send_and_wait(dlt, spring_record.value, key=spring_record.key, headers=spring)
    await raw.send_and_wait(dlt, karafka_record.value, key=karafka_record.key, headers=karafka)
    await raw.send_and_wait(dlt, b"orphan", key=None, headers=[])
    await raw.stop()

    report = await replay(kafka_settings, dlt)

    assert report.targets == {source: 2}
    assert [position for position, _ in report.failed] == [f"{dlt}/0/2"]  # the orphan names no source
    republished = await _records(kafka_settings, source)
    assert [r.value for r in republished] == [spring_record.value, karafka_record.value]
    for r, event in zip(republished, (from_spring, from_karafka), strict=True):
        names = [n for n, _ in r.headers]
        assert not any(n.startswith(("kafka_dlt-", "source_")) for n in names)
        assert dict(r.headers)["ce_id"] == event.id.encode()
    letters = {letter.offset: letter for letter in await _all(kafka_settings, dlt)}
    assert (letters[0].dialect, letters[0].source_offset) == ("spring", 41)
    assert (letters[1].dialect, letters[1].group) == ("karafka", "ruby-billing")


async def test_list_show_and_archive_describe_and_trim_a_dead_letter_topic(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    """Summaries group failures by error type and handler; show finds a letter; archive writes then deletes."""
    topic = await new_topic(partitions=1)
    events, payments, _ = await dead_letter_some(kafka_settings, database, topic, n=12, failing_every=3)
    dlt = f"{topic}.dlt"

    [summary] = await summarize(kafka_settings, [dlt])
    by_type = {error: n for (error, _), n in summary.by_failure.items()}
    target = next(e for e in events if e.id in payments.failing)
    [found] = await find(kafka_settings, dlt, event_id=target.id)
    path = tmp_path / "letters.jsonl"
    counts = await archive(kafka_settings, dlt, path, delete=True)
    remaining = await _all(kafka_settings, dlt)

    assert summary.count == 4 and summary.sources == Counter({topic: 4})
    assert by_type == {"eventq.errors.Reject": 2, "builtins.TimeoutError": 2}
    assert found.event_id == target.id and found.source_topic == topic and found.error_message
    assert counts == {0: 4} and len(path.read_text().splitlines()) == 4
    assert remaining == []


async def test_a_missing_topic_and_a_resume_with_other_filters_get_clear_errors(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """A missing topic exits 1 naming it; resuming a run with other filters is refused before anything is sent."""
    from eventq.errors import ConfigError

    topic = await new_topic(partitions=1)
    await dead_letter_some(kafka_settings, database, topic, n=4, failing_every=2)
    await replay(kafka_settings, f"{topic}.dlt", Filters(key="k0"), run="picky")
    with pytest.raises(ConfigError, match="started with other filters"):
        await replay(kafka_settings, f"{topic}.dlt", Filters(key="k1"), run="picky")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "eventq.cli", "dlq", "replay", "no.such.dlt", "--yes",
        "--bootstrap-servers", kafka_settings.bootstrap_servers,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1 and "'no.such.dlt' does not exist" in err.decode()


async def _all(kafka: KafkaSettings, topic: str) -> list:  # type: ignore[type-arg]
    from eventq.dlq import scan

    return [letter async for letter in scan(kafka, topic)]


async def _records(kafka: KafkaSettings, topic: str) -> list:  # type: ignore[type-arg]
    return sorted(await read_to_end(kafka, topic), key=lambda r: (r.partition, r.offset))


def _header(record: object, name: str) -> bytes | None:
    return dict(getattr(record, "headers", ()) or ()).get(name)


async def test_a_letter_the_broker_refuses_is_not_counted_as_replayed_nor_passed(
    kafka_settings: KafkaSettings, new_topic: TopicFactory
) -> None:
    """A letter too large for its target topic stops the run with the position named; no progress is committed."""
    from eventq.errors import ConsumerError
    from eventq.kafka import create_topics

    dlt = await new_topic(partitions=1)
    small = f"{dlt}.small"
    await create_topics(kafka_settings, [small], partitions=1, config={"max.message.bytes": "2000"})
    raw = AIOKafkaProducer(**kafka_settings.client_kwargs())
    await raw.start()
    await raw.send_and_wait(dlt, b"x" * 100, headers=[("eventq-dlt-topic", small.encode())])
    await raw.send_and_wait(dlt, b"y" * 5000, headers=[("eventq-dlt-topic", small.encode())])
    await raw.stop()

    with pytest.raises(ConsumerError, match=f"refused the replay of .*{dlt}/0/1"):
        await replay(kafka_settings, dlt, run="too-big")

    assert await committed(kafka_settings, "eventq-replay.too-big", dlt) == {}
    assert await _records(kafka_settings, small) == []  # the small letter's transaction was rolled back too


async def test_archive_before_a_time_takes_only_each_partitions_old_prefix(
    kafka_settings: KafkaSettings, new_topic: TopicFactory, tmp_path: Path
) -> None:
    """--before T archives and deletes a partition's letters up to its first newer one, never an older one after it."""
    from datetime import UTC, datetime

    dlt = await new_topic(partitions=1)
    day = 86_400_000
    now = int(time.time() * 1000)
    stamps = [now - 3 * day, now - 2 * day, now, now - 3 * day]  # the last is old but sits behind a new one
    raw = AIOKafkaProducer(**kafka_settings.client_kwargs())
    await raw.start()
    for n, stamp in enumerate(stamps):
        await raw.send_and_wait(dlt, f"letter-{n}".encode(), timestamp_ms=stamp, headers=[])
    await raw.stop()
    path = tmp_path / "old.jsonl"

    counts = await archive(kafka_settings, dlt, path, before=datetime.fromtimestamp((now - day) / 1000, UTC),
                           delete=True)

    assert counts == {0: 2}
    assert [json.loads(line)["payload"] for line in path.read_text().splitlines()] == ["letter-0", "letter-1"]
    assert [letter.value for letter in await _all(kafka_settings, dlt)] == [b"letter-2", b"letter-3"]
