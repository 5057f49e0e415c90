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

from eventq.config import KafkaSettings
from eventq.consumers import App, Consumer, Context
from eventq.schemas import Event
from tests.crashpoints import CrashAt
from tests.integration.consumer_kit import consumer_settings


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
    asyncio.run(Consumer(app, settings, instruments=CrashAt(point)).run(until_idle=True))
    sys.exit(3)  # reaching here means the crash point was never hit


if __name__ == "__main__":
    main()
