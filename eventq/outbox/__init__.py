"""The transactional outbox: events added in the service's own PostgreSQL transaction, published by a relay.

The path of an event, one module each:

1. :mod:`~eventq.outbox.writer` — :class:`Outbox` validates and encodes events and adds
   them with the caller's connection, inside the caller's transaction;
   :mod:`~eventq.outbox.rows` is the row and the adding statement (also for psycopg and
   SQLAlchemy: :data:`INSERT_SQL`, :data:`INSERT_SQL_NAMED`, :meth:`OutboxRow.params`).
2. :mod:`~eventq.outbox.relay` — :class:`Relay` publishes committed rows with the
   producer's batch path and removes them once acknowledged; :mod:`~eventq.outbox.shares`
   lets several relays split the work, one per share.
3. :mod:`~eventq.outbox.table` — the relay's statements, and :func:`status` (``eventq
   outbox status``).

Guarantees and limits: README, "Transactional outbox"; docs/adr/0017-transactional-outbox.md.
"""

from eventq.outbox.relay import Relay
from eventq.outbox.rows import INSERT_SQL, INSERT_SQL_NAMED, OutboxRow
from eventq.outbox.settings import RelaySettings
from eventq.outbox.table import OutboxStatus, status
from eventq.outbox.writer import Added, Outbox

__all__ = [
    "INSERT_SQL",
    "INSERT_SQL_NAMED",
    "Added",
    "Outbox",
    "OutboxRow",
    "OutboxStatus",
    "Relay",
    "RelaySettings",
    "status",
]
