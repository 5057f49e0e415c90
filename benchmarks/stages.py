"""CPU per event of the consumer's in-process stages, without Kafka or PostgreSQL (issue 14's profile).

A batch of 500 ``demo.order.created.v1`` records, encoded by eventq with a
``traceparent`` (as a traced publisher writes them), goes through each stage on its
own: envelope decode, schema validation, the header-name check, the whole decode
stage, dedupe marking, and handling with a no-op handler (context, correlation and log
contextvars, outcome, rows). Best of 40 rounds, GC off; µs per event. cProfile
inflates call-heavy code several times over, so these, not its shares, are the figures
to compare with the raw loop's µs per event.

    python benchmarks/stages.py
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

from eventq.consumers import App, ConsumerSettings, Context  # noqa: E402
from eventq.consumers.decode import decode_items  # noqa: E402
from eventq.consumers.dedupe import identities, mark_duplicates  # noqa: E402
from eventq.consumers.handle import Handle  # noqa: E402
from eventq.consumers.health import Status  # noqa: E402
from eventq.consumers.outcome import Item, Slice  # noqa: E402
from eventq.kafkarecords import undecodable_names  # noqa: E402
from eventq.schemas.envelope import DEFAULT_MAX_EVENT_BYTES, Event, decode, encode  # noqa: E402
from eventq.schemas.registry import SchemaRegistry  # noqa: E402
from eventq_dev.demo import SCHEMAS  # noqa: E402
from tests.unit.fakes import Record  # noqa: E402

N = 500
ROUNDS = 40
MAX = DEFAULT_MAX_EVENT_BYTES


def records() -> list[Record]:
    tracer = TracerProvider().get_tracer("bench")
    out = []
    for i in range(N):
        with tracer.start_as_current_span("create"):
            data = {"order_id": f"o-{i}", "customer_id": f"c{i % 50}", "amount_cents": 1250, "currency": "EUR"}
            encoded = encode(Event(type="demo.order.created.v1", source="orders", key=f"c{i % 50}", data=data))
        out.append(Record("t", 0, i, encoded.timestamp_ms, encoded.key, encoded.value, encoded.headers))
    return out


def best(step: Callable[[], float]) -> float:
    """µs per event of the fastest of ROUNDS runs of ``step`` (which returns its own seconds)."""
    return min(step() for _ in range(ROUNDS)) / N * 1e6


def timed(work: Callable[[], Any]) -> Callable[[], float]:
    def step() -> float:
        started = time.perf_counter()
        work()
        return time.perf_counter() - started
    return step


def main() -> None:
    registry = SchemaRegistry.load(SCHEMAS)
    app = App("bench", topics=["t"], schemas=SCHEMAS)

    @app.handler("demo.order.created.v1")
    async def handle(event: Event, ctx: Context) -> None:
        pass

    batch = records()
    stage = Handle(
        app=app, settings=ConsumerSettings(), group="g", producer=None, pool=None,  # type: ignore[arg-type]
        status=Status(),
    )
    events = [decode(r.key, r.value, r.headers, max_event_bytes=MAX, timestamp_ms=r.timestamp) for r in batch]

    def fresh() -> list[Item]:
        return decode_items(batch, app, registry, MAX)

    def marking() -> float:
        items = fresh()
        started = time.perf_counter()
        mark_duplicates(items, {}, {})
        identities(items)
        return time.perf_counter() - started

    def handling() -> float:
        items = fresh()
        started = time.perf_counter()
        loop.run_until_complete(stage.run(items))
        _ = Slice("t", 0, items).rows
        return time.perf_counter() - started

    loop = asyncio.new_event_loop()
    gc.disable()
    figures = {
        "envelope decode": best(timed(lambda: [
            decode(r.key, r.value, r.headers, max_event_bytes=MAX, timestamp_ms=r.timestamp) for r in batch
        ])),
        "schema validation": best(timed(lambda: [registry.validate(e.type, e.data) for e in events])),
        "header-name check": best(timed(lambda: [undecodable_names(r.headers) for r in batch])),
        "decode stage (all of it)": best(timed(fresh)),
        "dedupe marking": best(marking),
        "handle stage + rows": best(handling),
    }
    loop.close()
    print(f"consumer stages, CPU µs per event (batch of {N}, best of {ROUNDS}, GC off):")
    for name, us in figures.items():
        print(f"  {name:<26} {us:>6.2f}")


if __name__ == "__main__":
    main()
