"""JSON Schemas for event payloads.

Each event type is declared by one file ``<type>.json`` holding a JSON Schema
(draft 4, 6 or 7). eventq's own types end in their version, ``order.created.v1``: a new
incompatible payload is a new type (``order.created.v2``), so consumers can handle
both while producers move over. Schemas live in a directory or in a Python package
(found with :mod:`importlib.resources`, so they ship inside a wheel).

Any non-empty CloudEvents type can be declared, also without a version
(``com.example.order.created``), by a file or by a schema given where its handler is
registered (``inline=``: type → schema, or None for a type accepted unvalidated on
purpose; see :meth:`eventq.consumers.App.handler`).

Validation is compiled once per type with fastjsonschema (see docs/adr/0002).
"""

from __future__ import annotations

import importlib.resources
import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import fastjsonschema

from eventq.errors import ConfigError, SchemaViolation, UnknownEventType

# The versioned form of eventq's own types; other producers' types may be any string.
TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*\.v[0-9]+$")
BUILTIN_PACKAGE = "eventq.schemas.builtin"
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

Validator = Callable[[Any], Any]


def is_versioned(event_type: str) -> bool:
    """True if ``event_type`` has the versioned form ``domain.thing.v1``."""
    return TYPE_PATTERN.match(event_type) is not None


def check_type_name(event_type: object) -> None:
    """Raise ConfigError unless ``event_type`` is a non-empty string (any CloudEvents type)."""
    if not isinstance(event_type, str) or not event_type:
        raise ConfigError(
            f"event type {event_type!r} is not a non-empty string; use e.g. 'order.created.v1' "
            "or 'com.example.order.created'"
        )


def compile_schema(event_type: str, schema: Mapping[str, Any]) -> Validator:
    """Compile one JSON Schema; ConfigError if it is not a valid one."""
    if not isinstance(schema, Mapping):
        raise ConfigError(f"schema for {event_type!r} must be a JSON Schema object (a dict), not {schema!r:.80}")
    try:
        return fastjsonschema.compile(dict(schema))
    except fastjsonschema.JsonSchemaDefinitionException as exc:
        raise ConfigError(f"schema for {event_type!r} is not a valid JSON Schema: {exc}") from exc


def has_schema_file(sources: Iterable[str], event_type: str, *, builtin: bool = True) -> bool:
    """True if a source (directory or package, as for :meth:`SchemaRegistry.load`) has ``<type>.json``.

    A source that does not exist counts as having none: loading it reports that.
    """
    name = f"{event_type}.json"
    for source in ([BUILTIN_PACKAGE] if builtin else []) + list(sources):
        path = Path(source)
        if path.is_dir():
            if (path / name).is_file():
                return True
        elif _MODULE_NAME.match(source):
            try:
                if importlib.resources.files(source).joinpath(name).is_file():
                    return True
            except (ModuleNotFoundError, OSError):
                continue
    return False


class SchemaRegistry:
    """Event type → compiled JSON Schema validator. Immutable once built."""

    def __init__(self, schemas: Mapping[str, Mapping[str, Any]]) -> None:
        self._validators: dict[str, Validator] = {}
        self._schemas: dict[str, Mapping[str, Any]] = {}
        for event_type, schema in schemas.items():
            check_type_name(event_type)
            self._validators[event_type] = compile_schema(event_type, schema)
            self._schemas[event_type] = schema

    @classmethod
    def load(
        cls,
        sources: Iterable[str] = (),
        *,
        builtin: bool = True,
        inline: Mapping[str, Mapping[str, Any] | None] | None = None,
    ) -> SchemaRegistry:
        """Load schemas from directories or package names, plus eventq's own and ``inline`` ones.

        ``inline`` maps a type to the schema given at its handler's registration, or to
        None for a type its handler accepts unvalidated on purpose (it is then declared
        with the empty schema, which any JSON fits, so it can be published too). A type
        may be declared once: a later source, or an inline schema (or None) for a type a
        file declares, raises ConfigError, because two declarations would make validation
        depend on load order.
        """
        found: dict[str, Mapping[str, Any]] = {}
        origins: dict[str, str] = {}
        for event_type, schema in (inline or {}).items():
            origins[event_type] = "its handler's schema=" if schema is not None else (
                "its handler's schema=None (no validation)"
            )
            found[event_type] = schema if schema is not None else {}
        all_sources = ([BUILTIN_PACKAGE] if builtin else []) + list(sources)
        for source in all_sources:
            for event_type, schema, origin in _read_source(source):
                if event_type in origins:
                    raise ConfigError(
                        f"event type {event_type!r} is declared twice: in {origins[event_type]} "
                        f"and in {origin}; keep one"
                    )
                found[event_type] = schema
                origins[event_type] = origin
        return cls(found)

    def types(self) -> list[str]:
        """Declared event types, sorted."""
        return sorted(self._validators)

    def schema(self, event_type: str) -> Mapping[str, Any]:
        """The JSON Schema declared for a type."""
        try:
            return self._schemas[event_type]
        except KeyError:
            raise UnknownEventType(event_type, self.types()) from None

    def __contains__(self, event_type: object) -> bool:
        return event_type in self._validators

    def validate(self, event_type: str, data: Any) -> None:
        """Raise UnknownEventType or SchemaViolation unless ``data`` fits the type's schema."""
        validator = self._validators.get(event_type)
        if validator is None:
            raise UnknownEventType(event_type, self.types())
        try:
            validator(data)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise SchemaViolation(event_type, exc.message) from exc


def _read_source(source: str) -> Iterable[tuple[str, Mapping[str, Any], str]]:
    path = Path(source)
    if path.is_dir():
        files = [(p.name, p.read_bytes, str(p)) for p in sorted(path.glob("*.json"))]
    elif _MODULE_NAME.match(source):
        try:
            root = importlib.resources.files(source)
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"schema source {source!r} is neither a directory nor an importable package"
            ) from exc
        files = [
            (entry.name, entry.read_bytes, f"{source}/{entry.name}")
            for entry in sorted(root.iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".json")
        ]
    else:
        raise ConfigError(
            f"schema source {source!r} is not a directory; give a directory of <type>.json files "
            "or an importable package name"
        )
    for name, read, origin in files:
        event_type = name.removesuffix(".json")
        try:
            schema = json.loads(read())
        except ValueError as exc:
            raise ConfigError(f"schema file {origin} is not valid JSON: {exc}") from exc
        if not isinstance(schema, dict):
            raise ConfigError(f"schema file {origin} must hold a JSON object")
        yield event_type, schema, origin
