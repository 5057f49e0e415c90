"""Writing rows after handlers ran: failures are retried in place, never turned into re-runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from eventq.consumers.health import Status
from eventq.consumers.record import Recorder
from eventq.consumers.store import Processed

if TYPE_CHECKING:
    from aiokafka import TopicPartition


class FlakyPool:
    """A pool whose INSERTs fail ``failures`` times with a non-outage error, then succeed."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.statements: list[tuple[Any, ...]] = []

    async def execute(self, query: str, *args: Any) -> str:
        if self.failures:
            self.failures -= 1
            raise asyncpg.exceptions.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction")
        self.statements.append(args)
        return "INSERT 0 1"

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        return []


async def test_a_failing_insert_is_retried_until_written_and_logged_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three failed INSERTs (a read-only failover) delay record() but end in the rows written; one error line."""
    monkeypatch.setattr(Recorder, "_RETRY_DELAYS", (0.0,))
    pool = FlakyPool(failures=3)
    recorder = Recorder(pool, "billing", Status())
    rows = [Processed("01a22466-9070-7613-a3ca-3f1f10abf22c", "orders", 0, 7)]

    with capture_logs() as logs:
        await recorder.record(rows)

    assert len(pool.statements) == 1 and "01a22466-9070-7613-a3ca-3f1f10abf22c" in pool.statements[0][1]
    assert [entry["event"] for entry in logs].count("consumer.record_failed") == 1
    assert "consumer.record_recovered" in [entry["event"] for entry in logs]


class FlakyConsumer:
    """A consumer whose first ``failures`` commits fail as if the broker were away."""

    def __init__(self, failures: int, partitions: set[TopicPartition]) -> None:
        self.failures = failures
        self.partitions = partitions
        self.commits: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return self.partitions

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.failures:
            self.failures -= 1
            from aiokafka import errors as ke

            raise ke.KafkaConnectionError("broker away")
        self.commits.append(dict(offsets))


async def test_the_commit_that_succeeds_links_the_slices_it_commits(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a failed commit is retried, the successful commit span still links both slices it covers."""
    from aiokafka import TopicPartition
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from eventq.consumers import health
    from eventq.consumers.commit import Committer
    from eventq.consumers.instruments import Traced
    from eventq.telemetry.tracing import Tracing

    monkeypatch.setattr(health, "_OUTAGE_BACKOFF", (0.0,))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    first, second = tracer.start_span("process a"), tracer.start_span("process b")
    tp = TopicPartition("orders", 0)
    consumer = FlakyConsumer(failures=1, partitions={tp})
    committer = Committer(consumer, Status(), Traced(Tracing(provider), "g"))
    committer.offer(tp, 10, first.get_span_context())
    committer.offer(tp, 20, second.get_span_context())

    with capture_logs():
        await committer.commit_now()
        committer.offer(tp, 30, None)
        await committer.commit_now()

    commits = [s for s in exporter.get_finished_spans() if s.name == "commit"]
    assert consumer.commits == [{tp: 20}, {tp: 30}]
    # the failed try and its retry have spans; the third commit covers no traced slice, so has none
    assert [s.status.is_ok for s in commits] == [False, True]
    wanted = {first.get_span_context().span_id, second.get_span_context().span_id}
    assert {link.context.span_id for link in commits[0].links} == wanted
    assert {link.context.span_id for link in commits[1].links} == wanted
    assert committer.committed == {tp: 30}
