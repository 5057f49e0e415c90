"""Transactional outbox with psycopg 3 (sync): the order and its event commit together, or neither does.

The body of a view in a synchronous app (Flask, Django, a script): one transaction
inserts the order into the app's own table and adds a ``demo.order.created.v1`` event
to ``eventq_outbox``. Nothing talks to Kafka here; a relay (``eventq outbox relay``)
publishes the event once the transaction has committed, and never if it rolled back.

Run it against the dev stack (``make up``; the database needs ``eventq db migrate``)::

    python examples/outbox_psycopg.py
    eventq outbox relay   # publishes the event, then keeps running
"""

from __future__ import annotations

import os
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from eventq.database import DEFAULT_DATABASE_URL
from eventq.outbox import INSERT_SQL, Outbox
from eventq.producers import ProducerSettings
from eventq.schemas import Event
from eventq_dev.demo import SCHEMAS

TOPIC = "demo.orders"

# The app's own table; in a real service it comes from the app's migrations.
ORDERS_DDL = """
CREATE TABLE IF NOT EXISTS shop_orders (
    order_id     text        PRIMARY KEY,
    customer_id  text        NOT NULL,
    amount_cents bigint      NOT NULL,
    currency     text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
)
"""

# Built once per process: it loads and compiles the JSON Schemas. It holds no connection.
outbox = Outbox(ProducerSettings(schemas=SCHEMAS))


@dataclass(frozen=True)
class NewOrder:
    """What the client asked for (in a web app: the validated request body)."""

    order_id: str
    customer_id: str
    amount_cents: int
    currency: str


def add_order(conn: psycopg.Connection[Any], order: NewOrder, *, topic: str = TOPIC) -> Event:
    """Insert the order and add its event, in the transaction open on ``conn``; return the event.

    Raises SchemaViolation (from ``outbox.row``) when the event does not match its
    schema; the caller's transaction then rolls back, order row included.
    """
    fields = asdict(order)
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO shop_orders (order_id, customer_id, amount_cents, currency) "
            "VALUES (%(order_id)s, %(customer_id)s, %(amount_cents)s, %(currency)s)",
            fields,
        )
        event = Event(
            type="demo.order.created.v1",
            source="shop",
            key=order.customer_id,  # one customer's events reach consumers in the order they committed
            data=fields,
        )
        # row() validates and encodes: an invalid event raises here, before the outbox INSERT runs.
        cur.execute(INSERT_SQL, outbox.row(event, topic=topic).params())
    return event


def place_order(conn_or_url: psycopg.Connection[Any] | str, order: NewOrder, *, topic: str = TOPIC) -> Event:
    """Place an order in one transaction: committed on return, rolled back if anything raises.

    ``conn_or_url`` is a psycopg connection or a ``postgresql://`` URL to connect to. On
    a connection already in a transaction this is a savepoint, and the caller commits.
    """
    if isinstance(conn_or_url, str):
        with psycopg.connect(conn_or_url) as conn:
            return place_order(conn, order, topic=topic)
    with conn_or_url.transaction():
        return add_order(conn_or_url, order, topic=topic)


def main() -> None:
    url = os.environ.get("EVENTQ_DATABASE_URL", DEFAULT_DATABASE_URL)
    with psycopg.connect(url) as conn:
        conn.execute(ORDERS_DDL)
        conn.commit()
        event = place_order(conn, NewOrder(f"o-{uuid.uuid4().hex[:8]}", "c-42", 1999, "EUR"))
    print(f"order {event.data['order_id']} placed; event {event.id} waits in the outbox for the relay")


if __name__ == "__main__":
    main()
