"""A consumer daemon whose transactional handler dies (os._exit, like kill -9) before its transaction commits.

Usage: python -m tests.integration.outbox_crash_worker TOPIC FOLLOW_UP_TOPIC GROUP DATABASE_URL

The handler writes a ``payments`` row and publishes a ``demo.order.paid.v1`` follow-up
(both in its transaction), then kills the process on the event whose order is ``o-3``:
after the handler's work, before its commit.
"""

from __future__ import annotations

import asyncio
import os
import sys

from eventq.config import KafkaSettings
from eventq.consumers import App, Consumer, Context
from eventq.schemas import Event
from tests.integration.consumer_kit import consumer_settings


def paying_app(group: str, topic: str, follow_up_topic: str, *, crash_on: str | None) -> App:
    """The app under test: pay each order in the handler's transaction, announce it through ctx.publish."""
    app = App(group, topics=[topic])

    @app.handler("demo.order.created.v1", transactional=True)
    async def pay(event: Event, ctx: Context) -> None:
        await ctx.db.execute("INSERT INTO payments VALUES ($1)", event.data["order_id"])
        await ctx.publish(
            Event(type="demo.order.paid.v1", source="tests", key=event.key,
                  data={"order_id": event.data["order_id"], "amount_cents": event.data["amount_cents"]}),
            topic=follow_up_topic,
        )
        if event.data["order_id"] == crash_on:
            os._exit(137)

    return app


def main() -> None:
    topic, follow_up_topic, group, database = sys.argv[1:5]
    app = paying_app(group, topic, follow_up_topic, crash_on="o-3")
    kafka = KafkaSettings(bootstrap_servers=os.environ["EVENTQ_BOOTSTRAP_SERVERS"])
    asyncio.run(Consumer(app, consumer_settings(kafka, database, topic, group_id=group)).run(until_idle=True))
    sys.exit(3)  # reaching here means the crash never happened


if __name__ == "__main__":
    main()
