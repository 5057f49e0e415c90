"""The wire contract: every header name eventq writes or reads keeps its exact bytes."""

from __future__ import annotations

import pytest

from eventq import wire

# Each constant of eventq.wire and the bytes it must be on the wire. Records in topics
# carry these bytes: a rename here means old records are no longer read.
PINNED: dict[str, bytes] = {
    # CloudEvents 1.0, Kafka binding, binary mode
    "H_SPECVERSION": b"ce_specversion",
    "H_ID": b"ce_id",
    "H_SOURCE": b"ce_source",
    "H_TYPE": b"ce_type",
    "H_TIME": b"ce_time",
    "H_SUBJECT": b"ce_subject",
    "H_CORRELATION": b"ce_correlationid",
    "H_CAUSATION": b"ce_causationid",
    "H_CONTENT_TYPE": b"content-type",
    "H_TRACEPARENT": b"traceparent",
    "H_TRACESTATE": b"tracestate",
    # eventq dead letters
    "DLT_PREFIX": b"eventq-dlt-",
    "DLT_TOPIC": b"eventq-dlt-topic",
    "DLT_PARTITION": b"eventq-dlt-partition",
    "DLT_OFFSET": b"eventq-dlt-offset",
    "DLT_TIMESTAMP": b"eventq-dlt-timestamp",
    "DLT_GROUP": b"eventq-dlt-group",
    "DLT_HANDLER": b"eventq-dlt-handler",
    "DLT_REASON": b"eventq-dlt-reason",
    "DLT_ATTEMPTS": b"eventq-dlt-attempts",
    "DLT_FIRST_FAILURE": b"eventq-dlt-first-failure",
    "DLT_LAST_FAILURE": b"eventq-dlt-last-failure",
    "DLT_ERROR_TYPE": b"eventq-dlt-error-type",
    "DLT_ERROR_MESSAGE": b"eventq-dlt-error-message",
    "DLT_STACKTRACE": b"eventq-dlt-stacktrace",
    "DLT_OMITTED": b"eventq-dlt-omitted",
    "DLT_ORIGINAL_BYTES": b"eventq-dlt-original-bytes",
    "DLT_NULL_VALUE": b"eventq-dlt-null-value",
    "DLT_TRACEPARENT": b"eventq-dlt-traceparent",
    # eventq retry records
    "RETRY_PREFIX": b"eventq-retry-",
    "RETRY_TOPIC": b"eventq-retry-topic",
    "RETRY_PARTITION": b"eventq-retry-partition",
    "RETRY_OFFSET": b"eventq-retry-offset",
    "RETRY_TIMESTAMP": b"eventq-retry-timestamp",
    "RETRY_ATTEMPTS": b"eventq-retry-attempts",
    "RETRY_DUE": b"eventq-retry-due",
    "RETRY_FIRST_FAILURE": b"eventq-retry-first-failure",
    "RETRY_ERROR_TYPE": b"eventq-retry-error-type",
    "RETRY_ERROR_MESSAGE": b"eventq-retry-error-message",
    # eventq replays
    "REPLAY_PREFIX": b"eventq-replay-",
    "REPLAY_COUNT": b"eventq-replay-count",
    "REPLAY_FROM": b"eventq-replay-from",
    "REPLAY_RUN": b"eventq-replay-run",
    "REPLAY_AT": b"eventq-replay-at",
    # Spring for Apache Kafka, DeadLetterPublishingRecoverer
    "SPRING_DLT_PREFIX": b"kafka_dlt-",
    "SPRING_DLT_ORIGINAL_TOPIC": b"kafka_dlt-original-topic",
    "SPRING_DLT_ORIGINAL_PARTITION": b"kafka_dlt-original-partition",
    "SPRING_DLT_ORIGINAL_OFFSET": b"kafka_dlt-original-offset",
    "SPRING_DLT_ORIGINAL_TIMESTAMP": b"kafka_dlt-original-timestamp",
    "SPRING_DLT_ORIGINAL_CONSUMER_GROUP": b"kafka_dlt-original-consumer-group",
    "SPRING_DLT_EXCEPTION_FQCN": b"kafka_dlt-exception-fqcn",
    "SPRING_DLT_EXCEPTION_CAUSE_FQCN": b"kafka_dlt-exception-cause-fqcn",
    "SPRING_DLT_EXCEPTION_MESSAGE": b"kafka_dlt-exception-message",
    "SPRING_DLT_EXCEPTION_STACKTRACE": b"kafka_dlt-exception-stacktrace",
    # Spring for Apache Kafka, retry topics
    "SPRING_ORIGINAL_PREFIX": b"kafka_original-",
    "SPRING_ORIGINAL_TOPIC": b"kafka_original-topic",
    "SPRING_ORIGINAL_PARTITION": b"kafka_original-partition",
    "SPRING_ORIGINAL_OFFSET": b"kafka_original-offset",
    "SPRING_ORIGINAL_TIMESTAMP": b"kafka_original-timestamp",
    "SPRING_ORIGINAL_CONSUMER_GROUP": b"kafka_original-consumer-group",
    "SPRING_EXCEPTION_PREFIX": b"kafka_exception-",
    "SPRING_EXCEPTION_FQCN": b"kafka_exception-fqcn",
    "SPRING_EXCEPTION_CAUSE_FQCN": b"kafka_exception-cause-fqcn",
    "SPRING_EXCEPTION_MESSAGE": b"kafka_exception-message",
    "SPRING_EXCEPTION_STACKTRACE": b"kafka_exception-stacktrace",
    "SPRING_RETRY_TOPIC_PREFIX": b"retry_topic-",
    "SPRING_RETRY_ATTEMPTS": b"retry_topic-attempts",
    # Karafka 2.5+
    "KARAFKA_SOURCE_TOPIC": b"source_topic",
    "KARAFKA_SOURCE_PARTITION": b"source_partition",
    "KARAFKA_SOURCE_OFFSET": b"source_offset",
    "KARAFKA_SOURCE_CONSUMER_GROUP": b"source_consumer_group",
    "KARAFKA_SOURCE_ATTEMPTS": b"source_attempts",
    "KARAFKA_SOURCE_TRACE_ID": b"source_trace_id",
    # Karafka before 2.5
    "KARAFKA_ORIGINAL_TOPIC": b"original_topic",
    "KARAFKA_ORIGINAL_PARTITION": b"original_partition",
    "KARAFKA_ORIGINAL_OFFSET": b"original_offset",
    "KARAFKA_ORIGINAL_CONSUMER_GROUP": b"original_consumer_group",
    "KARAFKA_ORIGINAL_ATTEMPTS": b"original_attempts",
    "KARAFKA_ORIGINAL_TRACE_ID": b"original_trace_id",
}


def _declared() -> dict[str, str]:
    return {name: value for name, value in vars(wire).items() if name.isupper() and isinstance(value, str)}


@pytest.mark.parametrize(("name", "expected"), PINNED.items())
def test_every_header_name_keeps_its_bytes(name: str, expected: bytes) -> None:
    """Each header name is, encoded as a Kafka client sends it (UTF-8), exactly the pinned bytes."""
    assert getattr(wire, name).encode("utf-8") == expected


def test_every_declared_name_is_pinned() -> None:
    """A header name added to eventq.wire without a pinned value here fails, and so does a removed one."""
    assert sorted(_declared()) == sorted(PINNED)


def test_no_two_constants_name_the_same_header() -> None:
    """Each header name is declared once: no two constants share a value."""
    values = list(_declared().values())
    assert len(values) == len(set(values))
