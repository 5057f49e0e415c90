"""Dead-letter tools against letters no ordinary client writes, on the real broker (issue 12).

A dead-letter topic holds one letter timestamped before year 1 (-62135683200000 ms), one
with a header named by the bytes ``ff fe`` (not UTF-8), and one ordinary letter; all
three are written byte by byte (:mod:`tests.rawrecords`), since aiokafka and
confluent-kafka refuse to write the first two.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass

import confluent_kafka
import pytest
from click.testing import CliRunner
from structlog.testing import capture_logs

from eventq.cli import main
from eventq.config import KafkaSettings
from eventq.dlq import find, replay, summarize
from eventq.kafka import create_topics
from tests.rawrecords import encode_batch, produce_raw_record

pytestmark = [pytest.mark.kafka]

YEAR_ZERO_MS = -62135683200000
DLT_MS = 1714564860456  # 2024-05-01T12:01:00.456Z
BAD_NAME = b"\xff\xfe"


@dataclass(frozen=True)
class Hostile:
    """A dead-letter topic (one partition) with the three letters, and a topic to replay them to."""

    kafka: KafkaSettings
    dlt: str
    target: str
    ordinary: int  # offsets
    year_zero: int
    bad_name: int

    def at(self, offset: int) -> str:
        return f"{self.dlt}/0/{offset}"


@pytest.fixture
def hostile(kafka_settings: KafkaSettings) -> Hostile:
    async def build() -> Hostile:
        base = f"test.{uuid.uuid4().hex[:12]}"
        dlt, target = f"{base}.dlt", f"{base}.replayed"
        await create_topics(kafka_settings, [dlt, target], partitions=1)
        karafka = [(b"source_topic", target.encode()), (b"source_partition", b"0"), (b"source_offset", b"7"),
                   (b"ce_id", b"evt-1")]
        offsets = [
            await produce_raw_record(kafka_settings, dlt, 0, key=b"k1", value=b'{"n": 1}', headers=karafka,
                                     timestamp_ms=DLT_MS),
            await produce_raw_record(kafka_settings, dlt, 0, key=b"k2", value=b'{"n": 2}',
                                     headers=[*karafka[:3], (b"ce_id", b"evt-2")], timestamp_ms=YEAR_ZERO_MS),
            await produce_raw_record(kafka_settings, dlt, 0, key=b"k3", value=b'{"n": 3}',
                                     headers=[*karafka[:3], (b"ce_id", b"evt-3"), (BAD_NAME, b"\x00v")],
                                     timestamp_ms=DLT_MS),
        ]
        return Hostile(kafka_settings, dlt, target, *offsets)

    # Sync fixture and tests: the CLI runs its own event loop (asyncio.run).
    return asyncio.run(build())


def cli(hostile: Hostile, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["dlq", *args],
                                env={"EVENTQ_BOOTSTRAP_SERVERS": hostile.kafka.bootstrap_servers})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def read_committed(hostile: Hostile, topic: str, count: int) -> list[confluent_kafka.Message]:
    """The first ``count`` committed records of partition 0, read with confluent-kafka (librdkafka)."""
    consumer = confluent_kafka.Consumer({"bootstrap.servers": hostile.kafka.bootstrap_servers,
                                         "group.id": f"raw-{uuid.uuid4().hex}", "enable.auto.commit": False,
                                         "isolation.level": "read_committed"})
    try:
        consumer.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
        messages = [consumer.poll(10) for _ in range(count)]
    finally:
        consumer.close()
    received = [m for m in messages if m is not None and m.error() is None]
    assert len(received) == count, messages
    return received


def test_raw_records_arrive_with_the_exact_timestamp_and_header_name_bytes(hostile: Hostile) -> None:
    """produce_raw_record writes what clients refuse to: confluent-kafka reads back the year-0 timestamp,
    and fails to decode the header name b'\\xff\\xfe' (it decodes names strictly)."""
    messages = read_committed(hostile, hostile.dlt, 3)

    assert [(m.offset(), m.key(), m.timestamp()[1]) for m in messages] == [
        (0, b"k1", DLT_MS), (1, b"k2", YEAR_ZERO_MS), (2, b"k3", DLT_MS),
    ]
    # confluent-kafka 2.16 raises the UnicodeDecodeError, or (seen under pytest) a SystemError from it.
    with pytest.raises((UnicodeDecodeError, SystemError)) as caught:
        messages[2].headers()
    error = caught.value if isinstance(caught.value, UnicodeDecodeError) else caught.value.__cause__
    assert isinstance(error, UnicodeDecodeError) and error.object == BAD_NAME


def test_summarize_and_find_read_every_hostile_letter(hostile: Hostile) -> None:
    """summarize counts all three letters and lists the two odd ones by position; find returns each of them,
    JSON-ready, the bad name as U+FFFD."""
    [summary] = asyncio.run(summarize(hostile.kafka, [hostile.dlt]))

    assert summary.count == 3
    assert summary.problems == [
        (hostile.at(hostile.year_zero), "timestamp -62135683200000 ms is out of range"),
        (hostile.at(hostile.bad_name), "1 header name(s) not UTF-8"),
    ]
    assert summary.oldest is not None and summary.oldest == summary.newest and summary.oldest.year == 2024

    [year_zero] = asyncio.run(find(hostile.kafka, hostile.dlt, offset=hostile.year_zero))
    [bad] = asyncio.run(find(hostile.kafka, hostile.dlt, event_id="evt-3"))

    assert (year_zero.timestamp_ms, year_zero.time_known, year_zero.event_id) == (YEAR_ZERO_MS, False, "evt-2")
    assert json.loads(json.dumps(bad.as_dict()))["headers"]["\ufffd\ufffd"] == "\x00v"


def test_replay_dry_run_and_real_replay_every_hostile_letter(hostile: Hostile) -> None:
    """A dry run and a real replay each count all three letters as replayed; the bad header name arrives
    as U+FFFD with its value intact, with a dlq.header_name_replaced warning naming the position."""
    preview = asyncio.run(replay(hostile.kafka, hostile.dlt, dry_run=True))
    assert preview.replayed == [hostile.at(o) for o in (hostile.ordinary, hostile.year_zero, hostile.bad_name)]
    assert (preview.failed, preview.renamed) == ([], [(hostile.at(hostile.bad_name), 1)])

    with capture_logs() as logs:
        report = asyncio.run(replay(hostile.kafka, hostile.dlt))

    assert (len(report.replayed), report.failed, report.targets) == (3, [], {hostile.target: 3})
    assert {"event": "dlq.header_name_replaced", "position": hostile.at(hostile.bad_name), "count": 1,
            "dry_run": False, "log_level": "warning"} in logs
    records = read_committed(hostile, hostile.target, 3)
    assert [r.key() for r in records] == [b"k1", b"k2", b"k3"]
    assert ("\ufffd\ufffd", b"\x00v") in (records[2].headers() or [])
    assert records[1].timestamp()[1] > 0  # republished now, not at year 0


def test_cli_list_show_and_replay_survive_hostile_letters(hostile: Hostile) -> None:
    """`dlq list`, `dlq show` (text and --json) and `dlq replay` exit 0 on the hostile topic, naming the odd
    letters' positions instead of a traceback."""
    code, output = cli(hostile, "list", hostile.dlt)
    assert code == 0, output
    assert f"{hostile.dlt}: 3 dead letters (2024-05-01 12:01 … 2024-05-01 12:01 UTC)" in output
    assert f"    {hostile.at(hostile.year_zero)}: timestamp -62135683200000 ms is out of range" in output
    assert f"    {hostile.at(hostile.bad_name)}: 1 header name(s) not UTF-8" in output

    code, output = cli(hostile, "list", hostile.dlt, "--json")
    assert code == 0, output
    assert json.loads(output)[0]["problem_count"] == 2

    code, output = cli(hostile, "show", hostile.dlt, "--offset", str(hostile.year_zero))
    assert code == 0, output
    assert "dead-lettered timestamp -62135683200000 ms (out of range)" in output and "None" not in output

    code, output = cli(hostile, "show", hostile.dlt, "--offset", str(hostile.bad_name), "--json")
    assert code == 0, output
    assert "\ufffd\ufffd" in json.loads(output)[0]["headers"]

    code, output = cli(hostile, "replay", hostile.dlt, "--dry-run")
    assert code == 0, output
    assert f"warning {hostile.at(hostile.bad_name)}: 1 header name(s) not UTF-8, would be replayed" in output
    assert "would replay 3" in output

    code, output = cli(hostile, "replay", hostile.dlt, "--yes", "--rate", "1000/s")
    assert code == 0, output
    assert f"replayed 3 (3 to {hostile.target})" in output


def test_raw_batches_are_byte_for_byte_what_aiokafka_builds() -> None:
    """For a record aiokafka can write (ASCII names, a None value and header value), encode_batch gives
    exactly the bytes of aiokafka's own DefaultRecordBatchBuilder."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    builder.append(0, timestamp=DLT_MS, key=b"k", value=None, headers=[("ab", b"x"), ("c", None)])

    ours = encode_batch(key=b"k", value=None, headers=[(b"ab", b"x"), (b"c", None)], timestamp_ms=DLT_MS)

    assert ours == bytes(builder.build())


def test_a_raw_record_without_key_value_or_header_values_reads_back_as_none(hostile: Hostile) -> None:
    """produce_raw_record writes a None key, value and header value as null (-1 length), read back as None."""
    offset = asyncio.run(produce_raw_record(hostile.kafka, hostile.target, 0, key=None, value=None,
                                            headers=[(b"x-empty", None)], timestamp_ms=DLT_MS))

    [message] = read_committed(hostile, hostile.target, 1)

    assert (offset, message.key(), message.value(), message.headers()) == (0, None, None, [("x-empty", None)])
