"""Handlers and where they are registered.

A handler is a plain ``async def``::

    app = App("orders-projector", topics=["orders"])

    @app.handler("order.created.v1")
    async def on_created(event: Event, ctx: Context) -> None:
        ...

    @app.batch_handler("order.paid.v1")
    async def on_paid(events: list[Event], ctx: BatchContext) -> dict[str, BaseException] | None:
        ...  # return None if all succeeded, or {event_id: exception} for those that failed

Mistakes fail when the module is imported, with a message saying what to do: a
function that is not ``async def``, an event type registered twice, an option that
does not exist, a type name that is not versioned.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eventq.errors import RegistrationError
from eventq.schemas.registry import TYPE_PATTERN

HandlerFunc = Callable[..., Awaitable[Any]]

_OPTIONS = ("transactional", "max_attempts", "retry_topics")
_BATCH_OPTIONS = ("max_attempts",)


@dataclass(frozen=True, slots=True)
class Handler:
    """A registered handler and its options."""

    name: str
    func: HandlerFunc
    types: tuple[str, ...]
    batch: bool = False
    transactional: bool = False
    max_attempts: int | None = None
    retry_topics: bool = False


class App:
    """The handlers of one consumer group, by event type.

    ``name`` is the default consumer group; ``topics`` the default topics. Both can be
    overridden at run time (:class:`~eventq.consumers.ConsumerSettings`, CLI options).
    """

    def __init__(self, name: str, *, topics: Sequence[str] = (), schemas: Sequence[str] = ()) -> None:
        if not name or not isinstance(name, str):
            raise RegistrationError("App needs a name; it is the default consumer group, e.g. App('billing')")
        if isinstance(topics, str):
            raise RegistrationError(f"topics must be a list of names, e.g. topics=[{topics!r}]")
        self.name = name
        self.topics = tuple(topics)
        self.schemas = tuple(schemas)
        self._routes: dict[str, Handler] = {}

    def handler(self, *types: str, **options: Any) -> Callable[[HandlerFunc], HandlerFunc]:
        """Register ``async def handle(event, ctx)`` for ``types``.

        Options: ``transactional=True`` gives the handler ``ctx.db``, a connection inside a
        transaction that also writes the event's ``processed_events`` row, so changes made
        through it happen exactly once; ``max_attempts`` overrides the daemon's limit;
        ``retry_topics=True`` retries through ``<topic>.retry.<n>`` topics instead of
        holding the partition (for handlers that do not need order, see
        :mod:`eventq.consumers.retrytopics`).
        """
        return self._register(types, options, batch=False)

    def batch_handler(self, *types: str, **options: Any) -> Callable[[HandlerFunc], HandlerFunc]:
        """Register ``async def handle(events, ctx)`` for ``types``.

        It receives consecutive events of its types from one partition, in offset order,
        and returns None (all succeeded) or ``{event_id: exception}`` for the events that
        failed; raising fails them all. Failed events are retried on their own. Option:
        ``max_attempts``.
        """
        return self._register(types, options, batch=True)

    def route(self, event_type: str) -> Handler | None:
        """The handler for ``event_type``, or None."""
        return self._routes.get(event_type)

    @property
    def handlers(self) -> Mapping[str, Handler]:
        """Event type → handler (read-only view)."""
        return dict(self._routes)

    def _register(
        self, types: tuple[str, ...], options: dict[str, Any], *, batch: bool
    ) -> Callable[[HandlerFunc], HandlerFunc]:
        kind = "batch_handler" if batch else "handler"
        if len(types) == 1 and callable(types[0]):
            raise RegistrationError(
                f"@app.{kind} needs the event types it handles, e.g. @app.{kind}('order.created.v1')"
            )
        if not types:
            raise RegistrationError(f"@app.{kind}() needs at least one event type, e.g. 'order.created.v1'")
        for event_type in types:
            if not isinstance(event_type, str) or not TYPE_PATTERN.match(event_type):
                raise RegistrationError(
                    f"{event_type!r} is not a versioned event type; use e.g. 'order.created.v1'"
                )
        allowed = _BATCH_OPTIONS if batch else _OPTIONS
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise RegistrationError(
                f"unknown option(s) {', '.join(unknown)} for @app.{kind}; known: {', '.join(allowed)}"
            )
        transactional = options.get("transactional", False)
        retry_topics = options.get("retry_topics", False)
        if not isinstance(transactional, bool) or not isinstance(retry_topics, bool):
            raise RegistrationError("transactional and retry_topics must be True or False")
        max_attempts = options.get("max_attempts")
        if max_attempts is not None and (
            not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1
        ):
            raise RegistrationError(f"max_attempts must be a whole number of at least 1, not {max_attempts!r}")

        def register(func: HandlerFunc) -> HandlerFunc:
            if not inspect.iscoroutinefunction(func):
                raise RegistrationError(
                    f"{getattr(func, '__qualname__', func)!r} is not a coroutine function; "
                    f"handlers are declared with 'async def'"
                )
            name = f"{func.__module__}.{func.__qualname__}"
            for event_type in types:
                existing = self._routes.get(event_type)
                if existing is not None:
                    raise RegistrationError(
                        f"event type {event_type!r} already has a handler ({existing.name}); "
                        "one handler per type: call the second from the first, or use another App"
                    )
            handler = Handler(
                name=name,
                func=func,
                types=types,
                batch=batch,
                transactional=transactional,
                max_attempts=max_attempts,
                retry_topics=retry_topics,
            )
            for event_type in types:
                self._routes[event_type] = handler
            return func

        return register
