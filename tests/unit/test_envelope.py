"""The envelope: encode/decode round trips and every malformed-input case."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
import pytest

from eventq.errors import EventTooLarge, InvalidEvent
from eventq.schemas import Event, caused_by, current_cause, decode, encode
from eventq.schemas.envelope import new_event_id


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
        ({"ce_id": None}, "missing CloudEvents header(s): ce_id"),
        ({"ce_type": None, "ce_source": None}, "missing CloudEvents header(s): ce_source, ce_type"),
        ({"ce_id": b"not-a-uuid"}, "ce_id 'not-a-uuid' is not a UUID"),
        ({"ce_specversion": b"0.3"}, "unsupported ce_specversion '0.3'"),
        ({"ce_time": b"yesterday"}, "ce_time 'yesterday' is not an RFC 3339 timestamp"),
        ({"ce_time": b"2026-01-01T00:00:00"}, "has no UTC offset"),
        ({"content__type": b"application/avro"}, "unsupported content-type 'application/avro'"),
        ({"value": b"{not json"}, "payload is not valid JSON"),
        ({"value": None}, "tombstone"),
        ({"ce_source": b"\xff\xfe"}, "header 'ce_source' is not valid UTF-8"),
        ({"ce_type": b""}, "event type must be a non-empty string"),
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
