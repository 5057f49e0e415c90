"""`eventq topics create` and `eventq publish` against the real broker."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from click.testing import CliRunner

from eventq.cli import main
from eventq.config import KafkaSettings
from eventq.schemas import decode
from eventq_dev.demo import SCHEMAS as DEMO_SCHEMAS
from tests.conftest import Reader

pytestmark = pytest.mark.kafka


def cli(kafka: KafkaSettings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env={"EVENTQ_BOOTSTRAP_SERVERS": kafka.bootstrap_servers})
    return result.exit_code, result.output


async def acli(kafka: KafkaSettings, *args: str) -> tuple[int, str]:
    # The CLI runs its own event loop (asyncio.run), so it cannot share the test's.
    return await asyncio.to_thread(cli, kafka, *args)


async def test_publish_prints_where_the_event_landed(kafka_settings: KafkaSettings, read_topic: Reader) -> None:
    """topics create then publish: the printed id, partition and offset are those of the stored record."""
    topic = f"test.cli.{uuid.uuid4().hex[:8]}"
    code, output = await acli(kafka_settings, "topics", "create", topic, "--partitions", "2")
    assert (code, f"{topic}: created") == (0, output.strip().splitlines()[-1])
    code, output = await acli(kafka_settings, "topics", "create", topic)
    assert (code, f"{topic}: exists") == (0, output.strip().splitlines()[-1])

    code, output = await acli(
        kafka_settings, "publish", "-t", topic, "--type", "demo.order.paid.v1", "-k", "o-9",
        *(f"--schemas={s}" for s in DEMO_SCHEMAS),
        "-d", '{"order_id": "o-9", "amount_cents": 700}', "--correlation-id", "flow-9",
    )
    assert code == 0, output
    [line] = [line for line in output.splitlines() if line.startswith("published ")]
    words = line.split()
    event_id, partition, offset = words[1], int(words[words.index("partition") + 1]), int(words[-1])

    [record] = await read_topic(topic, expected=1)
    event = decode(record.key, record.value, record.headers)
    assert (event.id, record.partition, record.offset) == (event_id, partition, offset)
    assert (event.key, event.correlation_id, event.data["amount_cents"]) == ("o-9", "flow-9", 700)


def test_publish_to_missing_topic_says_to_create_it(kafka_settings: KafkaSettings) -> None:
    """Publishing to a topic that does not exist exits 1 with the README's message."""
    code, output = cli(kafka_settings, "publish", "-t", "nope", "--type", "eventq.ping.v1")
    assert code == 1
    assert "Error: publish to topic 'nope' failed: the topic does not exist; create it first" in output
