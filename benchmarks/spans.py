"""What one OpenTelemetry SDK span costs here, without Kafka: the floor under tracing on.

Times eventq's own span code (``eventq.telemetry.tracing``) on an SDK tracer provider
with no exporter: the per-event ``handle`` span with a sampled and an unsampled parent,
a bare span, one link, and reading a ``traceparent``. Best of 5 rounds, in µs.

    python benchmarks/spans.py [--rounds 10000]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.trace import Link  # noqa: E402

from eventq.telemetry import tracing as tr  # noqa: E402

SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


def best_us(step: Callable[[], object], rounds: int, per: int = 1) -> float:
    """The fastest of 5 timings of ``rounds`` calls, in µs per call (divided by ``per``)."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            step()
        best = min(best, (time.perf_counter() - started) / rounds * 1e6 / per)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10_000)
    rounds = parser.parse_known_args()[0].rounds  # (run.py passes every benchmark the same arguments)
    provider = TracerProvider()
    tracing, tracer = tr.Tracing(provider), provider.get_tracer("bench")
    event = SimpleNamespace(
        id="01a224b2-fb34-7512-8f24-116596a3ca0c", correlation_id="01a224b2-fb34-7512-8f24-116596a3ca0c",
        type="demo.order.created.v1", key="customer-7",
    )
    record = SimpleNamespace(topic="orders", partition=3, offset=12345)
    sampled, unsampled = tr.context_from_traceparent(SAMPLED), tr.context_from_traceparent(UNSAMPLED)
    batch = tracer.start_span("batch").get_span_context()
    links = [Link(batch)] * 500
    figures = {
        "handle span, sampled parent (recorded)": best_us(
            lambda: tracing.handle(event, record, "g", "h", sampled, batch).end(), rounds),  # type: ignore[arg-type]
        "handle span, unsampled parent (not recorded)": best_us(
            lambda: tracing.handle(event, record, "g", "h", unsampled, batch).end(), rounds),  # type: ignore[arg-type]
        "bare span": best_us(lambda: tracer.start_span("s").end(), rounds),
        "one link (span with 500, per link)": best_us(
            lambda: tracer.start_span("s", links=links).end(), max(1, rounds // 50), per=500),
        "read a traceparent": best_us(lambda: tr.context_from_traceparent(SAMPLED), rounds),
    }
    print(f"span costs, best of 5 x {rounds:,} (no exporter, no Kafka):")
    for name, micros in figures.items():
        print(f"  {name:<46} {micros:7.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
