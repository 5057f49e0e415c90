"""Test an App's handlers in milliseconds, without Kafka (and, unless asked, without PostgreSQL).

::

    from eventq.testing import TestKit

    async def test_charges_the_order():
        async with TestKit(app) as kit:
            order = Event(type="demo.order.created.v1", source="tests", data={...})
            kit.feed(order)
            await kit.run_until_idle()
            assert kit.outcome(order).status == "handled"

The kit runs the daemon's own decode, dedupe and handle stages and derives rows, dead
letters and retry records as the daemon does (:mod:`eventq.testing.kit`); Kafka is a
set of topics in memory (:mod:`eventq.testing.broker`) and PostgreSQL either a dict or
a real database (:mod:`eventq.testing.rows`). The pytest plugin
(:mod:`eventq.testing.pytest_plugin`, loaded automatically) gives the ``eventq_kit``
fixture and the ``--eventq-database-url`` option.
"""

from eventq.testing.broker import Record
from eventq.testing.kit import DatabaseRequired, FollowUp, NotIdle, Outcome, TestKit

__all__ = ["DatabaseRequired", "FollowUp", "NotIdle", "Outcome", "Record", "TestKit"]
