"""An app for `eventq consume tests.integration.sample_app:app` in CLI tests.

Its handler sleeps ``SAMPLE_HANDLER_SLEEP_S`` (default 0) per event.
"""

from __future__ import annotations

import asyncio
import os

from eventq.consumers import App, Context
from eventq.schemas import Event
from eventq_dev.demo import SCHEMAS as DEMO_SCHEMAS

app = App("sample", schemas=DEMO_SCHEMAS)


@app.handler("demo.order.created.v1")
async def on_created(event: Event, ctx: Context) -> None:
    await asyncio.sleep(float(os.environ.get("SAMPLE_HANDLER_SLEEP_S", "0")))
