"""The test kit's speed: a one-event handler test, and events per second through a kit (no broker, no database).

    python benchmarks/testkit.py [--events N] [--repeat R]

Three ways to run a no-op handler of ``demo.order.created.v1``, measured in the same run:

- ``call``: ``await handler(event, ctx)`` directly, the floor (no validation, no outcome);
- ``faststream``: FastStream's ``TestKafkaBroker`` publishing a dict to a subscriber
  (the peer users compare with; it validates the body with pydantic, no outcome record);
- ``eventq``: ``TestKit``: feed, ``run_until_idle``, read the outcome (decode, schema
  validation, dedupe, the attempt loop, rows, all of the daemon's middle).

"one test" is the wall time of a whole test body (kit or broker set up, one event,
torn down), median of R; "per event" is N events through one kit or broker.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from typing import Any

import structlog
from faststream.kafka import KafkaBroker, TestKafkaBroker

from eventq import App, Context, Event
from eventq.testing import TestKit
from eventq_dev.demo import SCHEMAS

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def order(n: int) -> Event:
    return Event(type="demo.order.created.v1", source="bench", key=f"k{n % 10}",
                 data={"order_id": f"o-{n}", "customer_id": "c", "amount_cents": n, "currency": "EUR"})


app = App("bench-kit", topics=["orders"], schemas=SCHEMAS)


@app.handler("demo.order.created.v1")
async def noop(event: Event, ctx: Context) -> None:
    pass


broker = KafkaBroker(logger=None)


@broker.subscriber("orders")
async def fs_noop(body: dict[str, Any]) -> None:
    pass


async def kit_run(events: list[Event]) -> None:
    async with TestKit(app) as kit:
        kit.feed(*events)
        await kit.run_until_idle()
        assert len(kit.rows) == len(events)


async def faststream_run(events: list[Event]) -> None:
    async with TestKafkaBroker(broker) as br:
        for event in events:
            await br.publish(event.data, topic="orders")


async def call_run(events: list[Event]) -> None:
    for event in events:
        await noop(event, None)  # (a no-op handler reads no context)


async def timed(run: Any, events: list[Event]) -> float:
    started = time.perf_counter()
    await run(events)
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    args, _ = parser.parse_known_args()
    ways = {"call": call_run, "faststream": faststream_run, "eventq": kit_run}
    one = {name: statistics.median([await timed(run, [order(0)]) for _ in range(args.repeat)])
           for name, run in ways.items()}
    many = [order(n) for n in range(args.events)]
    per = {name: await timed(run, many) / args.events for name, run in ways.items()}
    print(f"{'':12}{'one test':>12}{'per event':>12}   (N={args.events}, median of {args.repeat} one-event tests)")
    for name in ways:
        print(f"{name:12}{one[name] * 1e3:>9.2f} ms{per[name] * 1e6:>9.1f} us")
    print(f"eventq / faststream: one test {one['eventq'] / one['faststream']:.2f}x, "
          f"per event {per['eventq'] / per['faststream']:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
