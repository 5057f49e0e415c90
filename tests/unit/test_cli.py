"""The CLI's answers to wrong usage and to failures it cannot fix: clear message, right exit code."""

from __future__ import annotations

import click
from click.testing import CliRunner

from eventq.cli import main
from eventq_dev.demo import SCHEMAS as DEMO_SCHEMAS


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env={"EVENTQ_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    return result.exit_code, result.output


def test_bad_json_payload_is_a_usage_error() -> None:
    """--data that is not JSON exits 2 naming the option and showing an example."""
    code, output = invoke("publish", "-t", "t", "--type", "eventq.ping.v1", "--data", "{oops")
    assert code == 2
    assert "--data" in output and "not valid JSON" in output


def test_missing_required_option_is_a_usage_error() -> None:
    """publish without --type exits 2 and names the missing option."""
    code, output = invoke("publish", "-t", "t")
    assert code == 2
    assert "Missing option '--type'" in output


def test_schema_violation_exits_1_before_contacting_the_broker() -> None:
    """A payload that breaks its schema is reported (exit 1) even with no broker reachable."""
    code, output = invoke("publish", "-t", "t", "--type", "demo.order.paid.v1", "--data", '{"order_id": "o"}',
                          *(f"--schemas={s}" for s in DEMO_SCHEMAS))
    assert code == 1
    assert "violates its schema" in output and "amount_cents" in output


def test_unreachable_broker_exits_1_with_what_to_do() -> None:
    """With no broker at the address, publish exits 1 and says how to start one."""
    code, output = invoke("publish", "-t", "t", "--type", "eventq.ping.v1")
    assert code == 1
    assert "cannot reach a Kafka broker at 127.0.0.1:1" in output and "eventq dev up" in output


def test_invalid_bootstrap_setting_exits_1_naming_the_variable() -> None:
    """A malformed --bootstrap-servers is a one-line error naming the setting."""
    code, output = invoke("topics", "create", "x", "--bootstrap-servers", "nohostport")
    assert code == 1
    assert "EVENTQ_BOOTSTRAP_SERVERS" in output


def test_purge_age_must_be_a_duration() -> None:
    """`eventq db purge --older-than` rejects anything but N followed by d, h, m or s (exit 2)."""
    for bad in ("30", "3x", "0d", "-1d"):
        code, output = invoke("db", "purge", "--older-than", bad)
        assert code == 2 and "is not a duration" in output, bad


def test_purge_age_is_bounded() -> None:
    """An age too large for a datetime (99999999999d) is a usage error, not an OverflowError."""
    code, output = invoke("db", "purge", "--older-than", "99999999999d")
    assert code == 2 and "longer than 36500d" in output


def test_dlq_age_is_bounded() -> None:
    """`dlq replay --since` with an absurd age is a usage error naming the option."""
    code, output = invoke("dlq", "replay", "t.dlt", "--since", "99999999999d", "--dry-run")
    assert code == 2 and "--since" in output and "more than 36500d" in output


def test_publish_reads_the_topic_and_producer_variables() -> None:
    """publish takes its topic from EVENTQ_TOPIC and refuses a bad producer variable by name."""
    runner = CliRunner()
    env = {"EVENTQ_BOOTSTRAP_SERVERS": "127.0.0.1:1", "EVENTQ_TOPIC": "orders",
           "EVENTQ_SCHEMAS": ",".join(DEMO_SCHEMAS)}
    result = runner.invoke(main, ["publish", "--type", "demo.order.paid.v1", "--data", "{}"], env=env)
    assert result.exit_code == 1 and "violates its schema" in result.output  # got past the topic check
    result = runner.invoke(main, ["publish", "--type", "eventq.ping.v1"], env={**env, "EVENTQ_LINGER_MS": "-5"})
    assert result.exit_code == 1 and "EVENTQ_LINGER_MS=-5 is below the minimum of 0" in result.output


def test_log_level_variable_is_checked_by_name() -> None:
    """A bad EVENTQ_LOG_LEVEL is one Error line naming the variable (exit 1)."""
    result = CliRunner().invoke(main, ["dlq", "list"], env={"EVENTQ_LOG_LEVEL": "LOUD"})
    assert result.exit_code == 1 and "EVENTQ_LOG_LEVEL='LOUD' is unknown" in result.output


def _group_raising(exc: BaseException) -> click.Group:
    from eventq.clikit import Group

    @click.group(cls=Group)
    @click.option("--traceback", is_flag=True)
    def cli(traceback: bool) -> None:
        pass

    @cli.command()
    def boom() -> None:
        raise exc

    return cli


def test_unexpected_exception_becomes_one_redacted_line() -> None:
    """Any unexpected exception ends as `Error: unexpected <Type>: <msg>` (redacted), exit 1, no traceback."""
    result = CliRunner().invoke(_group_raising(RuntimeError("dsn postgresql://u:pw9@h/db")), ["boom"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(
        "Error: unexpected RuntimeError: dsn postgresql://u:***@h/db"
    )
    assert "--traceback" in result.output and "Traceback" not in result.output and "pw9" not in result.output


def test_traceback_flag_prints_the_redacted_traceback() -> None:
    """With --traceback the full traceback is printed (redacted) before the Error line."""
    result = CliRunner().invoke(_group_raising(RuntimeError("postgresql://u:pw9@h/db")), ["--traceback", "boom"])
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.output and "pw9" not in result.output


def test_keyboard_interrupt_exits_130_quietly() -> None:
    """Ctrl-C (KeyboardInterrupt) exits 130 and prints nothing."""
    result = CliRunner().invoke(_group_raising(KeyboardInterrupt()), ["boom"])
    assert (result.exit_code, result.output) == (130, "")


def test_click_errors_are_redacted_too() -> None:
    """A ClickException whose text holds a URL password is printed with it masked."""
    result = CliRunner().invoke(_group_raising(click.ClickException("at postgresql://u:pw9@h/db")), ["boom"])
    assert result.exit_code == 1 and "u:***@h" in result.output and "pw9" not in result.output
