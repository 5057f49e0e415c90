"""Payload schemas: loading, validation and the errors for bad declarations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eventq.errors import ConfigError, SchemaViolation, UnknownEventType
from eventq.schemas import SchemaRegistry


def write_schema(folder: Path, event_type: str, schema: object) -> None:
    (folder / f"{event_type}.json").write_text(json.dumps(schema))


def test_builtin_schemas_ship_with_the_package() -> None:
    """eventq's own demo and ping types load from package data."""
    registry = SchemaRegistry.load()
    assert {"demo.order.created.v1", "demo.order.paid.v1", "eventq.ping.v1"} <= set(registry.types())


def test_valid_payload_passes_and_invalid_names_the_field() -> None:
    """A payload matching its schema passes; a violation names the offending field."""
    registry = SchemaRegistry.load()
    registry.validate("demo.order.paid.v1", {"order_id": "o-1", "amount_cents": 5})
    with pytest.raises(SchemaViolation, match="amount_cents") as info:
        registry.validate("demo.order.paid.v1", {"order_id": "o-1", "amount_cents": "five"})
    assert info.value.event_type == "demo.order.paid.v1"


def test_unknown_type_says_how_to_declare_it() -> None:
    """Validating an undeclared type raises UnknownEventType telling which file to add."""
    with pytest.raises(UnknownEventType, match="'billing.refund.v1.json'"):
        SchemaRegistry.load().validate("billing.refund.v1", {})


def test_directory_schemas_are_loaded_next_to_builtin(tmp_path: Path) -> None:
    """A directory of <type>.json files adds its types to the built-in ones."""
    write_schema(tmp_path, "billing.refund.v1", {"type": "object", "required": ["id"]})
    registry = SchemaRegistry.load([str(tmp_path)])
    assert "billing.refund.v1" in registry and "eventq.ping.v1" in registry
    with pytest.raises(SchemaViolation):
        registry.validate("billing.refund.v1", {})


def test_type_declared_twice_is_refused(tmp_path: Path) -> None:
    """Two schemas for one type raise ConfigError naming both places."""
    write_schema(tmp_path, "eventq.ping.v1", {"type": "object"})
    with pytest.raises(ConfigError, match="declared twice"):
        SchemaRegistry.load([str(tmp_path)])


@pytest.mark.parametrize("name", ["OrderCreated", "order.created", "order..created.v1", "order.created.V1"])
def test_unversioned_or_malformed_type_names_are_refused(tmp_path: Path, name: str) -> None:
    """Type names must be lower-case dotted words ending in .vN."""
    write_schema(tmp_path, name, {"type": "object"})
    with pytest.raises(ConfigError, match="not a versioned name"):
        SchemaRegistry.load([str(tmp_path)], builtin=False)


def test_broken_schema_files_are_reported_by_path(tmp_path: Path) -> None:
    """A schema file that is not JSON, or not a valid JSON Schema, names the file or type."""
    (tmp_path / "a.broken.v1.json").write_text("{nope")
    with pytest.raises(ConfigError, match="a.broken.v1.json is not valid JSON"):
        SchemaRegistry.load([str(tmp_path)], builtin=False)
    (tmp_path / "a.broken.v1.json").write_text(json.dumps({"type": 12}))
    with pytest.raises(ConfigError, match="'a.broken.v1' is not a valid JSON Schema"):
        SchemaRegistry.load([str(tmp_path)], builtin=False)


def test_missing_source_is_a_config_error() -> None:
    """A schema source that is neither a directory nor a package raises ConfigError."""
    with pytest.raises(ConfigError, match="neither a directory nor an importable package"):
        SchemaRegistry.load(["no_such_package_xyz"])
    with pytest.raises(ConfigError, match="is not a directory"):
        SchemaRegistry.load(["./no/such/dir"])
