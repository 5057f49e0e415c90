"""The envelope: encode/decode round trips and every malformed-input case."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from eventq.errors import EventTooLarge, InvalidEvent
from eventq.schemas import Event, caused_by, current_cause, decode, encode
from eventq.schemas.envelope import encode_parts, new_event_id


def order(**overrides: object) -> Event:
    fields: dict[str, object] = {
        "type": "demo.order.created.v1",
        "source": "orders-service",
        "key": "customer-7",
        "data": {"order_id": "o-1", "customer_id": "customer-7", "amount_cents": 1250, "currency": "EUR"},
    }
    fields.update(overrides)
    return Event(**fields)  # type: ignore[arg-type]


def headers_of(event: Event) -> dict[str, bytes]:
    return dict(encode(event).headers)


def test_round_trip_keeps_every_field() -> None:
    """Decoding an encoded event gives back an equal event, with all attributes."""
    event = order(subject="o-1", causation_id="c-1", correlation_id="flow-1",
                  traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", tracestate="k=v")
    record = encode(event)
    assert decode(record.key, record.value, record.headers) == event


def test_binary_mode_headers_follow_cloudevents_kafka_binding() -> None:
    """Attributes travel as ce_ headers, the key is the partition key, the value is the JSON payload."""
    event = order()
    record = encode(event)
    headers = dict(record.headers)
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_id"] == event.id.encode()
    assert headers["ce_source"] == b"orders-service"
    assert headers["ce_type"] == b"demo.order.created.v1"
    assert datetime.fromisoformat(headers["ce_time"].decode()) == event.time
    assert headers["content-type"] == b"application/json"
    assert headers["ce_correlationid"] == event.id.encode()
    assert "ce_causationid" not in headers
    assert record.key == b"customer-7"
    assert orjson.loads(record.value) == event.data
    assert record.timestamp_ms == int(event.time.timestamp() * 1000)


def test_event_ids_are_uuid7_and_sort_by_creation() -> None:
    """New ids are version-7 UUIDs whose text order is creation order."""
    ids = [new_event_id() for _ in range(200)]
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == 200


def test_root_event_is_its_own_correlation() -> None:
    """Outside a handler, an event's correlation id is its own id and it has no cause."""
    event = order()
    assert event.correlation_id == event.id
    assert event.causation_id is None


def test_follow_up_inherits_correlation_and_causation_from_context() -> None:
    """Inside caused_by(), a new event takes the handled event's correlation id and its id as cause."""
    handled = order(correlation_id="flow-42")
    with caused_by(handled.id, "flow-42"):
        follow_up = order(type="demo.order.paid.v1", data={"order_id": "o-1", "amount_cents": 1})
    assert follow_up.correlation_id == "flow-42"
    assert follow_up.causation_id == handled.id
    assert current_cause() is None


def test_explicit_ids_win_over_context() -> None:
    """Ids passed by the caller are kept even inside caused_by()."""
    with caused_by("cause-1", "flow-1"):
        event = order(correlation_id="mine", causation_id="other")
    assert (event.correlation_id, event.causation_id) == ("mine", "other")


def test_trace_headers_are_added_only_when_event_has_none() -> None:
    """Current trace context is injected unless the event already carries a traceparent."""
    trace = [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
    assert dict(encode(order(), trace_headers=trace).headers)["traceparent"] == trace[0][1]
    own = "00-11111111111111111111111111111111-2222222222222222-01"
    assert dict(encode(order(traceparent=own), trace_headers=trace).headers)["traceparent"] == own.encode()


def test_naive_time_is_rejected() -> None:
    """An event time without a timezone is refused at construction."""
    with pytest.raises(InvalidEvent, match="timezone-aware"):
        order(time=datetime(2026, 1, 1))


def test_non_json_payload_cannot_be_encoded() -> None:
    """A payload that JSON cannot express raises InvalidEvent naming the type."""
    with pytest.raises(InvalidEvent, match="not JSON-serialisable"):
        encode(order(data={"when": object()}))


def test_oversized_event_cannot_be_encoded() -> None:
    """An event over max_event_bytes raises EventTooLarge with both sizes."""
    with pytest.raises(EventTooLarge) as info:
        encode(order(data={"blob": "x" * 5000}), max_event_bytes=4096)
    assert info.value.limit == 4096
    assert info.value.size > 5000


def record_with(**changes: bytes | None) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    record = encode(order())
    headers = dict(record.headers)
    value: bytes | None = record.value
    for name, raw in changes.items():
        if name == "value":
            value = raw
        elif raw is None:
            headers.pop(name.replace("__", "-"), None)
        else:
            headers[name.replace("__", "-")] = raw
    return record.key, value, list(headers.items())


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"ce_id": None}, "missing or empty ce_id"),
        ({"ce_type": None, "ce_source": None}, "missing or empty ce_source, ce_type"),
        ({"ce_specversion": None}, "missing or empty ce_specversion"),
        ({"ce_specversion": b"0.3"}, "unsupported ce_specversion '0.3'"),
        ({"ce_time": b"yesterday"}, "ce_time 'yesterday' is not an RFC 3339 timestamp"),
        ({"ce_time": b"2026-01-01T00:00:00"}, "has no UTC offset"),
        ({"ce_time": b""}, "ce_time '' is not an RFC 3339 timestamp"),
        ({"content__type": b"application/avro"}, "unsupported content-type 'application/avro'"),
        ({"content__type": b"text/plain"}, "unsupported content-type 'text/plain'; eventq payloads are JSON"),
        ({"content__type": b"application/json; charset=iso-8859-1"}, "is not UTF-8"),
        ({"content__type": b"application/cloudevents-batch+json"}, "'application/cloudevents-batch+json' is not"),
        ({"value": b"{not json"}, "payload is not valid JSON"),
        ({"value": None}, "tombstone"),
        ({"ce_source": b"\xff\xfe"}, "header 'ce_source' is not valid UTF-8"),
        ({"ce_type": b""}, "missing or empty ce_type"),
        ({"ce_id": b""}, "missing or empty ce_id"),
    ],
)
def test_malformed_records_raise_invalid_event_with_reason(changes: dict[str, bytes | None], reason: str) -> None:
    """Each way a record can be malformed raises InvalidEvent, and the reason names the defect."""
    key, value, headers = record_with(**changes)
    with pytest.raises(InvalidEvent) as info:
        decode(key, value, headers)
    assert reason in info.value.reason


def test_oversized_record_is_rejected_on_decode() -> None:
    """A record larger than max_event_bytes is InvalidEvent before it is parsed."""
    record = encode(order(data={"blob": "x" * 3000}))
    with pytest.raises(InvalidEvent, match="over max_event_bytes=2048"):
        decode(record.key, record.value, record.headers, max_event_bytes=2048)


def test_non_utf8_key_is_rejected() -> None:
    """A binary record key is InvalidEvent: eventq keys are text."""
    record = encode(order())
    with pytest.raises(InvalidEvent, match="key is not valid UTF-8"):
        decode(b"\xff", record.value, record.headers)


def test_later_duplicate_header_cannot_override_envelope() -> None:
    """If a header repeats, the first occurrence is the envelope's value."""
    event = order()
    record = encode(event)
    forged = [*record.headers, ("ce_type", b"admin.granted.v1")]
    assert decode(record.key, record.value, forged).type == "demo.order.created.v1"


def test_decode_accepts_zulu_time_from_other_producers() -> None:
    """ce_time written with a 'Z' suffix (as other CloudEvents SDKs do) decodes to UTC."""
    key, value, headers = record_with(ce_time=b"2026-11-28T10:00:00.5Z")
    assert decode(key, value, headers).time == datetime(2026, 11, 28, 10, 0, 0, 500000, tzinfo=UTC)


def test_times_are_kept_to_the_millisecond_like_the_wire() -> None:
    """Sub-millisecond digits are dropped at construction, so a decoded event equals the original."""
    event = order(time=datetime(2026, 11, 28, 10, 0, 0, 123456, tzinfo=UTC))
    assert event.time.microsecond == 123000
    record = encode(event)
    assert dict(record.headers)["ce_time"] == b"2026-11-28T10:00:00.123Z"
    assert decode(record.key, record.value, record.headers).time == event.time


# -- CloudEvents 1.0 as other producers write it ----------------------------------------

RECORD_TIME = datetime(2026, 11, 28, 10, 0, 0, 250000, tzinfo=UTC)
RECORD_TIMESTAMP_MS = 1795860000250  # RECORD_TIME in milliseconds


def foreign_headers(**attributes: bytes) -> list[tuple[str, bytes]]:
    """Binary-mode headers as a Java or Go producer writes them: required attributes only, no time."""
    headers = {"ce_specversion": b"1.0", "ce_id": b"A234-1234-1234", "ce_source": b"/mycontext",
               "ce_type": b"com.example.someevent"}
    headers.update(attributes)
    return list(headers.items())


def test_record_timestamp_is_the_time_of_an_event_without_ce_time() -> None:
    """An event without ce_time (optional in CloudEvents) takes the record timestamp as its time."""
    event = decode(b"k", b'{"a": 1}', foreign_headers(), timestamp_ms=RECORD_TIMESTAMP_MS)
    assert event.time == RECORD_TIME
    assert (event.id, event.source, event.type, event.data, event.key) == (
        "A234-1234-1234", "/mycontext", "com.example.someevent", {"a": 1}, "k"
    )


@pytest.mark.parametrize("timestamp_ms", [None, -1])
def test_event_without_time_or_record_timestamp_gets_the_decoding_time(timestamp_ms: int | None) -> None:
    """With neither ce_time nor a record timestamp (None, or -1 from Kafka), the time is when it was decoded."""
    before = datetime.now(UTC).replace(microsecond=0)
    event = decode(None, b"{}", foreign_headers(), timestamp_ms=timestamp_ms)
    assert before <= event.time <= datetime.now(UTC)


def test_ce_time_wins_over_the_record_timestamp() -> None:
    """When ce_time is present it is the event's time, whatever the record timestamp says."""
    event = decode(None, b"{}", foreign_headers(ce_time=b"2020-01-01T00:00:00Z"), timestamp_ms=RECORD_TIMESTAMP_MS)
    assert event.time == datetime(2020, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "event_id",
    ["A234-1234-1234", "0190A0B2-7C3D-7E4F-8A5B-6C7D8E9F0A1B", "{0190a0b2-7c3d-7e4f-8a5b-6c7d8e9f0a1b}", "42"],
)
def test_any_non_empty_id_is_kept_exactly_as_sent(event_id: str) -> None:
    """CloudEvents ids are opaque strings: any non-empty id decodes unchanged, and is its own correlation id."""
    event = decode(None, b"{}", foreign_headers(ce_id=event_id.encode()))
    assert event.id == event_id
    assert event.correlation_id == event_id


def test_event_accepts_any_non_empty_string_id_and_round_trips_it() -> None:
    """Event(id=...) takes a non-UUID id, and decode(encode(event)) keeps it."""
    event = order(id="A234-1234-1234")
    record = encode(event)
    assert decode(record.key, record.value, record.headers) == event


@pytest.mark.parametrize("event_id", ["", None, 7])
def test_event_refuses_an_empty_or_non_string_id(event_id: object) -> None:
    """Event(id="") (or a non-string id) is refused at construction."""
    with pytest.raises(InvalidEvent, match="event id must be a non-empty string"):
        order(id=event_id)


@pytest.mark.parametrize(
    "text", ["2026-11-28t10:00:00.25z", "2026-11-28T10:00:00.25z", "2026-11-28t10:00:00.250+00:00"]
)
def test_lower_case_t_and_z_are_accepted_as_rfc_3339_allows(text: str) -> None:
    """RFC 3339 (section 5.6) allows lower-case 't' and 'z'; such a ce_time decodes to the same instant."""
    assert decode(None, b"{}", foreign_headers(ce_time=text.encode())).time == RECORD_TIME


def test_nanosecond_time_from_other_sdks_is_cut_to_the_millisecond() -> None:
    """A ce_time with nine fractional digits decodes, kept to the millisecond like every eventq time."""
    event = decode(None, b"{}", foreign_headers(ce_time=b"2026-11-28T10:00:00.250999999Z"))
    assert event.time == RECORD_TIME


@pytest.mark.parametrize(
    "content_type",
    [None, b"application/json; charset=utf-8", b"Application/JSON", b"text/json", b"application/vnd.example+json",
     b'application/json;charset="UTF-8"'],
)
def test_binary_mode_accepts_every_json_media_type_and_no_content_type(content_type: bytes | None) -> None:
    """content-type is optional in binary mode; application/json, text/json and any +json type mean JSON data."""
    headers = foreign_headers() if content_type is None else foreign_headers(**{"content-type": content_type})
    assert decode(None, b'{"order_id": "o-1"}', headers).data == {"order_id": "o-1"}


def structured(**overrides: object) -> bytes:
    event: dict[str, object] = {
        "specversion": "1.0", "id": "A234-1234-1234", "source": "/mycontext", "type": "com.example.someevent",
        "time": "2018-04-05T17:31:00Z", "subject": "larger-context", "datacontenttype": "application/json",
        "correlationid": "flow-1", "causationid": "cause-1",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "k=v",
        "data": {"appinfoA": "abc", "appinfoB": 123},
    }
    event.update(overrides)
    return orjson.dumps({name: value for name, value in event.items() if value is not None})


STRUCTURED = [("content-type", b"application/cloudevents+json; charset=utf-8")]


def test_structured_mode_decodes_every_attribute() -> None:
    """A structured-mode record (the event as JSON in the value) decodes into the same Event as binary mode would."""
    event = decode(b"customer-7", structured(), STRUCTURED)
    assert event == Event(
        id="A234-1234-1234", source="/mycontext", type="com.example.someevent",
        time=datetime(2018, 4, 5, 17, 31, tzinfo=UTC), subject="larger-context", key="customer-7",
        correlation_id="flow-1", causation_id="cause-1",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", tracestate="k=v",
        data={"appinfoA": "abc", "appinfoB": 123},
    )


def test_structured_mode_ignores_ce_headers_and_defaults_like_binary_mode() -> None:
    """In structured mode ce_ headers are ignored; no time means the record timestamp, no correlationid the id."""
    headers = [*STRUCTURED, ("ce_type", b"admin.granted.v1"), ("ce_id", b"forged")]
    value = structured(time=None, subject=None, correlationid=None, causationid=None, traceparent=None,
                       tracestate=None, datacontenttype=None, data=None)
    event = decode(None, value, headers, timestamp_ms=RECORD_TIMESTAMP_MS)
    assert (event.type, event.id, event.time, event.correlation_id, event.causation_id, event.data) == (
        "com.example.someevent", "A234-1234-1234", RECORD_TIME, "A234-1234-1234", None, None
    )


def test_structured_data_base64_with_a_json_content_type_is_parsed_as_json() -> None:
    """data_base64 holding JSON bytes, with a JSON datacontenttype, decodes to the JSON value."""
    value = structured(data=None, data_base64="eyJvcmRlcl9pZCI6ICJvLTEifQ==")  # {"order_id": "o-1"}
    assert decode(None, value, STRUCTURED).data == {"order_id": "o-1"}


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"data": None, "data_base64": "AAEC", "datacontenttype": None}, "data_base64 (binary data) without a JSON"),
        ({"data": None, "data_base64": "AAEC"}, "data_base64 is not base64 of JSON"),
        ({"data_base64": "e30="}, "has both data and data_base64"),
        ({"datacontenttype": "text/plain", "data": "hello"}, "unsupported datacontenttype 'text/plain'"),
        ({"specversion": "0.3"}, "unsupported specversion '0.3'"),
        ({"id": None}, "missing or empty id"),
        ({"id": "", "source": None}, "missing or empty id, source"),
        ({"id": 42}, "attribute 'id' must be a string, not 42"),
        ({"time": "yesterday"}, "time 'yesterday' is not an RFC 3339 timestamp"),
        ({"subject": ["a"]}, "attribute 'subject' must be a string"),
    ],
)
def test_malformed_structured_events_raise_invalid_event_with_reason(overrides: dict[str, object], reason: str) -> None:
    """Each way a structured-mode event can be invalid for eventq raises InvalidEvent naming the defect."""
    with pytest.raises(InvalidEvent) as info:
        decode(None, structured(**overrides), STRUCTURED)
    assert reason in info.value.reason


@pytest.mark.parametrize(("value", "reason"), [(b"[1, 2]", "must be a JSON object"), (b"{nope", "not valid JSON")])
def test_structured_value_that_is_no_json_object_is_invalid(value: bytes, reason: str) -> None:
    """A structured-mode value that is not a JSON object raises InvalidEvent."""
    with pytest.raises(InvalidEvent, match=reason):
        decode(None, value, STRUCTURED)


def test_null_ce_id_header_is_reported_as_missing_id() -> None:
    """A ce_id header with a null value (possible in Kafka) is 'missing or empty ce_id', not a spec-version problem."""
    headers: list[tuple[str, bytes | None]] = [("ce_id", None), *foreign_headers()]
    with pytest.raises(InvalidEvent, match="missing or empty ce_id"):
        decode(None, b"{}", headers)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject",
                                  "ce_correlationid", "ce_causationid", "traceparent", "tracestate",
                                  "content-type"])
@pytest.mark.parametrize("odd", [None, "text", 12, bytearray(b"\xff"), [b"x"]])
def test_odd_header_values_only_ever_raise_invalid_event(name: str, odd: object) -> None:
    """A header whose value is null, not bytes or not UTF-8 decodes or raises InvalidEvent, never anything else."""
    headers = [(name, odd), *foreign_headers(ce_time=b"2026-11-28T10:00:00Z")]
    try:
        decode(None, b"{}", headers)  # type: ignore[arg-type]
    except InvalidEvent:
        pass


@pytest.mark.parametrize("headers", [None, [("ce_id",)], [b"ce_id"], 17])
def test_headers_that_are_not_pairs_raise_invalid_event(headers: object) -> None:
    """Headers that are not (name, value) pairs raise InvalidEvent."""
    with pytest.raises(InvalidEvent, match="malformed record"):
        decode(None, b"{}", headers)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "value", "headers"),
    [
        (None, b"{}", foreign_headers(ce_time=b"x" * 10_000)),
        (None, b"{}", foreign_headers(ce_specversion=b"9" * 10_000)),
        (None, b"{}", foreign_headers(**{"content-type": b"text/" + b"x" * 10_000})),
        (None, structured(id=["x" * 10_000]), STRUCTURED),
        (None, structured(time="x" * 10_000), STRUCTURED),
        (None, structured(specversion="x" * 10_000), STRUCTURED),
    ],
)
def test_reasons_quote_at_most_about_a_hundred_characters_of_the_record(
    key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
) -> None:
    """A 10 kB attribute quoted in an InvalidEvent reason is clipped, so dead letters and logs stay small."""
    with pytest.raises(InvalidEvent) as info:
        decode(key, value, headers)
    assert "xxxxx" in info.value.reason or "99999" in info.value.reason
    assert len(info.value.reason) < 300


@pytest.mark.parametrize("headers", [[], [("content-type", b"application/json")]])
def test_record_without_ce_headers_holding_a_cloudevent_is_read_as_structured_mode(
    headers: list[tuple[str, bytes]],
) -> None:
    """A value holding a whole event, with no ce_ header (the SDK's older to_structured), decodes as structured mode."""
    assert decode(None, structured(), headers).id == "A234-1234-1234"


def test_record_without_ce_headers_or_event_document_is_missing_its_attributes() -> None:
    """A plain JSON payload without any ce_ header is InvalidEvent naming every missing attribute."""
    with pytest.raises(InvalidEvent, match="missing or empty ce_specversion, ce_id, ce_source, ce_type"):
        decode(None, b'{"order_id": "o-1"}', [("content-type", b"application/json")])


def test_record_timestamp_out_of_range_is_invalid() -> None:
    """An event without ce_time whose record timestamp no datetime can hold raises InvalidEvent."""
    with pytest.raises(InvalidEvent, match="record timestamp 100000000000000000000 is out of range"):
        decode(None, b"{}", foreign_headers(), timestamp_ms=10**20)


@pytest.mark.parametrize("attributes", [{"subject": "\udcff"}, {"key": "k\ud800"}, {"source": "s\udc80"}])
def test_an_attribute_no_utf8_can_carry_is_an_invalid_event_not_a_unicode_error(attributes: dict[str, str]) -> None:
    """A lone surrogate in an attribute (hostile text from a caller) raises InvalidEvent, for publish and outbox."""
    fields: dict[str, Any] = {"type": "demo.order.created.v1", "source": "tests", "data": {}, **attributes}
    event = Event(**fields)
    with pytest.raises(InvalidEvent, match="not valid UTF-8"):
        encode_parts(event)
