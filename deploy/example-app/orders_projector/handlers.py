"""The example app's handlers: ``eventq consume orders_projector.handlers:app``."""

from __future__ import annotations

from eventq import App, Context, Event

app = App("orders-projector", topics=["orders"], schemas=["orders_projector.schemas"])


@app.handler("order.created.v1")
async def project(event: Event, ctx: Context) -> None:
    """Project a placed order (here: a log line; a real projector writes a read model)."""
    ctx.log.info("orders.projected", order_id=event.data["order_id"], amount_cents=event.data["amount_cents"])
