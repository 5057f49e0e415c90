"""Choosing, guarding and re-heading dead letters for replay, and the dlq CLI's argument checks, without Kafka."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import click
import pytest
from click.testing import CliRunner

from eventq.cli import main
from eventq.consumers.deadletter import DeadLetter, Failure, dead_letter_headers
from eventq.dlq import commands
from eventq.dlq.commands import parse_range, parse_rate, parse_time
from eventq.dlq.letters import Letter, parse
from eventq.dlq.replay import Filters, ReplayReport, _decide, _newness, _replay_headers
from eventq.errors import ConfigError
from tests.unit.fakes import Record

DLT_MS = 1714564860456  # 2024-05-01T12:01:00.456Z
DEAD_LETTERED = datetime(2024, 5, 1, 12, 1, 0, 456000, UTC)
MS = timedelta(milliseconds=1)
EVENT_ID = b"0190f0c2-7d3e-7a11-8b5e-3f1c2d4e5a6b"
ENVELOPE = [("ce_id", EVENT_ID), ("ce_type", b"demo.order.created.v1"), ("ce_correlationid", b"corr-9")]
KNOWN = {"orders", "orders.dlt", "orders-replay"}




def declined(original: list[tuple[str, bytes]] | None = None) -> Letter:
    """An eventq dead letter at orders.dlt/1/41 of orders/3/1207, written by eventq's own writer."""
    failure = Failure(
        reason="exhausted", error_type="myservice.errors.PaymentDeclined", message="card 4242 declined",
        handler="myservice.handlers.on_created", attempts=5,
        first_failure=datetime(2024, 5, 1, 12, 0, tzinfo=UTC), last_failure=datetime(2024, 5, 1, 12, 0, 31, tzinfo=UTC),
    )
    headers = dead_letter_headers(DeadLetter(
        topic="orders", partition=3, offset=1207, timestamp=1714564800123, key=b"customer-7",
        value=b'{"order_id": "o-1"}', headers=ENVELOPE if original is None else original, group="billing",
        failure=failure,
    ))
    return parse(Record("orders.dlt", 1, 41, DLT_MS, b"customer-7", b'{"order_id": "o-1"}', headers))


def headerless() -> Letter:
    """A record with no dead-letter headers of any dialect."""
    return parse(Record("orders.dlt", 0, 7, DLT_MS, b"customer-7", b"{}", ENVELOPE))


# -- Filters.matches ------------------------------------------------------------------


def test_no_criteria_match_every_letter() -> None:
    """Filters() matches any letter, including one without dead-letter headers."""
    assert Filters().matches(declined()) and Filters().matches(headerless())


def test_since_is_inclusive() -> None:
    """since matches a letter dead-lettered exactly then, and not one dead-lettered a millisecond before."""
    assert Filters(since=DEAD_LETTERED).matches(declined())
    assert not Filters(since=DEAD_LETTERED + MS).matches(declined())


def test_until_is_exclusive() -> None:
    """until excludes a letter dead-lettered exactly then and matches one dead-lettered a millisecond before."""
    assert not Filters(until=DEAD_LETTERED).matches(declined())
    assert Filters(until=DEAD_LETTERED + MS).matches(declined())


def test_time_window_compares_instants_across_offsets() -> None:
    """since/until compare instants, so a window given in another UTC offset selects the same letter."""
    berlin = timezone(timedelta(hours=2))
    assert Filters(since=datetime(2024, 5, 1, 14, 1, tzinfo=berlin),
                   until=datetime(2024, 5, 1, 14, 2, tzinfo=berlin)).matches(declined())


@pytest.mark.parametrize(
    ("wanted", "matches"),
    [("myservice.errors.PaymentDeclined", True), ("PaymentDeclined", True), ("errors.PaymentDeclined", False),
     ("Payment", False), ("paymentdeclined", False)],
)
def test_error_type_is_exact_or_the_bare_class_name(wanted: str, matches: bool) -> None:
    """error_type matches the module-qualified class or the class name alone, nothing partial or case-folded."""
    assert Filters(error_type=wanted).matches(declined()) is matches


def test_error_type_never_matches_a_letter_without_one() -> None:
    """A letter with no error type is not matched by an error_type filter."""
    assert not Filters(error_type="PaymentDeclined").matches(headerless())


@pytest.mark.parametrize(
    ("wanted", "matches"),
    [("myservice.handlers.on_created", True), ("on_created", True), ("handlers.on_created", False),
     ("on_paid", False)],
)
def test_handler_is_exact_or_the_bare_function_name(wanted: str, matches: bool) -> None:
    """handler matches the module-qualified handler or the function name alone."""
    assert Filters(handler=wanted).matches(declined()) is matches


@pytest.mark.parametrize(
    ("criterion", "good", "bad"),
    [("event_type", "demo.order.created.v1", "demo.order.paid.v1"), ("key", "customer-7", "customer-8"),
     ("correlation_id", "corr-9", "corr-10")],
)
def test_event_type_key_and_correlation_are_exact(criterion: str, good: str, bad: str) -> None:
    """event_type, key and correlation_id match only their exact value."""
    letter = declined()
    assert Filters(**{criterion: good}).matches(letter)  # type: ignore[arg-type]
    assert not Filters(**{criterion: bad}).matches(letter)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("offsets", "matches"),
    [((41, 41), True), ((30, 41), True), ((41, 50), True), ((42, 50), False), ((0, 40), False)],
)
def test_offsets_are_an_inclusive_range(offsets: tuple[int, int], matches: bool) -> None:
    """offsets (FIRST, LAST) matches a dead-letter offset at either end and between."""
    assert Filters(offsets=offsets).matches(declined()) is matches


ALL_MATCH: dict[str, Any] = {
    "since": DEAD_LETTERED - timedelta(hours=1), "until": DEAD_LETTERED + timedelta(hours=1),
    "error_type": "PaymentDeclined", "event_type": "demo.order.created.v1", "key": "customer-7",
    "correlation_id": "corr-9", "handler": "on_created", "offsets": (40, 42),
}
ONE_WRONG: dict[str, Any] = {
    "since": DEAD_LETTERED + MS, "until": DEAD_LETTERED, "error_type": "ValueError",
    "event_type": "demo.order.paid.v1", "key": "customer-8", "correlation_id": "corr-10", "handler": "on_paid",
    "offsets": (42, 50),
}


def test_all_criteria_together_match() -> None:
    """A letter that meets every criterion at once is matched."""
    assert Filters(**ALL_MATCH).matches(declined())


@pytest.mark.parametrize("wrong", sorted(ONE_WRONG))
def test_one_failing_criterion_is_enough_to_filter(wrong: str) -> None:
    """With every other criterion met, one criterion that does not match filters the letter out."""
    assert not Filters(**{**ALL_MATCH, wrong: ONE_WRONG[wrong]}).matches(declined())


# -- Filters.fingerprint --------------------------------------------------------------


def test_fingerprint_is_stable_for_equal_filters() -> None:
    """Two equal Filters give the same 16-hex-digit fingerprint."""
    first, second = Filters(**ALL_MATCH).fingerprint(), Filters(**dict(ALL_MATCH)).fingerprint()
    assert first == second
    assert len(first) == 16 and int(first, 16) >= 0
    assert Filters().fingerprint() == Filters().fingerprint()


@pytest.mark.parametrize("changed", sorted(set(ONE_WRONG) - {"since", "until"}))
def test_fingerprint_changes_with_any_criterion(changed: str) -> None:
    """Changing any one criterion but the time window changes the fingerprint."""
    assert Filters(**{**ALL_MATCH, changed: ONE_WRONG[changed]}).fingerprint() != Filters(**ALL_MATCH).fingerprint()


def test_the_time_window_travels_in_the_checkpoint_and_a_resume_keeps_it() -> None:
    """A run stores its absolute window; resuming with a later-resolved --since keeps the stored one."""
    from eventq.dlq.replay import _resumed

    started = Filters(key="k", since=datetime(2026, 11, 28, 8, 0, tzinfo=UTC))
    later = Filters(key="k", since=datetime(2026, 11, 28, 8, 1, tzinfo=UTC))

    resumed = _resumed("r", later, started.checkpoint_metadata())

    assert resumed.since == started.since and resumed.key == "k"
    with pytest.raises(ConfigError, match="started with other filters"):
        _resumed("r", Filters(key="other"), started.checkpoint_metadata())


def test_fingerprint_tells_no_criterion_from_one() -> None:
    """A filter with one criterion set has another fingerprint than no filter at all."""
    assert Filters(key="customer-7").fingerprint() != Filters().fingerprint()


class _Clock(datetime):
    """datetime whose now() is set by the test."""

    current = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return cls.current


def test_resuming_with_the_same_age_filter_keeps_the_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same `--since 2h` given again a minute later, to resume a run, gives the same filters fingerprint."""
    monkeypatch.setattr(commands, "datetime", _Clock)
    first = Filters(since=time_of("2h")).fingerprint()
    monkeypatch.setattr(_Clock, "current", _Clock.current + timedelta(minutes=1))

    resumed = Filters(since=time_of("2h")).fingerprint()

    assert resumed == first


# -- _decide --------------------------------------------------------------------------


def test_decide_replays_to_the_source_topic() -> None:
    """A matching letter below the loop guard goes back to its source topic."""
    assert _decide(declined(), Filters(), None, 3, KNOWN) == ("replay", "orders")


def test_decide_filtered() -> None:
    """A letter the filters do not match is 'filtered', with no target."""
    assert _decide(declined(), Filters(key="customer-8"), None, 3, KNOWN) == ("filtered", "")


def test_decide_refuses_at_max_replays() -> None:
    """A letter already replayed max_replays times is refused, saying how often."""
    letter = replace(declined(), replay_count=3)
    assert _decide(letter, Filters(), None, 3, KNOWN) == ("refused", "already replayed 3 times (max_replays=3)")


def test_decide_refuses_above_max_replays() -> None:
    """A letter replayed more often than max_replays (the guard was lowered) is refused too."""
    assert _decide(replace(declined(), replay_count=5), Filters(), None, 3, KNOWN)[0] == "refused"


def test_decide_allows_below_max_replays() -> None:
    """A letter replayed one time fewer than max_replays is replayed."""
    assert _decide(replace(declined(), replay_count=2), Filters(), None, 3, KNOWN) == ("replay", "orders")


def test_decide_counts_a_filtered_letter_as_filtered_even_past_the_guard() -> None:
    """A letter both filtered out and at the loop guard is counted as filtered, not refused."""
    letter = replace(declined(), replay_count=3)
    assert _decide(letter, Filters(key="customer-8"), None, 3, KNOWN) == ("filtered", "")


def test_decide_fails_without_a_source_topic_and_points_to_to() -> None:
    """A letter naming no source topic fails with a reason that suggests --to."""
    verdict, reason = _decide(headerless(), Filters(), None, 3, KNOWN)
    assert verdict == "failed"
    assert "no source topic" in reason and "--to" in reason


def test_decide_fails_when_the_target_topic_does_not_exist() -> None:
    """A source topic the cluster does not have fails the letter, naming the topic."""
    assert _decide(declined(), Filters(), None, 3, {"orders.dlt"}) == (
        "failed", "target topic 'orders' does not exist"
    )


def test_decide_to_overrides_the_source_topic() -> None:
    """to= sends a letter to that topic instead of its source, also when the letter names none."""
    assert _decide(declined(), Filters(), "orders-replay", 3, KNOWN) == ("replay", "orders-replay")
    assert _decide(headerless(), Filters(), "orders-replay", 3, KNOWN) == ("replay", "orders-replay")
    assert _decide(declined(), Filters(), "missing", 3, KNOWN) == ("failed", "target topic 'missing' does not exist")


def newest_of(*letters: Letter) -> dict[tuple[str, str | None], tuple[int, int, int, int]]:
    """The (event id, group) -> newest-copy map replay() builds by scanning the topic, built from these letters."""
    newest: dict[tuple[str, str | None], tuple[int, int, int, int]] = {}
    for letter in letters:
        assert letter.event_id is not None
        key = (letter.event_id, letter.group)
        newest[key] = max(newest.get(key, (-1, -1, -1, -1)), _newness(letter))
    return newest


def failed_again() -> Letter:
    """The same event, replayed once from orders.dlt/1/41 and dead-lettered again an hour later at offset 90."""
    again = declined(ENVELOPE + [("eventq-replay-count", b"1"), ("eventq-replay-from", b"orders.dlt/1/41")])
    return replace(again, offset=90, timestamp_ms=DLT_MS + 3_600_000)


def test_decide_supersedes_an_older_copy_of_a_replayed_event() -> None:
    """The first dead letter of an event that was replayed and failed again is superseded; the newest copy counts."""
    first, newer = declined(), failed_again()
    newest = newest_of(first, newer)

    assert _decide(first, Filters(), None, 3, KNOWN, newest) == ("superseded", "")
    assert _decide(newer, Filters(), None, 3, KNOWN, newest) == ("replay", "orders")


def test_decide_checks_the_newest_copy_against_the_loop_guard() -> None:
    """With max_replays=1 the newest copy (replayed once) is refused and the older copy is superseded, not replayed."""
    first, newer = declined(), failed_again()
    newest = newest_of(first, newer)

    assert _decide(first, Filters(), None, 1, KNOWN, newest) == ("superseded", "")
    assert _decide(newer, Filters(), None, 1, KNOWN, newest)[0] == "refused"


def test_decide_filters_before_it_supersedes() -> None:
    """An older copy the filters do not match is counted as filtered, not superseded."""
    first, newer = declined(), failed_again()
    assert _decide(first, Filters(key="customer-8"), None, 3, KNOWN, newest_of(first, newer)) == ("filtered", "")


def test_decide_never_supersedes_a_letter_without_event_id() -> None:
    """A letter without ce_id cannot be matched to other copies, so it is decided on its own."""
    anonymous = parse(Record("orders.dlt", 0, 7, DLT_MS, b"customer-7", b"{}", [("source_topic", b"orders")]))
    assert _decide(anonymous, Filters(), None, 3, KNOWN, newest_of(declined(), failed_again())) == (
        "replay", "orders"
    )


def test_decide_does_not_supersede_another_groups_first_failure() -> None:
    """Two consumer groups that each dead-lettered the same event once: a --handler replay of the older one replays
    it rather than calling it superseded."""
    billing = declined()
    shipping = replace(declined(), offset=42, timestamp_ms=DLT_MS + 5_000, group="shipping",
                       handler="shipping.handlers.on_created_ship")
    assert (billing.replay_count, shipping.replay_count) == (0, 0)

    verdict = _decide(billing, Filters(handler="myservice.handlers.on_created"), None, 3, KNOWN,
                      newest_of(billing, shipping))

    assert verdict == ("replay", "orders")


# -- _replay_headers ------------------------------------------------------------------


def test_replay_headers_of_a_first_replay() -> None:
    """A first replay keeps the original headers, drops the dead-letter ones, and adds count 1, from, run and at."""
    before = datetime.now(UTC)
    headers = _replay_headers(declined(), "run-1")
    after = datetime.now(UTC)

    assert headers[:3] == ENVELOPE
    assert headers[3:-1] == [
        ("eventq-replay-count", b"1"), ("eventq-replay-from", b"orders.dlt/1/41"), ("eventq-replay-run", b"run-1"),
    ]
    name, at = headers[-1]
    assert name == "eventq-replay-at"
    assert before - MS <= datetime.fromisoformat(at.decode()) <= after
    assert not any(n.startswith("eventq-dlt-") for n, _ in headers)


def test_replay_headers_of_a_letter_replayed_before() -> None:
    """Replaying again increments the count, keeps the earlier positions in order, appends this one, and drops
    the earlier run and time."""
    earlier = [
        ("eventq-replay-count", b"2"),
        ("eventq-replay-from", b"orders.dlt/0/17"),
        ("eventq-replay-from", b"orders.dlt/2/30"),
        ("eventq-replay-run", b"run-0"),
        ("eventq-replay-at", b"2024-05-01T11:00:00.000+00:00"),
    ]
    original = [("ce_id", EVENT_ID), ("x-tag", b"a"), *earlier, ("x-tag", b"b"), ("eventq-retry-attempts", b"2")]
    letter = declined(original)
    assert letter.replay_count == 2  # the writer kept the replay headers of the replayed record

    headers = _replay_headers(letter, "run-1")

    assert headers[:-1] == [
        ("ce_id", EVENT_ID), ("x-tag", b"a"), ("x-tag", b"b"),
        ("eventq-replay-count", b"3"),
        ("eventq-replay-from", b"orders.dlt/0/17"), ("eventq-replay-from", b"orders.dlt/2/30"),
        ("eventq-replay-from", b"orders.dlt/1/41"),
        ("eventq-replay-run", b"run-1"),
    ]
    assert headers[-1][0] == "eventq-replay-at"


def test_replayed_headers_parse_back_to_the_next_count() -> None:
    """A replayed record that is dead-lettered again parses with the incremented count and the positions so far."""
    replayed = _replay_headers(declined(), "run-1")

    again = declined(replayed)

    assert (again.replay_count, again.replays) == (1, ("orders.dlt/1/41",))


# -- ReplayReport ---------------------------------------------------------------------


def test_dry_run_summary() -> None:
    """A dry run's summary says 'would replay' with letters per target topic, and counts every other verdict."""
    report = ReplayReport(
        run="r1", topic="orders.dlt", dry_run=True, replayed=["orders.dlt/0/1", "orders.dlt/0/2", "orders.dlt/1/3"],
        filtered=4, superseded=2, refused=[("orders.dlt/0/9", "already replayed 3 times (max_replays=3)")],
        targets={"payments": 1, "orders": 2},
    )

    assert report.summary() == (
        "would replay 3 (2 to orders, 1 to payments); skipped 6 (4 filtered, 2 superseded by a newer dead letter "
        "of the same event); refused 1 (loop guard); failed 0"
    )
    assert report.ok


def test_real_run_summary_with_failures_is_not_ok() -> None:
    """A real run's summary says 'replayed', 'none' without targets, and a failed letter makes it not ok."""
    report = ReplayReport(run="r1", topic="orders.dlt", failed=[("orders.dlt/0/7", "no source topic")])

    assert report.summary() == (
        "replayed 0 (none); skipped 0 (0 filtered, 0 superseded by a newer dead letter of the same event); "
        "refused 0 (loop guard); failed 1"
    )
    assert not report.ok


def test_refused_letters_do_not_make_a_report_fail() -> None:
    """Letters refused by the loop guard are reported but leave the report ok."""
    assert ReplayReport(run="r1", topic="orders.dlt", refused=[("orders.dlt/0/9", "guard")]).ok


# -- CLI value parsers ----------------------------------------------------------------


def time_of(text: str | None) -> datetime | None:
    return parse_time(None, None, text)  # type: ignore[arg-type]


def rate_of(text: str | None) -> float | None:
    return parse_rate(None, None, text)  # type: ignore[arg-type]


def range_of(text: str | None) -> tuple[int, int] | None:
    return parse_range(None, None, text)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2026-11-28T10:00:00Z", datetime(2026, 11, 28, 10, tzinfo=UTC)),
        ("2026-11-28T11:30:00+01:30", datetime(2026, 11, 28, 10, tzinfo=UTC)),
        ("2026-11-28T10:00:00", datetime(2026, 11, 28, 10, tzinfo=UTC)),
        ("2026-11-28", datetime(2026, 11, 28, tzinfo=UTC)),
        (" 2026-11-28T10:00:00.250Z ", datetime(2026, 11, 28, 10, 0, 0, 250000, tzinfo=UTC)),
    ],
)
def test_parse_time_iso(text: str, moment: datetime) -> None:
    """An ISO 8601 time is read as given; one without an offset is taken as UTC."""
    parsed = time_of(text)
    assert parsed == moment
    assert parsed is not None and parsed.utcoffset() is not None


@pytest.mark.parametrize(("text", "age"), [("30m", timedelta(minutes=30)), ("2h", timedelta(hours=2)),
                                           ("7d", timedelta(days=7)), ("45s", timedelta(seconds=45))])
def test_parse_time_age_is_that_long_before_now(text: str, age: timedelta) -> None:
    """An age such as 30m, 2h or 7d means that long before now, in UTC."""
    before = datetime.now(UTC)
    parsed = time_of(text)
    after = datetime.now(UTC)

    assert parsed is not None and before - age <= parsed <= after - age


@pytest.mark.parametrize("text", ["nonsense", "2h ago", "-2h", "2w", "28/11/2026"])
def test_parse_time_refuses_garbage_naming_both_forms(text: str) -> None:
    """Text that is neither an ISO time nor an age is a BadParameter showing an example of each."""
    with pytest.raises(click.BadParameter) as caught:
        time_of(text)
    assert "ISO 8601" in caught.value.message and "age (30m, 2h, 7d)" in caught.value.message


def test_parsers_pass_none_through() -> None:
    """An option that was not given (None) stays None in each parser."""
    assert (time_of(None), rate_of(None), range_of(None)) == (None, None, None)


@pytest.mark.parametrize(("text", "rate"), [("50/s", 50.0), ("2.5", 2.5), ("0.5/s", 0.5), (" 10 ", 10.0)])
def test_parse_rate(text: str, rate: float) -> None:
    """A rate is letters per second, written N or N/s."""
    assert rate_of(text) == rate


@pytest.mark.parametrize(("text", "says"), [("0", "must be positive"), ("0/s", "must be positive"),
                                            ("-3/s", "must be positive"), ("fast", "not a rate"),
                                            ("50/m", "not a rate")])
def test_parse_rate_refuses(text: str, says: str) -> None:
    """A rate of zero or less, or no number, is a BadParameter."""
    with pytest.raises(click.BadParameter, match=says):
        rate_of(text)


def test_parse_rate_refuses_nan() -> None:
    """'nan' is not a number of letters per second and is refused."""
    with pytest.raises(click.BadParameter):
        rate_of("nan")


@pytest.mark.parametrize(("text", "offsets"), [("100-250", (100, 250)), ("7-7", (7, 7)), (" 0-3 ", (0, 3))])
def test_parse_range(text: str, offsets: tuple[int, int]) -> None:
    """FIRST-LAST gives the inclusive pair (FIRST, LAST)."""
    assert range_of(text) == offsets


@pytest.mark.parametrize("text", ["5-1", "x", "100", "1-", "-5-3", "1..5"])
def test_parse_range_refuses(text: str) -> None:
    """A range with FIRST > LAST, or not FIRST-LAST, is a BadParameter with an example."""
    with pytest.raises(click.BadParameter, match="FIRST-LAST with FIRST <= LAST, e.g. 100-250"):
        range_of(text)


# -- the dlq commands' usage errors (exit 2, no broker) -------------------------------


def dlq(*args: str) -> tuple[int, str]:
    # An unreachable broker: if a usage check ever came after contacting Kafka, these tests fail (exit 1).
    result = CliRunner().invoke(main, ["dlq", *args], env={"EVENTQ_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    return result.exit_code, result.output


def test_replay_with_a_bad_since_exits_2() -> None:
    """`dlq replay T --since nonsense` exits 2 naming --since and both accepted forms."""
    code, output = dlq("replay", "orders.dlt", "--since", "nonsense")
    assert code == 2
    assert "--since" in output and "ISO 8601" in output and "30m, 2h, 7d" in output


def test_replay_with_since_not_before_until_exits_2() -> None:
    """`dlq replay T --since X --until Y` with X not before Y exits 2."""
    code, output = dlq("replay", "orders.dlt", "--since", "2h", "--until", "3h", "--yes")
    assert code == 2
    assert "--since must be before --until" in output


def test_replay_with_a_zero_rate_exits_2() -> None:
    """`dlq replay T --rate 0/s` exits 2 saying the rate must be positive."""
    code, output = dlq("replay", "orders.dlt", "--rate", "0/s")
    assert code == 2
    assert "--rate" in output and "must be positive" in output


def test_replay_with_a_reversed_offset_range_exits_2() -> None:
    """`dlq replay T --offset-range 9-3` exits 2 showing the FIRST-LAST form."""
    code, output = dlq("replay", "orders.dlt", "--offset-range", "9-3")
    assert code == 2
    assert "--offset-range" in output and "FIRST-LAST" in output


@pytest.mark.parametrize("args", [(), ("--offset", "5", "--event-id", EVENT_ID.decode())], ids=["neither", "both"])
def test_show_needs_exactly_one_of_offset_and_event_id(args: tuple[str, ...]) -> None:
    """`dlq show T` with neither (or both) of --offset and --event-id exits 2 naming both options."""
    code, output = dlq("show", "orders.dlt", *args)
    assert code == 2
    assert "--offset" in output and "--event-id" in output


def test_replay_without_a_terminal_needs_yes() -> None:
    """`dlq replay T` with stdin not a terminal and neither --yes nor --dry-run exits 2 saying to add --yes,
    before contacting any broker."""
    code, output = dlq("replay", "orders.dlt")
    assert code == 2
    assert "not a terminal" in output and "add --yes" in output


# -- hostile letters (issue 12) -------------------------------------------------------

SPRING_WRAPPED = [
    ("kafka_dlt-original-topic", b"orders"),
    ("kafka_dlt-exception-fqcn", b"org.springframework.kafka.listener.ListenerExecutionFailedException"),
    ("kafka_dlt-exception-cause-fqcn", b"com.shop.PaymentDeclined"),
]


def spring_wrapped() -> Letter:
    return parse(Record("orders.dlt", 0, 3, DLT_MS, b"customer-7", b"{}", ENVELOPE + SPRING_WRAPPED))


@pytest.mark.parametrize(
    ("wanted", "matches"),
    [("com.shop.PaymentDeclined", True), ("PaymentDeclined", True), ("ListenerExecutionFailedException", True),
     ("org.springframework.kafka.listener.ListenerExecutionFailedException", True), ("Declined", False)],
)
def test_error_type_matches_the_spring_cause_or_the_wrapper(wanted: str, matches: bool) -> None:
    """--error-type selects a Spring letter by the cause's class as well as by the wrapper's class."""
    assert Filters(error_type=wanted).matches(spring_wrapped()) is matches


def unreadable() -> Letter:
    letter = parse(Record("orders.dlt", 2, 9, DLT_MS, b"k", b"v", 42))  # type: ignore[arg-type]
    assert letter.dialect == "unreadable"
    return letter


def test_decide_fails_an_unreadable_letter_with_its_reason() -> None:
    """An unreadable letter is 'failed' (never replayed, also with --to), and the reason says why."""
    verdict, reason = _decide(unreadable(), Filters(), "orders-replay", 3, KNOWN)

    assert verdict == "failed"
    assert reason.startswith("eventq cannot read this letter (TypeError: ")


def test_decide_fails_an_unreadable_letter_even_with_other_criteria() -> None:
    """Criteria eventq cannot judge on an unreadable letter do not hide it: it is still reported as failed."""
    assert _decide(unreadable(), Filters(key="customer-7"), None, 3, KNOWN)[0] == "failed"


def test_decide_filters_an_unreadable_letter_outside_the_offset_range() -> None:
    """An unreadable letter outside --offset-range is filtered, like any letter there."""
    assert _decide(unreadable(), Filters(offsets=(0, 5)), None, 3, KNOWN) == ("filtered", "")


def test_decide_clips_a_huge_source_topic_in_its_reason() -> None:
    """A 10,000-character source topic from a header is cut to 200 characters in the failure reason."""
    letter = replace(declined(), source_topic="t" * 10_000)

    verdict, reason = _decide(letter, Filters(), None, 3, KNOWN)

    assert verdict == "failed"
    assert reason == f"target topic {'t' * 200 + '…[10000 chars]'!r} does not exist"


def test_replay_headers_replace_undecodable_names_with_replacement_characters() -> None:
    """A header name that is not UTF-8 is republished with U+FFFD, so the producer can encode it; values stay."""
    bad = b"\xff\xfe".decode("utf-8", "surrogateescape")
    headers = [*ENVELOPE, (bad, b"\x00raw"), ("x-tag", b"a"), ("source_topic", b"orders")]
    letter = parse(Record("orders.dlt", 0, 5, DLT_MS, b"k", b"{}", headers))
    assert (letter.dialect, letter.undecodable_names) == ("karafka", 1)

    headers = _replay_headers(letter, "run-1")

    assert headers[3:5] == [("\ufffd\ufffd", b"\x00raw"), ("x-tag", b"a")]
    for name, _ in headers:
        name.encode("utf-8")  # what aiokafka's producer does with every name


@pytest.mark.parametrize("text", ["1e-300", "0.009", "1e-300/s", "nan", "inf", "-inf", "1000001", "1e308"])
def test_parse_rate_refuses_rates_outside_the_range(text: str) -> None:
    """A rate that is not finite, below 0.01/s or above 1,000,000/s is a BadParameter naming the range."""
    with pytest.raises(click.BadParameter, match=r"from 0\.01/s to 1000000/s"):
        rate_of(text)


@pytest.mark.parametrize(("text", "rate"), [("0.01", 0.01), ("1000000/s", 1e6), ("1e6", 1e6)])
def test_parse_rate_accepts_the_ends_of_the_range(text: str, rate: float) -> None:
    """0.01/s and 1,000,000/s themselves are accepted."""
    assert rate_of(text) == rate


def test_replay_with_a_vanishing_rate_exits_2_naming_the_range() -> None:
    """`dlq replay T --rate 1e-300` exits 2 with one error line naming --rate and the accepted range."""
    code, output = dlq("replay", "orders.dlt", "--rate", "1e-300", "--yes")
    assert code == 2
    [error] = [line for line in output.splitlines() if line.startswith("Error")]
    assert "--rate" in error and "from 0.01/s to 1000000/s" in error


@pytest.mark.parametrize("rate", [1e-300, float("nan"), float("inf"), 2e6, 0.0])
async def test_replay_refuses_a_rate_outside_the_range_before_contacting_kafka(rate: float) -> None:
    """replay() itself refuses such a rate with ConfigError (the broker given is unreachable)."""
    from eventq.config import KafkaSettings
    from eventq.dlq.replay import replay

    with pytest.raises(ConfigError, match="rate must be from 0.01 to 1e"):
        await replay(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "orders.dlt", rate=rate)


# -- dlq show's text output -----------------------------------------------------------


def shown(letter: Letter, capsys: pytest.CaptureFixture[str]) -> list[str]:
    commands._print_letter(letter)
    return capsys.readouterr().out.splitlines()


def test_show_leaves_out_what_a_karafka_letter_does_not_carry(capsys: pytest.CaptureFixture[str]) -> None:
    """`dlq show` of a Karafka letter has no failure, error or 'None' text: absent fields are left out."""
    karafka = [("source_topic", b"orders"), ("source_partition", b"3"), ("source_offset", b"1207"),
               ("source_consumer_group", b"billing")]
    letter = parse(Record("orders.dlt", 0, 7, DLT_MS, b"customer-7", b"{}", ENVELOPE + karafka))

    lines = shown(letter, capsys)

    assert "None" not in "\n".join(lines)
    assert lines[0] == "dead letter orders.dlt/0/7, dead-lettered 2024-05-01T12:01:00.456+00:00 (karafka headers)"
    assert "  origin     orders partition 3 offset 1207 consumer group billing" in lines
    assert not any(line.lstrip().startswith(("failure", "error")) for line in lines)


def test_show_prints_a_spring_cause_and_a_whole_eventq_letter(capsys: pytest.CaptureFixture[str]) -> None:
    """`dlq show` prints a Spring letter's cause class, and every field of an eventq letter."""
    assert "  error      org.springframework.kafka.listener.ListenerExecutionFailedException "\
           "(cause com.shop.PaymentDeclined)" in shown(spring_wrapped(), capsys)

    lines = shown(declined(), capsys)

    assert "  failure    exhausted after 5 attempt(s) in myservice.handlers.on_created" in lines
    assert "  error      myservice.errors.PaymentDeclined: card 4242 declined" in lines


def test_show_of_hostile_letters_prints_raw_time_and_safe_names(capsys: pytest.CaptureFixture[str]) -> None:
    """`dlq show` of a year-0 letter with a non-UTF-8 header name prints the raw ms and U+FFFD, no traceback."""
    bad = b"\xff\xfe".decode("utf-8", "surrogateescape")
    letter = parse(Record("orders.dlt", 0, 5, -62135683200000, None, None, [(bad, b"x")]))

    lines = shown(letter, capsys)

    assert lines[0] == ("dead letter orders.dlt/0/5, dead-lettered timestamp -62135683200000 ms (out of range) "
                        "(unknown headers)")
    assert "  headers    \ufffd\ufffd" in lines
    assert "  note       1 header name(s) not UTF-8" in lines


def test_show_of_an_unreadable_letter_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    """`dlq show` of an unreadable letter prints its position and the reason."""
    lines = shown(unreadable(), capsys)

    assert lines[0].startswith("dead letter orders.dlt/2/9, dead-lettered 2024-05-01T12:01:00.456+00:00")
    assert lines[1].startswith("  unreadable TypeError: ")


def test_report_prints_renamed_header_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    """A replay report prints one warning line per letter replayed with replaced header names."""
    commands._print_report(ReplayReport(run="r1", topic="orders.dlt", replayed=["orders.dlt/0/5"],
                                        renamed=[("orders.dlt/0/5", 1)], targets={"orders": 1}))

    assert capsys.readouterr().out.splitlines()[0] == (
        "warning orders.dlt/0/5: 1 header name(s) not UTF-8, replayed with U+FFFD in place of the bytes"
    )
