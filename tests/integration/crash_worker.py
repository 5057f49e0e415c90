"""A consumer daemon process that dies (os._exit, like kill -9) at a chosen point.

Usage: python -m tests.integration.crash_worker TOPIC GROUP DATABASE_URL POINT
POINT is in_handler, after_handlers, after_record or before_commit; the first slice
that reaches it kills the process. Every handler call first appends the event id to
the ``side_effects`` table (autocommitted), so tests can count handler runs.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from typing import Any

from eventq.config import KafkaSettings
from eventq.consumers import App, Consumer, Context, Hooks
from eventq.schemas import Event
from tests.integration.consumer_kit import consumer_settings


class Crash(Hooks):
    def __init__(self, point: str) -> None:
        self.point = point

    def _maybe(self, point: str) -> None:
        if point == self.point:
            os._exit(137)

    async def after_handlers(self, topic: str, partition: int, result: Any) -> None:
        self._maybe("after_handlers")

    async def after_record(self, topic: str, partition: int, result: Any) -> None:
        self._maybe("after_record")

    async def before_commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self._maybe("before_commit")


def main() -> None:
    topic, group, database, point = sys.argv[1:5]
    app = App(group, topics=[topic])

    @app.handler("demo.order.created.v1")
    async def handle(event: Event, ctx: Context) -> None:
        await ctx.db.execute("INSERT INTO side_effects VALUES ($1)", event.id)
        if point == "in_handler" and ctx.offset >= 3:
            os._exit(137)

    kafka = KafkaSettings(bootstrap_servers=os.environ["EVENTQ_BOOTSTRAP_SERVERS"])
    settings = consumer_settings(kafka, database, topic, group_id=group)
    asyncio.run(Consumer(app, settings, hooks=Crash(point)).run(until_idle=True))
    sys.exit(3)  # reaching here means the crash point was never hit


if __name__ == "__main__":
    main()
