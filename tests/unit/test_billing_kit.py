"""The README's handler tests: the billing example (examples/billing.py) under eventq.testing, in milliseconds."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from eventq import Event
from eventq.testing import TestKit

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from billing import app, payments  # noqa: E402


def order(currency: str = "EUR") -> Event:
    return Event(type="demo.order.created.v1", source="tests", key="customer-7",
                 data={"order_id": "o-1", "customer_id": "c-7", "amount_cents": 1250, "currency": currency})


async def test_an_order_is_charged_and_paid(eventq_kit: Callable[..., TestKit]) -> None:
    """A charged order gets a handled row and one demo.order.paid.v1 follow-up caused by it."""
    placed = order()
    async with eventq_kit(app, topics=["payments"]) as kit:
        kit.feed(placed)
        await kit.run_until_idle()
    assert kit.outcome(placed).status == "handled"
    [paid] = kit.follow_ups(placed)
    assert paid.type == "demo.order.paid.v1" and paid.correlation_id == placed.id
    assert [row.outcome for row in kit.rows] == ["handled"]


async def test_a_warming_gateway_retries_later(eventq_kit: Callable[..., TestKit]) -> None:
    """RetryLater(2) is a second attempt 2 s later (not waited for in the kit)."""
    payments.warming_up = 1
    placed = order()
    async with eventq_kit(app, topics=["payments"]) as kit:
        kit.feed(placed)
        await kit.run_until_idle()
    result = kit.outcome(placed)
    assert (result.status, result.attempts, result.delays) == ("handled", 2, (2.0,))


async def test_an_unknown_currency_is_dead_lettered(eventq_kit: Callable[..., TestKit]) -> None:
    """Reject dead-letters at once: the letter says rejected, by which handler, and keeps the record."""
    placed = order(currency="GBP")
    async with eventq_kit(app, topics=["payments"]) as kit:
        [record] = kit.feed(placed)
        await kit.run_until_idle()
    [letter] = kit.dead_letters
    assert (letter.reason, letter.attempts, letter.handler) == ("rejected", 1, "billing.charge")
    assert letter.value == record.value and kit.follow_ups(placed) == []
