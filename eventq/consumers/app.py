"""Handlers and where they are registered.

A handler is a plain ``async def``::

    app = App("orders-projector", topics=["orders"])

    @app.handler("order.created.v1")
    async def on_created(event: Event, ctx: Context) -> None:
        ...

    @app.batch_handler("order.paid.v1")
    async def on_paid(events: list[Event], ctx: BatchContext) -> dict[str, BaseException] | None:
        ...  # return None if all succeeded, or {event_id: exception} for those that failed

Any non-empty CloudEvents type can be handled. A versioned type (``order.created.v1``)
is validated by its ``<type>.json`` schema file when there is one, as always. A type
without a version (``com.example.order.created``) must say how it is validated: by a
schema file in one of ``App(schemas=[...])``, by a JSON Schema given at registration,
or by none, on purpose::

    @app.handler("com.example.order.created", schema={"type": "object", "required": ["id"]})
    @app.handler("com.example.order.shipped", schema=None)   # any payload

The daemon hands these to the registry (``SchemaRegistry.load(..., inline=app.inline_schemas)``).

Mistakes fail when the module is imported, with a message saying what to do: a
function that is not ``async def``, an event type registered twice, an option that
does not exist, an empty type name, an unversioned type that says nothing about its
schema, a schema that is not a valid JSON Schema.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from eventq.errors import ConfigError, RegistrationError
from eventq.schemas.registry import compile_schema, has_schema_file, is_versioned

HandlerFunc = Callable[..., Awaitable[Any]]
Schema = Mapping[str, Any]


class _Default(enum.Enum):
    SCHEMA_FILE = enum.auto()


# ``schema=`` left out: the type's schema file, if any (required for an unversioned type).
SCHEMA_FILE: Final = _Default.SCHEMA_FILE

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
        self._inline: dict[str, Schema | None] = {}

    def handler(
        self, *types: str, schema: Schema | None | _Default = SCHEMA_FILE, **options: Any
    ) -> Callable[[HandlerFunc], HandlerFunc]:
        """Register ``async def handle(event, ctx)`` for ``types``.

        ``schema`` validates the payloads of ``types``: a JSON Schema dict, or None for
        none on purpose. Left out, a type's ``<type>.json`` file validates it (a type
        without a version suffix must then have one in ``App(schemas=[...])``).

        Options: ``transactional=True`` gives the handler ``ctx.db``, a connection inside a
        transaction that also writes the event's ``processed_events`` row, so changes made
        through it happen exactly once; ``max_attempts`` overrides the daemon's limit;
        ``retry_topics=True`` retries through ``<topic>.retry.<n>`` topics instead of
        holding the partition (for handlers that do not need order, see
        :mod:`eventq.consumers.retrytopics`).
        """
        return self._register(types, options, schema, batch=False)

    def batch_handler(
        self, *types: str, schema: Schema | None | _Default = SCHEMA_FILE, **options: Any
    ) -> Callable[[HandlerFunc], HandlerFunc]:
        """Register ``async def handle(events, ctx)`` for ``types``.

        It receives consecutive events of its types from one partition, in offset order,
        and returns None (all succeeded) or ``{event_id: exception}`` for the events that
        failed; raising fails them all. Failed events are retried on their own. Options:
        ``schema`` (as for :meth:`handler`), ``max_attempts``.
        """
        return self._register(types, options, schema, batch=True)

    def route(self, event_type: str) -> Handler | None:
        """The handler for ``event_type``, or None."""
        return self._routes.get(event_type)

    @property
    def handlers(self) -> Mapping[str, Handler]:
        """Event type → handler (read-only view)."""
        return dict(self._routes)

    @property
    def inline_schemas(self) -> Mapping[str, Schema | None]:
        """Event type → the ``schema=`` its handler was registered with (None: no validation on purpose).

        Types registered without ``schema=`` are not in it; their schema files validate them.
        """
        return dict(self._inline)

    def _register(
        self, types: tuple[str, ...], options: dict[str, Any], schema: Schema | None | _Default, *, batch: bool
    ) -> Callable[[HandlerFunc], HandlerFunc]:
        kind = "batch_handler" if batch else "handler"
        if len(types) == 1 and callable(types[0]):
            raise RegistrationError(
                f"@app.{kind} needs the event types it handles, e.g. @app.{kind}('order.created.v1')"
            )
        if not types:
            raise RegistrationError(f"@app.{kind}() needs at least one event type, e.g. 'order.created.v1'")
        for event_type in types:
            if not isinstance(event_type, str) or not event_type:
                raise RegistrationError(
                    f"{event_type!r} is not an event type; use a non-empty string, e.g. 'order.created.v1' "
                    "or 'com.example.order.created'"
                )
        if schema is not SCHEMA_FILE and schema is not None:
            for event_type in types:
                try:
                    compile_schema(event_type, schema)
                except ConfigError as exc:
                    raise RegistrationError(f"@app.{kind}({event_type!r}, schema=...): {exc}") from exc
        elif schema is SCHEMA_FILE:
            for event_type in types:
                if not is_versioned(event_type) and not has_schema_file(self.schemas, event_type):
                    raise RegistrationError(
                        f"{event_type!r} is not a versioned type like 'order.created.v1' and has no schema file, "
                        f"so say how its payload is validated: "
                        f"@app.{kind}({event_type!r}, schema={{...a JSON Schema...}}), or schema=None "
                        f"to accept any payload on purpose (or add '{event_type}.json' to a "
                        "directory or package listed in App(schemas=[...]))"
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
                if schema is not SCHEMA_FILE:
                    self._inline[event_type] = schema
            return func

        return register
