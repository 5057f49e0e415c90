"""The CLI's answers to wrong usage and to failures it cannot fix: clear message, right exit code."""

from __future__ import annotations

from click.testing import CliRunner

from eventq.cli import main


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
    code, output = invoke("publish", "-t", "t", "--type", "demo.order.paid.v1", "--data", '{"order_id": "o"}')
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
