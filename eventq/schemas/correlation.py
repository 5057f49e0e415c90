"""Which event is being handled right now, so follow-up events inherit its ids.

While ``caused_by(event)`` is active (the consumer wraps every handler call in it),
each new :class:`~eventq.schemas.envelope.Event` takes the handled event's
correlation id and gets the handled event's id as its causation id, unless the
caller passes them explicitly. The state is a :mod:`contextvars` variable, so it
follows asyncio tasks and never leaks between concurrently handled events.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import NamedTuple


class Cause(NamedTuple):
    """The ids a follow-up event inherits."""

    event_id: str
    correlation_id: str


_current: ContextVar[Cause | None] = ContextVar("eventq_cause", default=None)


def current_cause() -> Cause | None:
    """The event being handled in this context, or None outside a handler."""
    return _current.get()


def enter_cause(event_id: str, correlation_id: str) -> Token[Cause | None]:
    """Start handling an event (the consumer's hot path; prefer :func:`caused_by`)."""
    return _current.set(Cause(event_id, correlation_id))


def exit_cause(token: Token[Cause | None]) -> None:
    """Undo :func:`enter_cause`."""
    _current.reset(token)


@contextmanager
def caused_by(event_id: str, correlation_id: str) -> Iterator[Cause]:
    """Make events created inside the block follow-ups of the given event."""
    cause = Cause(event_id=event_id, correlation_id=correlation_id)
    token = _current.set(cause)
    try:
        yield cause
    finally:
        _current.reset(token)
