"""Reading dead letters of every dialect, stripping their headers, and showing or archiving them, without Kafka."""

from __future__ import annotations

import base64
import json
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from eventq.consumers.deadletter import DeadLetter, Failure, dead_letter_headers
from eventq.dlq.inspect import TopicSummary, archive_line
from eventq.dlq.letters import Letter, clip, parse
from eventq.kafkarecords import printable
from tests.unit.fakes import Record

SOURCE_MS = 1714564800123  # 2024-05-01T12:00:00.123Z: the failed record's own timestamp
DLT_MS = 1714564860456  # 2024-05-01T12:01:00.456Z: when it was dead-lettered
EVENT_ID = b"0190f0c2-7d3e-7a11-8b5e-3f1c2d4e5a6b"
CREATED = b"demo.order.created.v1"
ENVELOPE = [("ce_id", EVENT_ID), ("ce_type", CREATED), ("ce_correlationid", b"corr-9")]
PAYMENT_DECLINED = Failure(
    reason="exhausted",
    error_type="myservice.errors.PaymentDeclined",
    message="card 4242 declined",
    stacktrace="Traceback (most recent call last):\n  ...\nPaymentDeclined: card 4242 declined",
    handler="myservice.handlers.on_created",
    attempts=5,
    first_failure=datetime(2024, 5, 1, 12, 0, 0, 123456, UTC),
    last_failure=datetime(2024, 5, 1, 12, 0, 31, 5000, UTC),
)




def dead_letter(headers: Sequence[tuple[str, bytes | None]], *, value: bytes | None = b'{"order_id": "o-1"}') -> Record:
    return Record("orders.dlt", 1, 41, DLT_MS, b"customer-7", value, list(headers))


def eventq_headers(
    original: list[tuple[str, bytes]] | None = None, failure: Failure = PAYMENT_DECLINED
) -> list[tuple[str, bytes]]:
    """The headers eventq's own dead-letter writer puts on a record of orders/3/1207."""
    return dead_letter_headers(DeadLetter(
        topic="orders", partition=3, offset=1207, timestamp=SOURCE_MS, key=b"customer-7",
        value=b'{"order_id": "o-1"}', headers=ENVELOPE if original is None else original, group="billing",
        failure=failure,
    ))


def origin(letter: Letter) -> dict[str, object]:
    names = ("dialect", "source_topic", "source_partition", "source_offset", "source_timestamp", "group",
             "handler", "reason", "attempts", "error_type", "error_message", "stacktrace")
    return {name: getattr(letter, name) for name in names}


SPRING = [
    ("kafka_dlt-original-topic", b"orders"),
    ("kafka_dlt-original-partition", struct.pack(">i", 3)),
    ("kafka_dlt-original-offset", struct.pack(">q", 1207)),
    ("kafka_dlt-original-timestamp", struct.pack(">q", SOURCE_MS)),
    ("kafka_dlt-original-consumer-group", b"billing"),
    ("kafka_dlt-exception-fqcn", b"org.springframework.kafka.listener.ListenerExecutionFailedException"),
    ("kafka_dlt-exception-message", b"Listener method threw; card 4242 declined"),
    ("kafka_dlt-exception-stacktrace", b"org.springframework...\n\tat com.shop.Billing.onCreated(Billing.java:42)"),
]
SPRING_RETRY = [
    ("kafka_original-topic", b"orders"),
    ("kafka_original-partition", struct.pack(">i", 3)),
    ("kafka_original-offset", struct.pack(">q", 1207)),
    ("kafka_original-timestamp", struct.pack(">q", SOURCE_MS)),
    ("kafka_original-consumer-group", b"billing"),
    ("kafka_exception-fqcn", b"java.lang.IllegalStateException"),
    ("kafka_exception-message", b"card 4242 declined"),
    ("kafka_exception-stacktrace", b"java.lang.IllegalStateException: card 4242 declined"),
    ("retry_topic-attempts", struct.pack(">i", 4)),
]
KARAFKA = [
    ("source_topic", b"orders"),
    ("source_partition", b"3"),
    ("source_offset", b"1207"),
    ("source_consumer_group", b"billing"),
    ("source_attempts", b"4"),
]
KARAFKA_LEGACY = [
    ("original_topic", b"orders"),
    ("original_partition", b"3"),
    ("original_offset", b"1207"),
    ("original_consumer_group", b"billing"),
    ("original_attempts", b"4"),
]
NOTHING = {
    "handler": None, "reason": None, "attempts": None, "error_type": None, "error_message": None,
    "stacktrace": None, "source_timestamp": None,
}


# -- parse: one test per dialect ------------------------------------------------------


def test_eventq_letter_parses_everything_its_writer_wrote() -> None:
    """A record with the headers eventq's dead-letter writer produces parses to its full origin and failure."""
    headers = eventq_headers()
    record = dead_letter(headers)

    letter = parse(record)

    assert letter == Letter(
        topic="orders.dlt", partition=1, offset=41, timestamp_ms=DLT_MS, key=b"customer-7",
        value=b'{"order_id": "o-1"}', headers=tuple(headers), dialect="eventq",
        source_topic="orders", source_partition=3, source_offset=1207, source_timestamp=SOURCE_MS,
        group="billing", handler="myservice.handlers.on_created", reason="exhausted", attempts=5,
        first_failure="2024-05-01T12:00:00.123Z", last_failure="2024-05-01T12:00:31.005Z",
        error_type="myservice.errors.PaymentDeclined", error_message="card 4242 declined",
        stacktrace="Traceback (most recent call last):\n  ...\nPaymentDeclined: card 4242 declined",
        event_id=EVENT_ID.decode(), event_type=CREATED.decode(), correlation_id="corr-9",
    )
    assert letter.position == "orders.dlt/1/41"
    assert letter.time == datetime(2024, 5, 1, 12, 1, 0, 456000, UTC)


def test_eventq_letter_no_handler_ran_gives_empty_handler_and_zero_attempts() -> None:
    """An eventq letter for an invalid record (no handler ran) parses handler '' and 0 attempts, not None."""
    invalid = replace(PAYMENT_DECLINED, reason="invalid", handler="", attempts=0, stacktrace="")

    letter = parse(dead_letter(eventq_headers(failure=invalid)))

    assert (letter.reason, letter.handler, letter.attempts, letter.stacktrace) == ("invalid", "", 0, "")


def test_spring_recoverer_letter_parses_binary_positions() -> None:
    """Spring recoverer headers parse: partition from 4 binary bytes, offset and timestamp from 8."""
    letter = parse(dead_letter(ENVELOPE + SPRING))

    assert origin(letter) == {
        "dialect": "spring", "source_topic": "orders", "source_partition": 3, "source_offset": 1207,
        "source_timestamp": SOURCE_MS, "group": "billing", "handler": None, "reason": None, "attempts": None,
        "error_type": "org.springframework.kafka.listener.ListenerExecutionFailedException",
        "error_message": "Listener method threw; card 4242 declined",
        "stacktrace": "org.springframework...\n\tat com.shop.Billing.onCreated(Billing.java:42)",
    }


@pytest.mark.parametrize("partition", [0, 9, 32, 49])  # 9 is '\t', 32 ' ', 49 '1' in its last byte
def test_spring_binary_partition_whose_bytes_look_like_text(partition: int) -> None:
    """A binary partition whose last byte is whitespace or a digit character is still read as binary."""
    headers = [("kafka_dlt-original-topic", b"orders"), ("kafka_dlt-original-partition", struct.pack(">i", partition))]

    assert parse(dead_letter(headers)).source_partition == partition


def test_spring_retry_topic_letter_parses() -> None:
    """Spring retry-topic headers (kafka_original-*, kafka_exception-*, retry_topic-attempts) parse."""
    letter = parse(dead_letter(ENVELOPE + SPRING_RETRY))

    assert origin(letter) == {
        "dialect": "spring-retry", "source_topic": "orders", "source_partition": 3, "source_offset": 1207,
        "source_timestamp": SOURCE_MS, "group": "billing", "handler": None, "reason": None, "attempts": 4,
        "error_type": "java.lang.IllegalStateException", "error_message": "card 4242 declined",
        "stacktrace": "java.lang.IllegalStateException: card 4242 declined",
    }


def test_karafka_letter_parses() -> None:
    """Karafka 2.5+ source_* headers (all text) parse to the origin and attempts; Karafka records no error."""
    letter = parse(dead_letter(ENVELOPE + KARAFKA))

    assert origin(letter) == {
        "dialect": "karafka", "source_topic": "orders", "source_partition": 3, "source_offset": 1207,
        "group": "billing", **NOTHING, "attempts": 4,
    }


def test_legacy_karafka_letter_parses() -> None:
    """Karafka's pre-2.5 original_* headers parse like the newer source_* ones."""
    letter = parse(dead_letter(ENVELOPE + KARAFKA_LEGACY))

    assert origin(letter) == {
        "dialect": "karafka-legacy", "source_topic": "orders", "source_partition": 3, "source_offset": 1207,
        "group": "billing", **NOTHING, "attempts": 4,
    }


def test_record_without_dead_letter_headers_is_unknown() -> None:
    """A record no known writer dead-lettered parses as dialect 'unknown' with no origin, keeping its envelope."""
    letter = parse(dead_letter(ENVELOPE + [("traceparent", b"00-ab-cd-01")]))

    assert origin(letter) == {
        "dialect": "unknown", "source_topic": None, "source_partition": None, "source_offset": None,
        "group": None, **NOTHING,
    }
    assert (letter.event_id, letter.event_type, letter.correlation_id) == (EVENT_ID.decode(), CREATED.decode(),
                                                                           "corr-9")
    assert (letter.replay_count, letter.replays) == (0, ())


def test_record_with_no_headers_at_all() -> None:
    """A record whose headers are None or empty parses as 'unknown' with an empty header tuple."""
    headers: list[tuple[str, bytes | None]] | None
    for headers in (None, []):
        letter = parse(Record("orders.dlt", 0, 5, DLT_MS, None, None, headers))  # type: ignore[arg-type]  # None on purpose
        assert (letter.dialect, letter.headers, letter.event_id, letter.key_text) == ("unknown", (), None, None)


# -- parse: details ---------------------------------------------------------------------


def test_decimal_text_integers_parse_even_at_binary_lengths() -> None:
    """Positions written as decimal text parse as numbers, also when the text is 4 or 8 bytes long."""
    headers = [
        ("kafka_dlt-original-topic", b"orders"),
        ("kafka_dlt-original-partition", b"3"),
        ("kafka_dlt-original-offset", b"12345678"),  # 8 bytes, like a binary long
        ("kafka_dlt-original-timestamp", b"1714564800123"),
    ]

    letter = parse(dead_letter(headers))

    assert (letter.source_partition, letter.source_offset, letter.source_timestamp) == (3, 12345678, SOURCE_MS)


def test_four_byte_decimal_text_is_text() -> None:
    """A four-character decimal offset ('1207') is read as text, not as a binary int."""
    letter = parse(dead_letter([("source_topic", b"orders"), ("source_offset", b"1207")]))
    assert letter.source_offset == 1207


def test_integer_header_that_is_no_number_becomes_none() -> None:
    """An integer header that is neither decimal text nor 4/8 binary bytes gives None instead of failing."""
    letter = parse(dead_letter([("source_topic", b"orders"), ("source_partition", b"three"), ("source_attempts", b"")]))
    assert (letter.source_partition, letter.attempts) == (None, None)


def test_integer_header_with_repeated_minus_becomes_none() -> None:
    """An integer header like '--5' is not a number: it gives None instead of crashing parse."""
    letter = parse(dead_letter([("source_topic", b"orders"), ("source_partition", b"--5")]))
    assert letter.source_partition is None


def test_header_with_value_none_does_not_crash() -> None:
    """A header whose value is None reads as empty bytes: b'' in headers, None for numbers, '' for text."""
    headers: list[tuple[str, bytes | None]] = [
        ("source_topic", b"orders"), ("source_attempts", None), ("source_consumer_group", None), ("x-empty", None),
    ]

    letter = parse(dead_letter(headers))

    assert (letter.attempts, letter.group) == (None, "")
    assert letter.headers[-1] == ("x-empty", b"")


def test_replay_count_and_positions_are_read_in_order() -> None:
    """eventq-replay-count gives replay_count and every eventq-replay-from is kept, oldest first."""
    replayed = [
        ("eventq-replay-count", b"2"),
        ("eventq-replay-from", b"orders.dlt/0/17"),
        ("eventq-replay-run", b"20240501T120000-abc123"),
        ("eventq-replay-from", b"orders.dlt/2/88"),
    ]

    letter = parse(dead_letter(eventq_headers(ENVELOPE + replayed)))

    assert letter.replay_count == 2
    assert letter.replays == ("orders.dlt/0/17", "orders.dlt/2/88")


def test_first_header_of_a_name_wins() -> None:
    """When a header name repeats, parse reads its first value (the envelope's own ce_id, not a later copy)."""
    letter = parse(dead_letter([("ce_id", b"first"), ("source_topic", b"orders"), ("ce_id", b"second")]))
    assert letter.event_id == "first"


# -- Letter.original_headers ----------------------------------------------------------


def test_eventq_original_headers_drop_dead_letter_retry_and_replay_headers() -> None:
    """From an eventq letter every eventq-dlt-*, eventq-retry-* and eventq-replay-* header goes; the rest stay
    in order, with duplicates, including user headers that look like Karafka's source_*."""
    original = [
        ("ce_id", EVENT_ID),
        ("x-tag", b"a"),
        ("source_topic", b"crm-import"),  # an application header, not Karafka's: this is an eventq letter
        ("eventq-retry-attempts", b"2"),
        ("eventq-retry-due", b"1714564801000"),
        ("eventq-replay-count", b"1"),
        ("eventq-replay-from", b"orders.dlt/0/17"),
        ("traceparent", b"00-ab-cd-01"),
        ("x-tag", b"b"),
    ]

    letter = parse(dead_letter(eventq_headers(original)))

    assert letter.dialect == "eventq"
    assert letter.original_headers() == [
        ("ce_id", EVENT_ID), ("x-tag", b"a"), ("source_topic", b"crm-import"), ("traceparent", b"00-ab-cd-01"),
        ("x-tag", b"b"),
    ]


@pytest.mark.parametrize(
    ("dialect_headers", "dialect"),
    [(SPRING, "spring"), (SPRING_RETRY, "spring-retry"), (KARAFKA, "karafka"), (KARAFKA_LEGACY, "karafka-legacy")],
)
def test_other_dialects_original_headers_drop_their_own_headers(
    dialect_headers: list[tuple[str, bytes]], dialect: str
) -> None:
    """A Spring or Karafka letter loses that dialect's dead-letter headers and keeps the others in order."""
    headers = [("ce_id", EVENT_ID), ("x-tag", b"a"), *dialect_headers, ("eventq-replay-count", b"1"), ("x-tag", b"b")]

    letter = parse(dead_letter(headers))

    assert letter.dialect == dialect
    assert letter.original_headers() == [("ce_id", EVENT_ID), ("x-tag", b"a"), ("x-tag", b"b")]


def test_spring_original_headers_drop_every_spring_dead_letter_header() -> None:
    """Every kafka_dlt-* header Spring's recoverer writes is gone from a Spring letter's original headers."""
    headers = [
        ("ce_id", EVENT_ID), *SPRING,
        ("kafka_dlt-original-timestamp-type", b"CreateTime"),
        ("kafka_dlt-exception-cause-fqcn", b"java.lang.IllegalStateException"),
    ]

    letter = parse(dead_letter(headers))

    assert letter.original_headers() == [("ce_id", EVENT_ID)]


# -- Letter.as_dict -------------------------------------------------------------------


def test_as_dict_is_json_ready_with_origin_failure_and_payload() -> None:
    """as_dict of an eventq letter survives json.dumps and holds position, origin, failure, event and payload."""
    letter = parse(dead_letter(eventq_headers(ENVELOPE + [("eventq-replay-count", b"1"),
                                                           ("eventq-replay-from", b"orders.dlt/0/17")])))

    view = json.loads(json.dumps(letter.as_dict()))

    assert view["position"] == {"topic": "orders.dlt", "partition": 1, "offset": 41}
    assert view["dead_lettered_at"] == "2024-05-01T12:01:00.456+00:00"
    assert view["dialect"] == "eventq"
    assert view["source"] == {"topic": "orders", "partition": 3, "offset": 1207, "timestamp": SOURCE_MS,
                              "consumer_group": "billing"}
    assert view["event"] == {"id": EVENT_ID.decode(), "type": CREATED.decode(), "correlation_id": "corr-9",
                             "key": "customer-7"}
    assert view["failure"]["error_type"] == "myservice.errors.PaymentDeclined"
    assert (view["failure"]["attempts"], view["failure"]["first"]) == (5, "2024-05-01T12:00:00.123Z")
    assert view["replay"] == {"count": 1, "from": ["orders.dlt/0/17"]}
    assert view["payload"] == {"order_id": "o-1"}
    assert view["headers"]["eventq-dlt-offset"] == "1207"


@pytest.mark.parametrize(
    ("value", "payload"),
    [
        (b'{"order_id": "o-1", "amount_cents": 1250}', {"order_id": "o-1", "amount_cents": 1250}),
        (b"[1, 2]", [1, 2]),
        (b"order o-1 paid", "order o-1 paid"),
        ("caf\u00e9 cr\u00e8me".encode(), "caf\u00e9 cr\u00e8me"),
        (b"\x80\x81\xfe", "base64:" + base64.b64encode(b"\x80\x81\xfe").decode()),
        (None, None),
    ],
    ids=["json-object", "json-array", "text", "utf8-text", "binary", "tombstone"],
)
def test_as_dict_payload(value: bytes | None, payload: object) -> None:
    """The payload is parsed JSON when the value is JSON, text when it is other UTF-8, base64:… when binary."""
    view = parse(dead_letter(KARAFKA, value=value)).as_dict()

    assert view["payload"] == payload
    json.dumps(view)


def test_as_dict_shows_non_utf8_header_values_as_base64() -> None:
    """A header that is not UTF-8 (Spring's binary timestamp) appears as base64:… in as_dict, text as text."""
    view = parse(dead_letter(SPRING)).as_dict()

    assert view["headers"]["kafka_dlt-original-timestamp"] == "base64:AAABjzQGnns="  # 00 00 01 8f 34 06 9e 7b
    assert view["headers"]["kafka_dlt-original-topic"] == "orders"
    json.dumps(view)


# -- archive_line ---------------------------------------------------------------------


def test_archive_line_keeps_the_exact_bytes() -> None:
    """An archive line decodes back to the letter's exact key, value and headers (binary, repeated, empty)."""
    headers = [("ce_id", EVENT_ID), ("x-tag", b"a"), *SPRING, ("x-blob", b"\x00\xff\x10"), ("x-tag", b"b"),
               ("x-empty", None)]
    letter = parse(Record("orders.dlt", 2, 77, DLT_MS, b"\xfe\xffkey", b"\x00\x01binary\xff", headers))

    line = archive_line(letter)

    assert "\n" not in line
    record = json.loads(line)["record"]
    assert base64.b64decode(record["key"]) == b"\xfe\xffkey"
    assert base64.b64decode(record["value"]) == b"\x00\x01binary\xff"
    assert [(name, base64.b64decode(raw)) for name, raw in record["headers"]] == list(letter.headers)
    assert [name for name, _ in record["headers"]] == [name for name, _ in headers]
    assert record["timestamp_ms"] == DLT_MS
    assert json.loads(line)["position"] == {"topic": "orders.dlt", "partition": 2, "offset": 77}


def test_archive_line_of_a_tombstone_without_key() -> None:
    """A letter without key or value archives both as null."""
    line = archive_line(parse(Record("orders.dlt", 0, 3, DLT_MS, None, None, [])))
    assert json.loads(line)["record"] == {"key": None, "value": None, "headers": [], "timestamp_ms": DLT_MS}


# -- TopicSummary ---------------------------------------------------------------------


def test_topic_summary_counts_and_groups_letters() -> None:
    """TopicSummary counts letters, keeps the oldest and newest time, and groups by (error type, handler)."""
    declined = parse(dead_letter(eventq_headers()))
    later = replace(declined, timestamp_ms=DLT_MS + 3_600_000, offset=42)
    earlier = replace(parse(dead_letter(KARAFKA)), timestamp_ms=DLT_MS - 60_000, offset=40)
    unknown = replace(parse(dead_letter([])), timestamp_ms=DLT_MS + 1_000, offset=43)
    summary = TopicSummary("orders.dlt")

    for letter in (declined, later, earlier, unknown):
        summary.add(letter)

    assert summary.count == 4
    assert summary.oldest == datetime(2024, 5, 1, 12, 0, 0, 456000, UTC)
    assert summary.newest == datetime(2024, 5, 1, 13, 1, 0, 456000, UTC)
    assert summary.by_failure == Counter({
        ("myservice.errors.PaymentDeclined", "myservice.handlers.on_created"): 2, ("?", "-"): 2,
    })
    assert summary.by_reason == Counter({"exhausted": 2, "karafka": 1, "unknown": 1})
    assert summary.sources == Counter({"orders": 3, "?": 1})
    assert json.loads(json.dumps(summary.as_dict()))["by_failure"][0] == {
        "error_type": "myservice.errors.PaymentDeclined", "handler": "myservice.handlers.on_created", "count": 2,
    }


def test_empty_topic_summary() -> None:
    """A summary with no letters has count 0 and no oldest or newest time."""
    view = TopicSummary("orders.dlt").as_dict()
    assert (view["count"], view["oldest"], view["newest"], view["by_failure"]) == (0, None, None, [])


# -- hostile letters: parse never raises, odd timestamps and header names (issue 12) ----

YEAR_ZERO_MS = -62135683200000  # a day before 0001-01-01T00:00Z: beyond datetime
BAD_NAME = b"\xff\xfe".decode("utf-8", "surrogateescape")  # how eventq.kafka.consumer reads name b"\xff\xfe"


def test_timestamp_before_year_one_is_clamped_and_shown_raw() -> None:
    """A letter timestamped before year 1 parses; its time is datetime.min (UTC), time_text shows the raw ms."""
    letter = parse(Record("orders.dlt", 0, 5, YEAR_ZERO_MS, b"k", b"{}", list(KARAFKA)))

    assert (letter.dialect, letter.time_known) == ("karafka", False)
    assert letter.time == datetime.min.replace(tzinfo=UTC)
    assert letter.time_text == "timestamp -62135683200000 ms (out of range)"
    assert letter.problems() == ["timestamp -62135683200000 ms is out of range"]


def test_timestamp_after_year_9999_is_clamped_to_the_latest_time() -> None:
    """A letter timestamped after year 9999 sorts after every real time (datetime.max, UTC)."""
    letter = parse(Record("orders.dlt", 0, 5, 2**62, None, None, []))

    assert letter.time == datetime.max.replace(tzinfo=UTC) and not letter.time_known


def test_as_dict_of_an_out_of_range_timestamp_is_json_with_null_time_and_raw_ms() -> None:
    """as_dict of a year-0 letter survives json.dumps: dead_lettered_at null, timestamp_ms the raw value."""
    view = json.loads(json.dumps(parse(Record("orders.dlt", 0, 5, YEAR_ZERO_MS, None, None, [])).as_dict()))

    assert (view["dead_lettered_at"], view["timestamp_ms"]) == (None, YEAR_ZERO_MS)


@pytest.mark.parametrize(
    ("record", "why"),
    [
        (Record("orders.dlt", 2, 9, DLT_MS, b"k", b"v", 42), "TypeError"),  # type: ignore[arg-type]
        (Record("orders.dlt", 2, 9, DLT_MS, b"k", b"v", [("ce_id", 7)]), "AttributeError"),  # type: ignore[list-item]
        (Record("orders.dlt", 2, 9, DLT_MS, "text key", b"v", []), "key is str"),  # type: ignore[arg-type]
        (Record("orders.dlt", 2, 9, "noon", b"k", b"v", []), "timestamp is str"),  # type: ignore[arg-type]
        (Record("orders.dlt", 2, 9, DLT_MS, b"k", b"v", [(b"raw", b"v")]), "not (str, bytes)"),  # type: ignore[list-item]
    ],
    ids=["headers-not-a-list", "header-value-int", "key-str", "timestamp-str", "header-name-bytes"],
)
def test_parse_never_raises_and_marks_what_it_cannot_read(record: Record, why: str) -> None:
    """A record parse cannot read becomes an 'unreadable' letter at its position, saying why."""
    letter = parse(record)

    assert (letter.dialect, letter.position) == ("unreadable", "orders.dlt/2/9")
    assert letter.unreadable is not None and why in letter.unreadable
    assert letter.problems()[0].startswith("unreadable: ")
    json.dumps(letter.as_dict())


def test_parse_of_an_object_that_is_no_record_keeps_what_it_can() -> None:
    """Something without record attributes parses as unreadable at '?/-1/-1' instead of raising."""
    letter = parse(object())

    assert (letter.dialect, letter.position, letter.headers) == ("unreadable", "?/-1/-1", ())
    assert letter.unreadable == "AttributeError: 'object' object has no attribute 'headers'"


def test_display_name_renders_undecodable_bytes_as_replacement_characters() -> None:
    """A header name read with surrogateescape prints as U+FFFD; a normal name is unchanged."""
    assert printable(BAD_NAME) == "\ufffd\ufffd"
    assert printable("x-\udcffname") == "x-\ufffdname"
    assert printable("ce_id") == "ce_id"
    assert printable("\ud800") == "\ufffd\ufffd\ufffd"  # not a surrogateescape surrogate: still no error


def test_as_dict_of_a_letter_with_an_undecodable_header_name_is_json() -> None:
    """as_dict shows a non-UTF-8 header name with U+FFFD, and the letter reports one such name."""
    letter = parse(dead_letter([*KARAFKA, (BAD_NAME, b"x")]))

    view = json.loads(json.dumps(letter.as_dict(), ensure_ascii=False))

    assert view["headers"]["\ufffd\ufffd"] == "x"
    assert letter.undecodable_names == 1
    assert letter.problems() == ["1 header name(s) not UTF-8"]


def test_archive_line_keeps_the_bytes_of_an_undecodable_header_name() -> None:
    """An archived header whose name is not UTF-8 carries the name's bytes (base64) as a third element."""
    line = archive_line(parse(dead_letter([(BAD_NAME, b"x"), ("ok", b"y")])))

    headers = json.loads(line)["record"]["headers"]

    assert headers[0] == ["\ufffd\ufffd", base64.b64encode(b"x").decode(), base64.b64encode(b"\xff\xfe").decode()]
    assert headers[1] == ["ok", base64.b64encode(b"y").decode()]


def test_spring_letter_carries_the_cause_class() -> None:
    """Spring's kafka_dlt-exception-cause-fqcn is the letter's cause_type, next to the wrapper's error_type."""
    cause = ("kafka_dlt-exception-cause-fqcn", b"com.shop.PaymentDeclined")

    letter = parse(dead_letter([*SPRING, cause]))

    assert letter.error_type == "org.springframework.kafka.listener.ListenerExecutionFailedException"
    assert letter.cause_type == "com.shop.PaymentDeclined"
    assert letter.as_dict()["failure"]["cause_type"] == "com.shop.PaymentDeclined"


def test_spring_retry_letter_reads_the_cause_and_springs_consumer_group_header() -> None:
    """A retry-topic letter reads kafka_exception-cause-fqcn, and its group from kafka_dlt-original-consumer-group
    (Spring's ORIGINAL_CONSUMER_GROUP constant), which replay then drops."""
    headers = [
        ("kafka_original-topic", b"orders"), ("kafka_exception-fqcn", b"org.springframework.kafka.KafkaException"),
        ("kafka_exception-cause-fqcn", b"java.lang.IllegalStateException"),
        ("kafka_dlt-original-consumer-group", b"billing"), ("x-tag", b"a"),
    ]

    letter = parse(dead_letter(headers))

    assert (letter.dialect, letter.group, letter.cause_type) == (
        "spring-retry", "billing", "java.lang.IllegalStateException"
    )
    assert letter.original_headers() == [("x-tag", b"a")]


def test_karafka_letters_carry_no_error_or_cause_class() -> None:
    """Karafka writes no error headers, so its letters have neither error_type nor cause_type."""
    letter = parse(dead_letter(KARAFKA))
    assert (letter.error_type, letter.cause_type) == (None, None)


def test_clip_bounds_text_and_says_how_long_it_was() -> None:
    """clip keeps text up to 200 characters whole and cuts longer text to 200 plus its length."""
    assert clip("a" * 200) == "a" * 200
    assert clip("b" * 5000) == "b" * 200 + "…[5000 chars]"
    assert clip(None) is None


def test_topic_summary_lists_hostile_letters_and_keeps_real_times() -> None:
    """A summary counts an out-of-range and an unreadable letter, lists them by position, and its oldest
    time stays the oldest real one."""
    summary = TopicSummary("orders.dlt")
    good = parse(dead_letter(eventq_headers()))
    year_zero = parse(Record("orders.dlt", 0, 5, YEAR_ZERO_MS, None, None, []))
    broken = parse(Record("orders.dlt", 2, 9, DLT_MS, b"k", b"v", 42))  # type: ignore[arg-type]

    for letter in (good, year_zero, broken):
        summary.add(letter)

    assert summary.count == 3
    assert summary.oldest == summary.newest == datetime(2024, 5, 1, 12, 1, 0, 456000, UTC)
    assert summary.problem_count == 2
    assert summary.problems[0] == ("orders.dlt/0/5", "timestamp -62135683200000 ms is out of range")
    assert summary.problems[1][0] == "orders.dlt/2/9" and summary.problems[1][1].startswith("unreadable: TypeError")
    assert summary.by_reason["unreadable"] == 1
    assert json.loads(json.dumps(summary.as_dict()))["problem_count"] == 2
