"""FastStream peer for the consumer benchmark: a batch subscriber with a hand-written dedupe.

Run by ``benchmarks/consumer.py`` as its ``faststream`` scenario (same topic, same
partitions, same N events, a fresh group, its own subprocess), so its figures sit next
to eventq's and the raw aiokafka loop's from the same run.

What it does, per batch:

- a FastStream ``KafkaBroker`` subscriber with ``batch=True, max_records=500``
  (the daemon's default batch size) and ``AckPolicy.ACK``: the offsets are committed
  after the handler returns, one ``commit()`` per batch;
- FastStream decodes each record's value as JSON and validates it into a pydantic
  model equal to ``demo.order.created.v1``'s JSON Schema (required fields, ``minimum``,
  the currency pattern, optional items, no extra properties);
- the event ids come from the ``ce_id`` headers; one ``SELECT event_id … = ANY($2)``
  over the batch finds those already processed by the group, the no-op "handler" runs
  for the others, and one ``INSERT … SELECT unnest(…) ON CONFLICT DO NOTHING`` records
  them in :data:`TABLE`, shaped like eventq's ``processed_events`` (same columns,
  key ``(event_id, consumer_group)``, BRIN index on ``processed_at``) under its own
  name, so it never touches eventq's table.

What it does not do, which eventq does (so the ratio is an upper bound on what eventq's
extra guarantees cost, not a like-for-like of features):

- no CloudEvents envelope: the other ``ce_*`` headers are not read or checked (type,
  source, time, spec version), no ``Event`` object, no routing by event type;
- no retries, back-off or dead letters: a failing batch is redelivered whole forever;
  an invalid body fails the batch;
- no per-event outcome (``handled`` / ``dead_lettered``), no upsert of a dead letter
  replayed later, no (source, id) identity: the id alone is the key;
- no handler context, correlation, tracing, metrics or logs (FastStream's own per
  message log lines are turned off with ``logger=None``; eventq logs per batch only);
- no ordering guarantee beyond the batch (the batch is handled as a whole); no
  graceful rebalance handling (records in flight when partitions are revoked are
  redelivered to the next owner);
- ``read_uncommitted`` (FastStream's default, as in the raw loop); the eventq daemon
  reads ``read_committed``.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Annotated, Any

import asyncpg
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from typing import Protocol

    class Clock(Protocol):
        def tick(self) -> None: ...

TABLE = "faststream_processed_events"
MAX_RECORDS = 500
DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    consumer_group text        NOT NULL,
    event_id       uuid        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    "offset"       bigint      NOT NULL,
    outcome        text        NOT NULL,
    processed_at   timestamptz NOT NULL DEFAULT now(),
    source         text        NOT NULL DEFAULT '',
    PRIMARY KEY (event_id, consumer_group)
);
CREATE INDEX IF NOT EXISTS {TABLE}_processed_at ON {TABLE} USING brin (processed_at);
"""
SELECT_DONE = f"SELECT event_id::text FROM {TABLE} WHERE consumer_group = $1 AND event_id = ANY($2::uuid[])"
INSERT_DONE = (
    f'INSERT INTO {TABLE} (consumer_group, event_id, topic, partition, "offset", outcome) '
    "SELECT $1, e, t, p, o, 'handled' FROM unnest($2::uuid[], $3::text[], $4::int[], $5::bigint[]) AS r(e, t, p, o) "
    "ON CONFLICT DO NOTHING"
)


class Item(BaseModel):
    model_config = ConfigDict(extra="allow")

    sku: str
    quantity: Annotated[int, Field(ge=1)]


class OrderCreated(BaseModel):
    """``demo.order.created.v1`` (eventq_dev/demo/schemas) as a pydantic model."""

    model_config = ConfigDict(extra="forbid")

    order_id: Annotated[str, Field(min_length=1)]
    customer_id: Annotated[str, Field(min_length=1)]
    amount_cents: Annotated[int, Field(ge=0)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    items: list[Item] | None = None


async def create_table(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(DDL)
    finally:
        await conn.close()


async def delete_rows(database_url: str, group_like: str) -> None:
    """Remove the rows of groups matching ``group_like`` (a database given to the benchmark is not dropped)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"DELETE FROM {TABLE} WHERE consumer_group LIKE $1", group_like)
    except asyncpg.UndefinedTableError:
        pass
    finally:
        await conn.close()


async def run_faststream(args: argparse.Namespace, group: str, clock: Clock) -> int:
    """Consume ``args.events`` events of ``args.topic`` with group ``group``; the number handled.

    ``clock`` ticks when each batch reaches the handler and once more when the last
    batch's offsets are committed (as the raw loop's does).
    """
    await create_table(args.database_url)
    pool = await asyncpg.create_pool(args.database_url, min_size=2, max_size=4)
    broker = KafkaBroker(args.bootstrap_servers, client_id="eventq-bench", logger=None)
    done = asyncio.Event()
    handled = 0
    last: list[KafkaMessage] = []

    @broker.subscriber(
        args.topic, group_id=group, batch=True, max_records=MAX_RECORDS, ack_policy=AckPolicy.ACK,
        auto_offset_reset="earliest",
    )
    async def handle(orders: list[OrderCreated], msg: KafkaMessage) -> None:
        nonlocal handled
        clock.tick()
        records: Any = msg.raw_message  # tuple[ConsumerRecord, ...]
        ids = [headers["ce_id"] for headers in msg.batch_headers]
        async with pool.acquire() as conn:
            seen = {row[0] for row in await conn.fetch(SELECT_DONE, group, ids)}
            fresh = [i for i, event_id in enumerate(ids) if event_id not in seen]  # the no-op handler's events
            if fresh:
                await conn.execute(
                    INSERT_DONE, group, [ids[i] for i in fresh], [records[i].topic for i in fresh],
                    [records[i].partition for i in fresh], [records[i].offset for i in fresh],
                )
        handled += len(orders)
        if handled >= args.events:
            last.append(msg)
            done.set()

    await broker.start()
    try:
        await done.wait()
        while last[0].committed is None:  # AckPolicy.ACK commits after the handler has returned
            await asyncio.sleep(0.001)
        clock.tick()
        return handled
    finally:
        await broker.stop()
        await pool.close()
