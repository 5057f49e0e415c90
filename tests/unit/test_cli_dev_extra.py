"""`eventq dev` and `eventq demo` come from eventq_dev when it is importable, else name the extra."""

from __future__ import annotations

import sys
import types

import click
import pytest
from click.testing import CliRunner

from eventq.cli import dev_commands, main


def test_dev_and_demo_are_the_development_packages_commands_when_it_is_installed() -> None:
    """With eventq_dev importable, `eventq dev` and `eventq demo` are its commands, listed in --help."""
    import eventq_dev.cli

    assert main.commands["dev"] is eventq_dev.cli.dev and main.commands["demo"] is eventq_dev.cli.demo
    output = CliRunner().invoke(main, ["--help"]).output
    assert "dev" in output and "demo" in output


@pytest.mark.parametrize("argv", [["dev", "up"], ["dev", "--help"], ["demo"], ["demo", "--events", "20"]])
def test_without_the_development_package_each_command_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    """Without eventq_dev, `eventq dev ...` and `eventq demo ...` exit 1 with one line saying what to install."""
    for name in ("eventq_dev", "eventq_dev.cli"):  # importing them now raises ModuleNotFoundError
        monkeypatch.setitem(sys.modules, name, None)
    group = click.Group("eventq")
    for command in dev_commands():
        group.add_command(command)

    result = CliRunner().invoke(group, argv)

    assert result.exit_code == 1
    assert result.output == f"Error: eventq {argv[0]} needs the development extra: pip install 'eventq[dev]'\n"
    assert "dev" not in CliRunner().invoke(group, ["--help"]).output.split("Commands:")[-1]  # hidden


def test_a_broken_development_package_is_not_taken_for_a_missing_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """An eventq_dev that imports but lacks its commands raises, instead of hiding behind the extra's hint."""
    monkeypatch.setitem(sys.modules, "eventq_dev.cli", types.ModuleType("eventq_dev.cli"))

    with pytest.raises(ImportError, match="COMMANDS"):
        dev_commands()
