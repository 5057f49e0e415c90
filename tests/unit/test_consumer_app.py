"""Handler registration fails at decoration time with a fix-it message; `eventq consume` loads only Apps."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner

from eventq.cli import main
from eventq.consumers import App, BatchContext, Context, Handler
from eventq.errors import ConfigError, RegistrationError
from eventq.schemas import Event


async def on_created(event: Event, ctx: Context) -> None:
    pass


async def on_paid_batch(events: list[Event], ctx: BatchContext) -> None:
    pass


def test_registration_error_is_a_config_error() -> None:
    """Registration mistakes can be caught as ConfigError, like any other invalid setting."""
    assert issubclass(RegistrationError, ConfigError)


def test_plain_function_is_refused() -> None:
    """A handler declared with `def` instead of `async def` is refused, naming the function."""
    app = App("billing")

    def not_async(event: Event, ctx: Context) -> None:
        pass

    with pytest.raises(RegistrationError) as caught:
        app.handler("order.created.v1")(not_async)  # type: ignore[arg-type]  # the misuse under test
    assert "not_async" in str(caught.value)
    assert "is not a coroutine function" in str(caught.value)
    assert "async def" in str(caught.value)
    assert app.route("order.created.v1") is None


def test_same_type_twice_is_refused_naming_the_first_handler() -> None:
    """A second handler for a type already handled is refused, naming the existing handler."""
    app = App("billing")
    app.handler("order.created.v1")(on_created)

    async def again(event: Event, ctx: Context) -> None:
        pass

    with pytest.raises(RegistrationError) as caught:
        app.handler("order.created.v1")(again)
    message = str(caught.value)
    assert "'order.created.v1' already has a handler" in message
    assert f"{__name__}.on_created" in message
    assert "one handler per type" in message
    assert app.route("order.created.v1").func is on_created  # type: ignore[union-attr]


def test_type_taken_by_a_handler_is_refused_for_a_batch_handler() -> None:
    """Duplicate detection spans handler and batch_handler, in both directions."""
    app = App("billing")
    app.handler("order.created.v1")(on_created)
    app.batch_handler("order.paid.v1")(on_paid_batch)

    with pytest.raises(RegistrationError, match="'order.created.v1' already has a handler"):
        app.batch_handler("order.created.v1")(on_paid_batch)
    with pytest.raises(RegistrationError, match="'order.paid.v1' already has a handler"):
        app.handler("order.shipped.v1", "order.paid.v1")(on_created)
    # A refused registration registers none of its types.
    assert app.route("order.shipped.v1") is None


def test_unknown_option_is_refused_listing_the_known_ones() -> None:
    """An option that does not exist (retries=3) is refused and the message lists the real options."""
    app = App("billing")
    with pytest.raises(RegistrationError) as caught:
        app.handler("order.created.v1", retries=3)
    message = str(caught.value)
    assert "unknown option(s) retries for @app.handler" in message
    assert "known: transactional, max_attempts" in message


def test_batch_handler_refuses_transactional() -> None:
    """transactional is a single-event option: batch_handler refuses it and names max_attempts as known."""
    app = App("billing")
    with pytest.raises(RegistrationError) as caught:
        app.batch_handler("order.paid.v1", transactional=True)
    assert "unknown option(s) transactional for @app.batch_handler" in str(caught.value)
    assert "known: max_attempts" in str(caught.value)


@pytest.mark.parametrize("event_type", ["", None, 42])
def test_empty_or_non_string_type_is_refused(event_type: Any) -> None:
    """An event type that is not a non-empty string is refused with examples of both forms."""
    app = App("billing")
    with pytest.raises(RegistrationError) as caught:
        app.handler(event_type)
    assert f"{event_type!r} is not an event type" in str(caught.value)
    assert "'order.created.v1'" in str(caught.value)
    assert "'com.example.order.created'" in str(caught.value)


@pytest.mark.parametrize("event_type", ["order.created", "com.example.order.created", "Order.Created.v1", "A234 x"])
def test_unversioned_type_without_schema_is_refused_naming_both_options(event_type: str) -> None:
    """An unversioned type with no schema= and no schema file fails at import, naming schema={...} and schema=None."""
    app = App("billing")
    with pytest.raises(RegistrationError) as caught:
        app.handler(event_type)
    message = str(caught.value)
    assert f"{event_type!r} is not a versioned type like 'order.created.v1' and has no schema file" in message
    assert f"@app.handler({event_type!r}, schema={{...a JSON Schema...}})" in message
    assert "schema=None to accept any payload on purpose" in message
    assert app.route(event_type) is None


def test_unversioned_type_with_inline_schema_is_registered_and_handed_to_the_registry() -> None:
    """A reverse-DNS type registered with schema={...} routes to its handler and lists the schema in inline_schemas."""
    app = App("billing")
    schema = {"type": "object", "required": ["order_id"]}
    app.handler("com.example.order.created", schema=schema)(on_created)
    assert app.route("com.example.order.created").func is on_created  # type: ignore[union-attr]
    assert app.inline_schemas == {"com.example.order.created": schema}


def test_schema_none_registers_a_type_unvalidated_on_purpose() -> None:
    """schema=None registers an unversioned type (batch handlers too) and records None, meaning no validation."""
    app = App("billing")
    app.batch_handler("com.example.order.paid", "order.paid", schema=None)(on_paid_batch)
    assert app.route("order.paid").batch  # type: ignore[union-attr]
    assert app.inline_schemas == {"com.example.order.paid": None, "order.paid": None}


def test_unversioned_type_with_a_schema_file_in_the_app_sources_needs_no_schema_option(tmp_path: Path) -> None:
    """A `<type>.json` file in one of App(schemas=[...]) is enough for an unversioned type."""
    (tmp_path / "com.example.order.created.json").write_text('{"type": "object"}')
    app = App("billing", schemas=[str(tmp_path)])
    app.handler("com.example.order.created")(on_created)
    assert app.route("com.example.order.created") is not None
    assert app.inline_schemas == {}


def test_versioned_type_without_schema_option_works_as_before() -> None:
    """A versioned type needs no schema= (its schema file validates it) and adds nothing to inline_schemas."""
    app = App("billing")
    app.handler("order.created.v1")(on_created)
    assert app.route("order.created.v1") is not None
    assert app.inline_schemas == {}


def test_invalid_inline_schema_is_refused_at_registration() -> None:
    """A schema= that fastjsonschema cannot compile, or that is not a dict, fails at import naming the type."""
    app = App("billing")
    with pytest.raises(RegistrationError, match=r"schema for 'com.example.x' is not a valid JSON Schema"):
        app.handler("com.example.x", schema={"type": 12})
    with pytest.raises(RegistrationError, match=r"must be a JSON Schema object \(a dict\), not 'object'"):
        app.handler("com.example.x", schema="object")  # type: ignore[arg-type]
    assert app.route("com.example.x") is None and app.inline_schemas == {}


def test_decorator_without_parentheses_is_refused() -> None:
    """`@app.handler` with no parentheses fails at once and shows the call with event types."""
    app = App("billing")
    with pytest.raises(RegistrationError) as caught:
        app.handler(on_created)  # type: ignore[arg-type]  # what `@app.handler` without parentheses does
    assert "@app.handler needs the event types it handles" in str(caught.value)
    assert "@app.handler('order.created.v1')" in str(caught.value)

    with pytest.raises(RegistrationError, match=r"@app\.batch_handler needs the event types"):
        app.batch_handler(on_paid_batch)  # type: ignore[arg-type]  # the misuse under test


def test_no_types_is_refused() -> None:
    """`@app.handler()` with no event types is refused."""
    app = App("billing")
    with pytest.raises(RegistrationError, match=r"@app\.handler\(\) needs at least one event type"):
        app.handler()


@pytest.mark.parametrize("bad", [0, -1, "3", 2.5])
def test_max_attempts_must_be_a_positive_whole_number(bad: object) -> None:
    """max_attempts below 1 or not an int is refused, quoting the value given."""
    app = App("billing")
    with pytest.raises(RegistrationError) as caught:
        app.handler("order.created.v1", max_attempts=bad)
    assert "max_attempts must be a whole number of at least 1" in str(caught.value)
    assert repr(bad) in str(caught.value)


def test_transactional_must_be_a_bool() -> None:
    """transactional="yes" is refused: only True or False."""
    app = App("billing")
    with pytest.raises(RegistrationError, match="transactional and retry_topics must be True or False"):
        app.handler("order.created.v1", transactional="yes")
    with pytest.raises(RegistrationError, match="must be True or False"):
        app.handler("order.created.v1", retry_topics=1)


@pytest.mark.parametrize("name", ["", None, 42])
def test_app_needs_a_name(name: Any) -> None:
    """An App without a (string) name is refused: the name is the default consumer group."""
    with pytest.raises(RegistrationError, match="App needs a name"):
        App(name)


def test_topics_as_a_string_is_refused() -> None:
    """App(topics="orders") would consume topics o, r, d…; it is refused with the list form to use."""
    with pytest.raises(RegistrationError) as caught:
        App("billing", topics="orders")
    assert "topics must be a list of names" in str(caught.value)
    assert "topics=['orders']" in str(caught.value)


def test_route_returns_the_handler_with_its_name_and_options() -> None:
    """A registration keeps the function unchanged and routes each of its types to one Handler."""
    app = App("billing", topics=["orders", "payments"])

    async def on_order(event: Event, ctx: Context) -> None:
        pass

    decorated = app.handler("order.created.v1", "order.updated.v1", transactional=True, max_attempts=7)(on_order)

    assert decorated is on_order
    handler = app.route("order.created.v1")
    assert handler == Handler(
        name=f"{__name__}.test_route_returns_the_handler_with_its_name_and_options.<locals>.on_order",
        func=on_order,
        types=("order.created.v1", "order.updated.v1"),
        batch=False,
        transactional=True,
        max_attempts=7,
    )
    assert app.route("order.updated.v1") is handler
    assert app.route("order.deleted.v1") is None
    assert app.topics == ("orders", "payments")
    assert app.name == "billing"


def test_batch_handler_is_routed_as_batch_with_defaults() -> None:
    """A batch_handler is marked batch, not transactional, and leaves max_attempts to the daemon."""
    app = App("billing")
    app.batch_handler("order.paid.v1")(on_paid_batch)

    handler = app.route("order.paid.v1")

    assert handler is not None
    assert (handler.name, handler.batch, handler.transactional, handler.max_attempts) == (
        f"{__name__}.on_paid_batch", True, False, None,
    )
    assert dict(app.handlers) == {"order.paid.v1": handler}


def test_handlers_view_cannot_change_the_routes() -> None:
    """Mutating app.handlers does not register or remove anything."""
    app = App("billing")
    app.handler("order.created.v1")(on_created)

    app.handlers.clear()  # type: ignore[attr-defined]

    assert app.route("order.created.v1") is not None


# -- eventq consume MODULE:APP -------------------------------------------------------


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo the global state `eventq` sets up: structlog config and the '' entry load_app adds to sys.path."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def consume(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["consume", *args], env={"EVENTQ_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    return result.exit_code, result.output


def test_consume_without_colon_is_a_usage_error(cli: None) -> None:
    """`eventq consume nocolon` exits 2 and shows the MODULE:ATTRIBUTE form."""
    code, output = consume("nocolon")
    assert code == 2
    assert "'nocolon' is not MODULE:ATTRIBUTE" in output
    assert "myservice.handlers:app" in output


def test_consume_of_missing_module_is_a_usage_error(cli: None) -> None:
    """A module that cannot be imported exits 2 with 'not found' and what to do."""
    code, output = consume("no_such_module_xyz:app")
    assert code == 2
    assert "module 'no_such_module_xyz' not found" in output


def test_consume_of_something_else_than_an_app_is_a_usage_error(cli: None) -> None:
    """An attribute that is not an App exits 2 saying what it is instead."""
    code, output = consume("eventq.cli:main")
    assert code == 2
    assert "'eventq.cli:main' is Group, not an eventq App" in output


def test_consume_of_missing_attribute_is_a_usage_error(cli: None) -> None:
    """An attribute the module does not have exits 2 saying nothing was found."""
    code, output = consume("eventq.cli:no_such_app")
    assert code == 2
    assert "is nothing, not an eventq App" in output


def test_consume_help_lists_until_idle(cli: None) -> None:
    """`eventq consume --help` documents --until-idle (the one-process test mode)."""
    code, output = consume("--help")
    assert code == 0
    assert "--until-idle" in output
    assert "MODULE:APP" in output
