"""PublishReport: one outcome per event, in input order, from per-batch answers."""

from __future__ import annotations

from eventq.errors import PublishTimeout
from eventq.producers.producer import Failed, Published, PublishReport


def test_outcomes_spread_batch_offsets_to_events_in_input_order() -> None:
    """Each acknowledged batch gives its events consecutive offsets; failures keep their error."""
    report = PublishReport("t", ["a", "b", "c", "d"])
    error = PublishTimeout("t", "not acknowledged")
    report._acknowledged([0, 2], 1, 40)
    report._fail([1], error)
    assert report._unresolved() == 1
    report._acknowledged([3], 0, 7)

    assert report._unresolved() == 0
    assert not report.ok
    assert report.outcomes == (
        Published("a", "t", 1, 40),
        Failed("b", "t", error),
        Published("c", "t", 1, 41),
        Published("d", "t", 0, 7),
    )
    assert report.published == [Published("a", "t", 1, 40), Published("c", "t", 1, 41), Published("d", "t", 0, 7)]
    assert report.failed == [Failed("b", "t", error)]


def test_an_event_without_an_answer_counts_as_unresolved() -> None:
    """A report with a silent event says so, which publish_many treats as a bug."""
    report = PublishReport("t", ["a", "b"])
    report._acknowledged([1], 2, 0)
    assert report._unresolved() == 1
    assert report.ok  # no failure recorded; publish_many raises before returning such a report
