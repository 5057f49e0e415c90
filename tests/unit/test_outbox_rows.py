"""The outbox as pure logic: rows and their statements (encoding, shares, key locks, what is refused), relay health."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from eventq.errors import InvalidEvent, SchemaViolation
from eventq.outbox import INSERT_SQL, INSERT_SQL_NAMED, Outbox, OutboxRow
from eventq.outbox.relay import RelayStatus
from eventq.outbox.rows import ASYNCPG_INSERT_MANY, ASYNCPG_INSERT_ONE, SHARES, key_lock, many_args
from eventq.producers import ProducerSettings
from eventq.schemas import Event
from eventq_dev.demo import SCHEMAS as DEMO_SCHEMAS

OUTBOX = Outbox(ProducerSettings(schemas=DEMO_SCHEMAS))


def order(n: int, key: str | None = "c", **kwargs: Any) -> Event:
    return Event(type="demo.order.created.v1", source="tests", key=key,
                 data={"order_id": f"o-{n}", "customer_id": "c", "amount_cents": n, "currency": "EUR"}, **kwargs)


def test_every_statement_names_exactly_the_rows_fields() -> None:
    """The psycopg, SQLAlchemy and asyncpg statements take one parameter per OutboxRow field, nothing else."""
    fields = set(OutboxRow._fields)
    assert set(re.findall(r"%\((\w+)\)s", INSERT_SQL)) == fields
    assert set(re.findall(r"(?<!:):(\w+)", INSERT_SQL_NAMED)) == fields
    assert {int(n) for n in re.findall(r"\$(\d+)", ASYNCPG_INSERT_ONE)} == set(range(1, len(fields) + 1))
    assert "::" not in INSERT_SQL_NAMED  # SQLAlchemy's text() would read ':x::type' as no parameter at all
    assert {int(n) for n in re.findall(r"\$(\d+)", ASYNCPG_INSERT_MANY)} == set(range(1, 13))


def test_events_of_one_key_share_a_lock_and_a_share_and_keyless_ones_take_no_lock() -> None:
    """A key's lock is its CRC-32 as a signed int; its share follows from it; a keyless event locks nothing."""
    a, b = OUTBOX.row(order(1, key="same"), topic="t"), OUTBOX.row(order(2, key="same"), topic="t")
    assert a.lock == b.lock == key_lock(b"same") and a.share == b.share and 0 <= a.share < SHARES
    assert -(2**31) <= key_lock(b"\xff" * 40) < 2**31
    keyless = OUTBOX.row(order(3, key=None), topic="t")
    assert keyless.lock is None and keyless.key is None and 0 <= keyless.share < SHARES


def test_many_args_are_one_array_per_column_in_the_order_given() -> None:
    """add_many's arguments: the topic, the locks, then each column across the rows, rows in input order."""
    rows = OUTBOX.rows([order(n) for n in range(3)], topic="t")
    args = many_args("t", rows)
    assert args[0] == "t" and args[1] == [r.lock for r in rows] and args[2] == [r.share for r in rows]
    assert args[3] == [r.event_id for r in rows] and args[-1] == [r.headers for r in rows]
    assert len(args) == 12


@pytest.mark.parametrize(
    "attributes",
    [
        pytest.param({"subject": "\udcff"}, id="surrogate-subject"),
        pytest.param({"key": "k\udc80"}, id="surrogate-key"),
        pytest.param({"causation_id": "\ud800"}, id="surrogate-causation"),
        pytest.param({"subject": "a\x00b"}, id="nul-subject"),
        pytest.param({"correlation_id": "c\x00"}, id="nul-correlation"),
        pytest.param({"id": "id\x00"}, id="nul-id"),
    ],
)
def test_attributes_no_row_can_hold_are_an_invalid_event_in_the_caller(attributes: dict[str, str]) -> None:
    """Lone surrogates (not UTF-8) and NUL characters (not PostgreSQL text) raise InvalidEvent before any SQL."""
    with pytest.raises(InvalidEvent):
        OUTBOX.row(order(1, **attributes), topic="t")


def test_the_first_invalid_event_of_a_batch_fails_it_with_its_index() -> None:
    """rows() validates every event; the first failure names its index and that nothing was added."""
    bad = Event(type="demo.order.created.v1", source="tests", data={"order_id": "o"})
    with pytest.raises(SchemaViolation) as caught:
        OUTBOX.rows([order(1), bad, order(2)], topic="t")
    assert "events[1]" in " ".join(caught.value.__notes__) and "nothing was added" in caught.value.__notes__[0]


def test_a_relay_whose_loop_stops_turning_is_not_live() -> None:
    """RelayStatus is live only while beats come within its window (the relay beats once per turn)."""
    status = RelayStatus(window_s=0.05)
    status.beat()
    assert status.live and status.as_dict()["live"]
    time.sleep(0.1)
    assert not status.live
    status.beat()
    assert status.live
