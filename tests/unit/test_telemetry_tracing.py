"""eventq.telemetry.tracing: reading W3C trace context and deciding whether to trace."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NoOpTracerProvider

from eventq.telemetry import tracing as tr

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_valid_traceparent_becomes_a_remote_sampled_parent() -> None:
    """A well-formed traceparent is read as the remote span it names, sampled flag included."""
    ctx = tr.context_from_traceparent(TRACEPARENT)

    assert ctx is not None
    parent = trace.get_current_span(ctx).get_span_context()
    assert (parent.trace_id, parent.span_id) == (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331)
    assert parent.is_remote and parent.trace_flags.sampled


def test_tracestate_is_kept_with_its_traceparent() -> None:
    """With a tracestate, the parent carries it (read by the W3C propagator)."""
    ctx = tr.context_from_traceparent(TRACEPARENT, "vendor=abc")

    assert ctx is not None
    assert trace.get_current_span(ctx).get_span_context().trace_state.get("vendor") == "abc"


@pytest.mark.parametrize("value", [
    None, "", "garbage", "00-00000000000000000000000000000000-b7ad6b7169203331-01",
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-zz",
    "00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01",
])
def test_missing_or_malformed_traceparents_give_no_parent(value: str | None) -> None:
    """Absent, all-zero or malformed trace context gives None: the event's span starts a new trace."""
    assert tr.context_from_traceparent(value) is None


def test_trace_headers_name_the_span_and_are_empty_without_one() -> None:
    """trace_headers(span) is the span's W3C traceparent; with no valid span there are no headers."""
    span = TracerProvider().get_tracer("t").start_span("s")
    context = span.get_span_context()

    headers = dict(tr.trace_headers(span))

    assert headers["traceparent"].decode() == (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    )
    assert tr.trace_headers(trace.INVALID_SPAN) == []
    assert tr.traceparent_of(span) == headers["traceparent"].decode()


def test_tracing_is_enabled_only_with_a_real_tracer_provider() -> None:
    """A no-op provider (or the unset global proxy) means no spans are made; an SDK provider means spans."""
    assert not tr.Tracing(NoOpTracerProvider()).enabled
    assert tr.Tracing(TracerProvider()).enabled
    # Nothing in the unit tests sets a global provider: the default follows OpenTelemetry's unset proxy.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert not tr.Tracing().enabled
