"""The settings tables: one record per setting, from which from_env, the checks, the CLI options and the docs follow."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from eventq.cli import main
from eventq.config import KAFKA, KafkaSettings
from eventq.consumers.settings import CONSUMER, ConsumerSettings
from eventq.database import DATABASE, DatabaseSettings
from eventq.errors import ConfigError
from eventq.outbox.settings import RELAY, RelaySettings
from eventq.producers.settings import PRODUCER, ProducerSettings
from eventq.settings_table import Setting, Table, table, variables

TABLES: list[tuple[type[Any], Table[Any]]] = [
    (KafkaSettings, KAFKA), (DatabaseSettings, DATABASE), (ProducerSettings, PRODUCER), (ConsumerSettings, CONSUMER),
    (RelaySettings, RELAY),
]
NESTED = {"kafka", "database", "producer"}  # settings held by settings: read by their own class's table
# Variables README's Configuration section names that are no settings field: read by the CLI itself
# (log level, tracebacks, the trace file with the OTEL_* variables) or by the development stack.
NOT_SETTINGS = {
    "EVENTQ_LOG_LEVEL", "EVENTQ_DEBUG", "EVENTQ_TRACE_FILE",
    "EVENTQ_STACK_DIR", "EVENTQ_DEV_KAFKA_PORT", "EVENTQ_DEV_CONTROLLER_PORT", "EVENTQ_DEV_PG_PORT", "EVENTQ_KAFKA_LIB",
}
README = Path(__file__).parents[2] / "README.md"
IDS = [cls.__name__ for cls, _ in TABLES]


def _configuration_section() -> str:
    text = README.read_text(encoding="utf-8")
    return text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize(("cls", "settings_table"), TABLES, ids=IDS)
def test_every_field_has_exactly_one_record(cls: type[Any], settings_table: Table[Any]) -> None:
    """Each field of a settings class (but the nested settings) has one record, and nothing else has one."""
    fields = {f.name for f in dataclasses.fields(cls)} - NESTED
    records = [s.field for s in settings_table]
    assert sorted(records) == sorted(fields)


def test_a_variable_belongs_to_one_setting() -> None:
    """No two records share a variable, except the one record shared by producer and daemon (EVENTQ_SCHEMAS)."""
    owners: dict[str, Setting] = {}
    for _, settings_table in TABLES:
        for setting in settings_table:
            assert owners.setdefault(setting.variable, setting) is setting, setting.variable
    assert all(name.startswith("EVENTQ_") for name in owners)


def test_a_record_naming_no_field_fails_at_import() -> None:
    """table() refuses a record for a field the class does not have, naming it."""
    with pytest.raises(TypeError, match="ProducerSettings has no field 'lingr_ms'"):
        table(ProducerSettings, Setting("lingr_ms", "EVENTQ_LINGER_MS", "int"))


@pytest.mark.parametrize(("cls", "settings_table"), TABLES, ids=IDS)
def test_from_env_of_an_empty_environment_is_the_defaults(cls: type[Any], settings_table: Table[Any]) -> None:
    """Every variable unset, or empty (but a password, used as given), gives the constructor's defaults."""
    assert cls.from_env({}) == cls()
    assert cls.from_env({s.variable: "" for s in settings_table if s.kind != "raw"}) == cls()


def test_generated_checks_name_field_and_variable() -> None:
    """The bounds a record declares are checked on construction too, naming the field and the variable."""
    cases: list[tuple[type[Any], dict[str, Any], str]] = [
        (ProducerSettings, {"linger_ms": 60_001}, "linger_ms must be 0-60000 (EVENTQ_LINGER_MS)"),
        (ConsumerSettings, {"pool_size": 1001}, "pool_size must be 2-1000 (EVENTQ_DB_POOL_SIZE)"),
        (ConsumerSettings, {"max_attempts": True}, "max_attempts must be a whole number (EVENTQ_MAX_ATTEMPTS)"),
        (ConsumerSettings, {"session_timeout_s": 0.5}, "session_timeout_s must be at least 1 s (EVENTQ_SESSION_"),
        (ConsumerSettings, {"auto_offset_reset": "middle"},
         "auto_offset_reset 'middle' (EVENTQ_AUTO_OFFSET_RESET) is unknown; use earliest or latest"),
        (DatabaseSettings, {"connect_timeout_s": 0}, "connect_timeout_s must be at least 0.001 s (EVENTQ_DB_CONNECT"),
        (KafkaSettings, {"sasl_mechanism": "MD5"}, "sasl_mechanism 'MD5' (EVENTQ_SASL_MECHANISM) is unknown"),
    ]
    for cls, fields, message in cases:
        with pytest.raises(ConfigError) as caught:
            cls(**fields)
        assert message in str(caught.value)


def test_choices_read_from_the_environment_in_any_case() -> None:
    """A choice variable is matched without regard to case and stored as declared."""
    settings = ConsumerSettings.from_env({"EVENTQ_ORDERING": "KEY", "EVENTQ_SASL_MECHANISM": "scram-sha-256",
                                          "EVENTQ_SECURITY_PROTOCOL": "sasl_plaintext",
                                          "EVENTQ_SASL_USERNAME": "svc", "EVENTQ_SASL_PASSWORD": " p w "})
    assert settings.ordering == "key"
    assert (settings.kafka.sasl_mechanism, settings.kafka.security_protocol) == ("SCRAM-SHA-256", "SASL_PLAINTEXT")
    assert settings.kafka.sasl_password == " p w "  # a password is used as given


def _options(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option) and p.name}


def test_cli_options_come_from_the_records() -> None:
    """eventq consume/publish options that map to settings have the record's range, choices and variable."""
    consume = _options(main.commands["consume"])
    assert isinstance(consume["max_attempts"].type, click.IntRange) and consume["max_attempts"].type.min == 1
    health = consume["health_port"].type
    assert isinstance(health, click.IntRange) and (health.min, health.max) == (0, 65535)
    workers = consume["workers"].type
    assert isinstance(workers, click.IntRange) and (workers.min, workers.max) == (1, 64)
    ordering = consume["ordering"].type
    assert isinstance(ordering, click.Choice) and tuple(ordering.choices) == ("partition", "key")
    assert consume["topics"].multiple
    expected = {"bootstrap_servers": "EVENTQ_BOOTSTRAP_SERVERS", "database_url": "EVENTQ_DATABASE_URL",
                "group": "EVENTQ_GROUP", "topics": "EVENTQ_TOPICS", "ordering": "EVENTQ_ORDERING",
                "max_batch_size": "EVENTQ_MAX_BATCH_SIZE", "max_attempts": "EVENTQ_MAX_ATTEMPTS",
                "health_port": "EVENTQ_HEALTH_PORT", "workers": "EVENTQ_WORKERS"}
    for name, variable in expected.items():
        assert f"default: {variable}" in (consume[name].help or ""), name
        assert consume[name].envvar is None, name  # the option reads no variable: from_env does
    publish = _options(main.commands["publish"])
    assert "default: EVENTQ_TOPIC)" in (publish["topic"].help or "")
    assert "repeatable; default: EVENTQ_SCHEMAS" in (publish["schemas"].help or "")


def test_option_refuses_what_the_record_refuses() -> None:
    """A value outside the record's bounds is a usage error naming the option (exit 2)."""
    result = CliRunner().invoke(main, ["consume", "app:app", "--workers", "65"])
    assert result.exit_code == 2 and "--workers" in result.output


def test_readme_lists_every_declared_variable_with_its_default() -> None:
    """README's Configuration tables have one row per declared variable, giving its default; and every
    EVENTQ_* variable the section names is declared or one of the few non-settings variables."""
    section = _configuration_section()
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `(EVENTQ_[A-Z0-9_]+)` \| ([^|]*) \|", line)
        if match:
            assert match.group(1) not in rows, f"two rows for {match.group(1)}"
            rows[match.group(1)] = match.group(2).replace("`", "").strip()
    declared = variables(*(t for _, t in TABLES))
    assert sorted(declared - rows.keys()) == []
    for _, settings_table in TABLES:
        for setting in settings_table:
            default, cell = settings_table.default_text(setting) or "—", rows[setting.variable]
            assert cell == default or cell.startswith(f"{default} "), (setting.variable, cell, default)
    mentioned = set(re.findall(r"EVENTQ_[A-Z0-9_]*[A-Z0-9]", section))
    assert sorted(mentioned - declared - NOT_SETTINGS) == []
    assert sorted(NOT_SETTINGS - mentioned) == []
