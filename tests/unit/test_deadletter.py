"""Dead-letter records: original headers kept, failure headers added, long texts bounded."""

from __future__ import annotations

from datetime import UTC, datetime

from eventq.consumers.deadletter import (
    MAX_MESSAGE_BYTES,
    MAX_STACK_BYTES,
    DeadLetter,
    Failure,
    dead_letter_headers,
)

DOCUMENTED = [
    "eventq-dlt-topic",
    "eventq-dlt-partition",
    "eventq-dlt-offset",
    "eventq-dlt-timestamp",
    "eventq-dlt-group",
    "eventq-dlt-handler",
    "eventq-dlt-reason",
    "eventq-dlt-attempts",
    "eventq-dlt-first-failure",
    "eventq-dlt-last-failure",
    "eventq-dlt-error-type",
    "eventq-dlt-error-message",
    "eventq-dlt-stacktrace",
]


class PaymentDeclined(Exception):
    pass


def charge_card() -> None:
    raise PaymentDeclined("card 4242 declined")


def letter(failure: Failure, headers: list[tuple[str, bytes]] | None = None) -> DeadLetter:
    return DeadLetter(
        topic="orders",
        partition=3,
        offset=1207,
        timestamp=1714564800123,
        key=b"customer-7",
        value=b'{"order_id": "o-1"}',
        headers=headers if headers is not None else [("ce_id", b"0190")],
        group="billing",
        failure=failure,
    )


def failure(**overrides: object) -> Failure:
    fields: dict[str, object] = {
        "reason": "exhausted",
        "error_type": "myservice.errors.PaymentDeclined",
        "message": "card declined",
        "stacktrace": "Traceback ...",
        "handler": "myservice.handlers.on_created",
        "attempts": 5,
        "first_failure": datetime(2024, 5, 1, 12, 0, 0, 123456, UTC),
        "last_failure": datetime(2024, 5, 1, 12, 0, 31, 5000, UTC),
    }
    fields.update(overrides)
    return Failure(**fields)  # type: ignore[arg-type]


def test_original_headers_come_first_in_order_with_duplicates() -> None:
    """Every original header is kept, in order and with repeats, ahead of the failure headers."""
    original = [("ce_id", b"0190"), ("x-tag", b"a"), ("traceparent", b"00-ab"), ("x-tag", b"b")]

    headers = dead_letter_headers(letter(failure(), original))

    assert headers[: len(original)] == original
    assert [name for name, _ in headers[len(original):]] == DOCUMENTED


def test_headers_of_an_earlier_dead_lettering_are_replaced() -> None:
    """eventq-dlt-* headers from an earlier failure (a replayed dead letter) are dropped, not repeated."""
    original = [
        ("ce_id", b"0190"),
        ("eventq-dlt-reason", b"rejected"),
        ("x-tag", b"a"),
        ("eventq-dlt-attempts", b"1"),
    ]

    headers = dead_letter_headers(letter(failure(), original))

    assert headers[:2] == [("ce_id", b"0190"), ("x-tag", b"a")]
    names = [name for name, _ in headers]
    assert names.count("eventq-dlt-reason") == 1 and names.count("eventq-dlt-attempts") == 1
    assert dict(headers)["eventq-dlt-reason"] == b"exhausted"


def test_failure_headers_carry_source_and_failure() -> None:
    """Each documented header holds the source position, group, handler and failure details as text."""
    headers = dict(dead_letter_headers(letter(failure())))

    assert {name: headers[name] for name in DOCUMENTED} == {
        "eventq-dlt-topic": b"orders",
        "eventq-dlt-partition": b"3",
        "eventq-dlt-offset": b"1207",
        "eventq-dlt-timestamp": b"1714564800123",
        "eventq-dlt-group": b"billing",
        "eventq-dlt-handler": b"myservice.handlers.on_created",
        "eventq-dlt-reason": b"exhausted",
        "eventq-dlt-attempts": b"5",
        "eventq-dlt-first-failure": b"2024-05-01T12:00:00.123Z",
        "eventq-dlt-last-failure": b"2024-05-01T12:00:31.005Z",
        "eventq-dlt-error-type": b"myservice.errors.PaymentDeclined",
        "eventq-dlt-error-message": b"card declined",
        "eventq-dlt-stacktrace": b"Traceback ...",
    }


def test_no_handler_means_empty_handler_and_zero_attempts() -> None:
    """A record no handler ran for (invalid, unknown type) says so: empty handler, 0 attempts."""
    headers = dict(dead_letter_headers(letter(failure(reason="invalid", handler="", attempts=0, stacktrace=""))))
    assert (headers["eventq-dlt-handler"], headers["eventq-dlt-attempts"]) == (b"", b"0")
    assert headers["eventq-dlt-stacktrace"] == b""


def test_long_message_keeps_its_first_2000_bytes() -> None:
    """An error message over 2,000 bytes is cut to its beginning."""
    message = "declined: " + "x" * 5000
    clipped = dict(dead_letter_headers(letter(failure(message=message))))["eventq-dlt-error-message"]
    assert clipped == message.encode()[:MAX_MESSAGE_BYTES]
    assert MAX_MESSAGE_BYTES == 2000


def test_message_cut_inside_a_character_stays_valid_utf8() -> None:
    """Cutting a message inside a multi-byte character drops the partial character."""
    message = "a" + "é" * 1500  # 3,001 bytes; byte 2,000 is the first half of an é

    clipped = dict(dead_letter_headers(letter(failure(message=message))))["eventq-dlt-error-message"]

    assert clipped.decode("utf-8") == "a" + "é" * 999
    assert len(clipped) == 1999


def test_long_stacktrace_keeps_its_last_8000_bytes() -> None:
    """A traceback over 8,000 bytes keeps its tail (the innermost frames), valid UTF-8 even mid-character."""
    innermost = "\n  in charge_card: PaymentDeclined!"  # 35 bytes: the cut lands inside an é
    stack = "Traceback (outermost)\n" + "é" * 5000 + innermost

    clipped = dict(dead_letter_headers(letter(failure(stacktrace=stack))))["eventq-dlt-stacktrace"]

    text = clipped.decode("utf-8")  # raises if a partial character was left at the start
    assert MAX_STACK_BYTES == 8000
    assert text == "é" * 3982 + innermost  # 7,999 bytes: the half character at the cut is gone


def test_failure_from_a_raised_exception() -> None:
    """Failure.from_exception records the module-qualified type, the message and a traceback naming the raiser."""
    try:
        charge_card()
    except PaymentDeclined as exc:
        caught = exc
    first = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

    result = Failure.from_exception(
        "exhausted", caught, handler="myservice.handlers.on_created", attempts=3, first_failure=first
    )

    assert result.reason == "exhausted"
    assert result.error_type == f"{__name__}.PaymentDeclined"
    assert result.message == "card 4242 declined"
    assert "in charge_card" in result.stacktrace
    assert result.stacktrace.rstrip().endswith("PaymentDeclined: card 4242 declined")
    assert (result.handler, result.attempts, result.first_failure) == ("myservice.handlers.on_created", 3, first)
    assert result.last_failure is not None and result.last_failure >= first


def test_failure_from_an_exception_never_raised_has_no_traceback() -> None:
    """An exception that was built but not raised gives an empty stacktrace and builtins-qualified type."""
    result = Failure.from_exception("invalid", ValueError("bad envelope"))
    assert (result.error_type, result.message, result.stacktrace) == ("builtins.ValueError", "bad envelope", "")
    assert result.first_failure == result.last_failure
