"""Transactional outbox with a SQLAlchemy 2 ``Session``: the order and its event commit together, or neither does.

The same as ``outbox_psycopg.py`` for an app that uses the ORM: one
``session.begin()`` block adds the ``Order`` and a ``demo.order.created.v1`` event to
``eventq_outbox``; a relay (``eventq outbox relay``) publishes the event once the
transaction has committed, and never if it rolled back. Any SQLAlchemy driver for
PostgreSQL works; this one uses psycopg 3 (``postgresql+psycopg://``).

Run it against the dev stack (``make up``; the database needs ``eventq db migrate``)::

    python examples/outbox_sqlalchemy.py
    eventq outbox relay   # publishes the event, then keeps running
"""

from __future__ import annotations

import os
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import DateTime, Engine, create_engine, func, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from eventq.database import DEFAULT_DATABASE_URL
from eventq.outbox import INSERT_SQL_NAMED, Outbox
from eventq.producers import ProducerSettings
from eventq.schemas import Event
from eventq_dev.demo import SCHEMAS

TOPIC = "demo.orders"


class Base(DeclarativeBase):
    pass


class Order(Base):
    """The app's own table (the same one ``outbox_psycopg.py`` writes)."""

    __tablename__ = "shop_orders"

    order_id: Mapped[str] = mapped_column(primary_key=True)
    customer_id: Mapped[str]
    amount_cents: Mapped[int]
    currency: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


# Built once per process: the outbox loads and compiles the JSON Schemas and holds no connection.
outbox = Outbox(ProducerSettings(schemas=SCHEMAS))
ADD_TO_OUTBOX = text(INSERT_SQL_NAMED)


def engine_for(url: str) -> Engine:
    """An engine on psycopg 3 for a ``postgresql://`` URL (such as ``EVENTQ_DATABASE_URL``)."""
    return create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


@dataclass(frozen=True)
class NewOrder:
    """What the client asked for (in a web app: the validated request body)."""

    order_id: str
    customer_id: str
    amount_cents: int
    currency: str


def add_order(session: Session, order: NewOrder, *, topic: str = TOPIC) -> Event:
    """Add the order and its event in the transaction ``session`` is in; return the event.

    Raises SchemaViolation (from ``outbox.row``) when the event does not match its
    schema; the caller's transaction then rolls back, order included.
    """
    session.add(Order(**asdict(order)))
    # The order's INSERT runs now, so a duplicate order id fails before the event is made.
    session.flush()
    event = Event(
        type="demo.order.created.v1",
        source="shop",
        key=order.customer_id,  # one customer's events reach consumers in the order they committed
        data=asdict(order),
    )
    # row() validates and encodes: an invalid event raises here, before the outbox INSERT runs.
    session.execute(ADD_TO_OUTBOX, outbox.row(event, topic=topic).params())
    return event


def place_order(engine: Engine, order: NewOrder, *, topic: str = TOPIC) -> Event:
    """Place an order in one transaction: committed on return, rolled back if anything raises."""
    with Session(engine) as session, session.begin():
        return add_order(session, order, topic=topic)


def main() -> None:
    engine = engine_for(os.environ.get("EVENTQ_DATABASE_URL", DEFAULT_DATABASE_URL))
    try:
        Base.metadata.create_all(engine)
        event = place_order(engine, NewOrder(f"o-{uuid.uuid4().hex[:8]}", "c-42", 1999, "EUR"))
    finally:
        engine.dispose()
    print(f"order {event.data['order_id']} placed; event {event.id} waits in the outbox for the relay")


if __name__ == "__main__":
    main()
