"""The README's demo command, end to end on the real broker and database."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import pytest

from eventq.config import KafkaSettings

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


async def test_the_demo_publishes_consumes_and_dead_letters_the_declined_order(
    kafka_settings: KafkaSettings, database: str
) -> None:
    """`eventq demo` dead-letters the declined order, replays it after the fix, and ends with one handled row each."""
    topic = f"test.demo.{uuid.uuid4().hex[:8]}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "eventq.cli", "--log-json", "demo", "--topic", topic, "--events", "60",
        "--bootstrap-servers", kafka_settings.bootstrap_servers, "--database-url", database,
        env=dict(os.environ), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()

    assert proc.returncode == 0, err.decode()[-3000:]
    assert f"dead letter  {topic}.dlt" in text
    assert "eventq-dlt-reason         exhausted" in text
    assert "replay       replayed 1 (1 to " in text
    assert "consume      charged 1 more order(s) after the replay" in text
    assert "recorded     62/62 events in processed_events (62 handled, 0 dead-lettered)" in text
    assert "per-key order kept for 49 customers (first pass): yes" in text  # customer-13's only order was declined
    # the declined order's one trace: failed handling, dead letter, replay, handling, follow-up
    trace = text[text.index("trace        of order-13"):]
    for span in ("handle demo.order.created.v1", "outcome=dead_lettered", f"send {topic}.dlt",
                 "outcome=handled", "handle demo.order.paid.v1", f"replay {topic}.dlt"):
        assert span in trace, span
    assert trace.count("\ntrace ") == 1  # one trace for the whole journey (the replay run is a linked span)
