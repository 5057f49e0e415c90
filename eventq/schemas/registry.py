"""Versioned JSON Schemas for event payloads.

Each event type is declared by one file ``<type>.json`` holding a JSON Schema
(draft 4, 6 or 7), where the type ends in its version: ``order.created.v1``. A new
incompatible payload is a new type (``order.created.v2``), so consumers can handle
both while producers move over. Schemas live in a directory or in a Python package
(found with :mod:`importlib.resources`, so they ship inside a wheel).

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

TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*\.v[0-9]+$")
BUILTIN_PACKAGE = "eventq.schemas.builtin"
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

Validator = Callable[[Any], Any]


def check_type_name(event_type: str) -> None:
    """Raise ConfigError unless ``event_type`` looks like ``domain.thing.v1``."""
    if not TYPE_PATTERN.match(event_type):
        raise ConfigError(
            f"event type {event_type!r} is not a versioned name; use lower-case dotted "
            "words ending in a version, e.g. 'order.created.v1'"
        )


class SchemaRegistry:
    """Event type → compiled JSON Schema validator. Immutable once built."""

    def __init__(self, schemas: Mapping[str, Mapping[str, Any]]) -> None:
        self._validators: dict[str, Validator] = {}
        self._schemas: dict[str, Mapping[str, Any]] = {}
        for event_type, schema in schemas.items():
            check_type_name(event_type)
            try:
                self._validators[event_type] = fastjsonschema.compile(dict(schema))
            except fastjsonschema.JsonSchemaDefinitionException as exc:
                raise ConfigError(f"schema for {event_type!r} is not a valid JSON Schema: {exc}") from exc
            self._schemas[event_type] = schema

    @classmethod
    def load(cls, sources: Iterable[str] = (), *, builtin: bool = True) -> SchemaRegistry:
        """Load schemas from directories or package names, plus eventq's own.

        A later source may not redeclare a type: that raises ConfigError, because two
        schemas for one type would make validation depend on load order.
        """
        found: dict[str, Mapping[str, Any]] = {}
        origins: dict[str, str] = {}
        all_sources = ([BUILTIN_PACKAGE] if builtin else []) + list(sources)
        for source in all_sources:
            for event_type, schema, origin in _read_source(source):
                if event_type in found:
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
