"""The README's consumer example: an App that charges orders (``eventq consume billing:app`` from examples/)."""

from __future__ import annotations

from eventq import App, BatchContext, Context, Event, Reject, RetryLater
from eventq_dev.demo import SCHEMAS  # the demo's order types; a service lists its own schema package


class PaymentGateway:
    """Stands in for a payment provider's client: not ready for ``warming_up`` calls, then charging."""

    def __init__(self) -> None:
        self.warming_up = 0
        self.charged: list[str] = []

    async def ready(self) -> bool:
        if self.warming_up:
            self.warming_up -= 1
            return False
        return True

    async def charge(self, order_id: str) -> None:
        self.charged.append(order_id)


payments = PaymentGateway()
PAID = "payments"  # the topic of demo.order.paid.v1
app = App("billing", topics=["orders"], schemas=SCHEMAS)  # the name is the consumer group


@app.handler("demo.order.created.v1")
async def charge(event: Event, ctx: Context) -> None:
    if event.data["currency"] not in ("EUR", "USD"):
        raise Reject(f"cannot charge in {event.data['currency']}")  # dead-letter now, no retries
    if not await payments.ready():
        raise RetryLater(2, "payments warming up")  # try again in 2 s (counts as an attempt)
    await payments.charge(event.data["order_id"])  # any other exception: retried with back-off
    await ctx.publish(Event(type="demo.order.paid.v1", source="billing", key=event.key,
                            data={"order_id": event.data["order_id"], "amount_cents": event.data["amount_cents"]}),
                      topic=PAID)
    ctx.log.info("billing.charged")  # bound to event id, type, correlation, topic, offset


LEDGER = "CREATE TABLE IF NOT EXISTS ledger (order_id text PRIMARY KEY, amount_cents bigint NOT NULL)"


@app.handler("ledger.entry.v1", transactional=True,
             schema={"type": "object", "required": ["order_id", "amount_cents"]})
async def book(event: Event, ctx: Context) -> None:
    await ctx.db.execute("INSERT INTO ledger VALUES ($1, $2)",  # same transaction as the processed_events row
                         event.data["order_id"], event.data["amount_cents"])


@app.batch_handler("metrics.sample.v1", schema=None)
async def store_samples(events: list[Event], ctx: BatchContext) -> dict[str, BaseException] | None:
    bad: dict[str, BaseException] = {e.id: ValueError("no value") for e in events if "value" not in e.data}
    return bad or None  # None = all done, or {event_id: error} for the failed ones
