"""Payload schemas: loading, validation and the errors for bad declarations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eventq.errors import ConfigError, SchemaViolation, UnknownEventType
from eventq.schemas import SchemaRegistry
from eventq.schemas.registry import has_schema_file
from eventq_dev.demo import SCHEMAS as DEMO_SCHEMAS


def write_schema(folder: Path, event_type: str, schema: object) -> None:
    (folder / f"{event_type}.json").write_text(json.dumps(schema))


def test_builtin_schemas_ship_with_the_package() -> None:
    """eventq's own ping type loads from package data, and it is the only type a registry holds undeclared;
    the demo's types load from the demo's schema source."""
    assert SchemaRegistry.load().types() == ["eventq.ping.v1"]
    registry = SchemaRegistry.load(DEMO_SCHEMAS)
    assert {"demo.order.created.v1", "demo.order.paid.v1", "eventq.ping.v1"} <= set(registry.types())


def test_valid_payload_passes_and_invalid_names_the_field() -> None:
    """A payload matching its schema passes; a violation names the offending field."""
    registry = SchemaRegistry.load(DEMO_SCHEMAS)
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


@pytest.mark.parametrize("name", ["com.example.order.created", "OrderCreated", "order.created.V1"])
def test_any_cloudevents_type_name_can_be_declared_by_a_file(tmp_path: Path, name: str) -> None:
    """A schema file may declare any non-empty CloudEvents type, versioned or not."""
    write_schema(tmp_path, name, {"type": "object", "required": ["id"]})
    registry = SchemaRegistry.load([str(tmp_path)], builtin=False)
    assert registry.types() == [name]
    with pytest.raises(SchemaViolation):
        registry.validate(name, {})


def test_empty_type_name_is_refused(tmp_path: Path) -> None:
    """A file named just `.json` declares no type and raises ConfigError."""
    (tmp_path / ".json").write_text("{}")
    with pytest.raises(ConfigError, match="is not a non-empty string"):
        SchemaRegistry.load([str(tmp_path)], builtin=False)


def test_inline_schemas_are_compiled_and_validate_like_files() -> None:
    """A schema given at registration (inline=) validates its type; a type mapped to None accepts any JSON."""
    registry = SchemaRegistry.load(
        inline={"com.example.order.created": {"type": "object", "required": ["order_id"]},
                "com.example.order.shipped": None},
    )
    registry.validate("com.example.order.created", {"order_id": "o-1"})
    with pytest.raises(SchemaViolation, match="order_id"):
        registry.validate("com.example.order.created", {})
    registry.validate("com.example.order.shipped", [1, "anything", None])
    assert "eventq.ping.v1" in registry


def test_invalid_inline_schema_is_a_config_error() -> None:
    """An inline schema fastjsonschema cannot compile raises ConfigError naming the type."""
    with pytest.raises(ConfigError, match="schema for 'com.example.x' is not a valid JSON Schema"):
        SchemaRegistry.load(inline={"com.example.x": {"type": 12}})


@pytest.mark.parametrize("inline_schema", [{"type": "object"}, None])
def test_inline_declaration_of_a_type_with_a_schema_file_is_refused(
    tmp_path: Path, inline_schema: dict[str, str] | None
) -> None:
    """A type declared both by a file and at registration (schema or None) raises ConfigError naming both."""
    write_schema(tmp_path, "com.example.order.created", {"type": "object"})
    with pytest.raises(ConfigError, match="'com.example.order.created' is declared twice: in its handler") as info:
        SchemaRegistry.load([str(tmp_path)], inline={"com.example.order.created": inline_schema})
    assert "com.example.order.created.json" in str(info.value)


def test_has_schema_file_looks_in_directories_packages_and_builtin(tmp_path: Path) -> None:
    """has_schema_file finds <type>.json in a directory, a package or eventq's own, and not elsewhere."""
    write_schema(tmp_path, "com.example.order.created", {"type": "object"})
    assert has_schema_file([str(tmp_path)], "com.example.order.created")
    assert has_schema_file([], "eventq.ping.v1")
    assert has_schema_file(["eventq.schemas.builtin"], "eventq.ping.v1", builtin=False)
    assert has_schema_file(list(DEMO_SCHEMAS), "demo.order.paid.v1", builtin=False)
    assert not has_schema_file([], "demo.order.paid.v1")
    assert not has_schema_file([str(tmp_path), "no_such_package_xyz", "./no/such/dir"], "com.example.other")


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
