"""Property-based: any header names, header values and payload bytes through decoding and dead-lettering.

Only eventq's own errors may come out of decoding, and every dead letter built from any
record fits the limit it was given — measured on the bytes aiokafka's own batch builder
writes, not on eventq's estimate.
"""

from __future__ import annotations

from typing import Any

from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventq.consumers import App
from eventq.consumers.deadletter import (
    REASON_INVALID,
    DeadLetter,
    Failure,
    dead_letter_headers,
    fitted,
)
from eventq.consumers.decode import decode_items
from eventq.errors import EventqError
from eventq.schemas.envelope import DEFAULT_MAX_EVENT_BYTES, encode
from eventq.schemas.registry import SchemaRegistry
from tests.integration.consumer_kit import order
from tests.unit.fakes import Record

# Names as the tolerant reader can hand them over: any text, or bytes that were not UTF-8.
names = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=20).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
    st.sampled_from(["ce_id", "ce_type", "ce_source", "ce_specversion", "ce_time", "content-type",
                     "eventq-retry-topic", "eventq-dlt-reason", "traceparent"]),
)
values = st.one_of(st.none(), st.binary(max_size=300), st.sampled_from([b"1.0", b"", b"\xff", b"a,b'\n"]))
headers = st.lists(st.tuples(names, values), max_size=12)
payloads = st.one_of(st.none(), st.binary(max_size=2_000), st.sampled_from([b"{}", b"[" * 3000, b"NaN"]))
REGISTRY = SchemaRegistry.load([])
APP = App("props", topics=["orders"])


def batch_bytes(key: bytes | None, value: bytes | None, hdrs: list[tuple[str, bytes]]) -> int:
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 16 * 1024 * 1024)
    assert builder.append(0, timestamp=0, key=key, value=value if value is not None or key else b"", headers=hdrs)
    return len(builder.build())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.one_of(st.none(), st.binary(max_size=100)), value=payloads, hdrs=headers,
       base=st.booleans())
def test_decoding_any_record_raises_nothing_but_eventq_errors(
    key: bytes | None, value: bytes | None, hdrs: list[tuple[str, bytes | None]], base: bool
) -> None:
    """Any key, value and headers (on top of a valid envelope or not) decode to an item, never an exception."""
    if base:
        encoded = encode(order(1))
        hdrs = [*hdrs, *encoded.headers] if len(hdrs) % 2 else [*encoded.headers, *hdrs]
    [item] = decode_items([Record("orders", 0, 7, 1_700_000_000_000, key, value, hdrs)], APP, REGISTRY,
                          DEFAULT_MAX_EVENT_BYTES)
    assert item.event is not None or isinstance(item.invalid, EventqError)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.one_of(st.none(), st.binary(max_size=5_000)), value=st.one_of(st.none(), st.binary(max_size=60_000)),
       hdrs=headers, message=st.text(max_size=5_000), limit=st.integers(min_value=4_096, max_value=70_000),
       topic=st.text(alphabet="abc.-_", min_size=1, max_size=249))
def test_every_dead_letter_fits_the_limit_it_was_given(
    key: bytes | None, value: bytes | None, hdrs: list[tuple[str, bytes | None]], message: str, limit: int,
    topic: str,
) -> None:
    """Whatever the record and the failure, the letter sent (fitted to a topic limit) is at most that many bytes."""
    failure = Failure(reason=REASON_INVALID, error_type="x.Y", message=message, stacktrace=message * 3)
    clean: list[tuple[str, Any]] = [(n, v if v is not None else b"") for n, v in hdrs]
    letter = DeadLetter(topic=topic, partition=0, offset=1, timestamp=0, key=key, value=value, headers=clean,
                        group="g", failure=failure)
    record = (topic + ".dlt", key, value, dead_letter_headers(letter))

    (_, k, v, h), _step = fitted(record, limit)

    assert batch_bytes(k, v, h) <= limit
