"""The supervisor's restart policy, worker command, health verdicts and merged metrics, without processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from eventq.consumers import ConsumerSettings
from eventq.consumers.supervisor import (
    RestartPolicy,
    Verdict,
    _SupervisorStatus,
    _Worker,
    _WorkerMetrics,
    worker_command,
)
from eventq.errors import ConfigError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def crash_after(policy: RestartPolicy, clock: FakeClock, ran_s: float, code: int = -9) -> Verdict:
    policy.started()
    clock.now += ran_s
    return policy.exited(code, reported_start=True)


def test_repeated_failures_back_off_from_one_second_doubling_to_thirty() -> None:
    """Each failure in a row doubles the restart delay, from 1 s up to at most 30 s."""
    clock = FakeClock()
    policy = RestartPolicy(clock=clock)

    delays = [crash_after(policy, clock, 2.0).delay_s for _ in range(8)]

    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_a_worker_that_ran_a_minute_before_failing_restarts_after_one_second_again() -> None:
    """A failure after 60 s of running resets the back-off to its first step."""
    clock = FakeClock()
    policy = RestartPolicy(clock=clock)
    for _ in range(4):
        crash_after(policy, clock, 1.0)

    assert crash_after(policy, clock, 60.0) == Verdict("restart", 1.0)
    assert crash_after(policy, clock, 59.0) == Verdict("restart", 2.0)


def test_exit_zero_is_done_and_never_restarted() -> None:
    """A worker that exits 0 (its --until-idle finished) is done, whenever it exits."""
    clock = FakeClock()
    policy = RestartPolicy(clock=clock)

    assert crash_after(policy, clock, 0.1, code=0) == Verdict("done")


def test_a_failure_before_the_first_start_was_reported_or_a_usage_error_is_fatal() -> None:
    """Exit 1 before the daemon first reported its start, or exit 2 at any time, stops the supervisor."""
    clock = FakeClock()
    first = RestartPolicy(clock=clock)
    first.started()
    assert first.exited(1, reported_start=False) == Verdict("fatal")

    later = RestartPolicy(clock=clock)
    crash_after(later, clock, 5.0, code=1)
    later.started()
    assert later.exited(1, reported_start=False) == Verdict("restart", 2.0)  # it did start once: a crash
    assert crash_after(later, clock, 500.0, code=2) == Verdict("fatal")

    killed = RestartPolicy(clock=clock)
    killed.started()
    assert killed.exited(-9, reported_start=False) == Verdict("restart", 1.0)  # a signal is never a config error


def test_the_worker_command_is_the_same_command_with_one_worker_and_any_health_port() -> None:
    """A worker runs the supervisor's own arguments with --workers 1 --health-port 0 last, in its log format."""
    argv = ["--log-level", "DEBUG", "consume", "svc:app", "--workers", "3", "--health-port", "8080"]

    command = worker_command(argv, json_logs=True)

    assert command == [sys.executable, "-m", "eventq.cli", "--log-json", *argv,
                       "--workers", "1", "--health-port", "0"]  # fmt: skip
    assert worker_command(["consume", "svc:app"], json_logs=False)[3] == "--log-console"


def test_workers_are_a_setting_of_1_to_64_read_from_eventq_workers() -> None:
    """EVENTQ_WORKERS sets the number of workers; out of 1-64 is a one-line error naming the variable."""
    assert ConsumerSettings.from_env({"EVENTQ_WORKERS": "4"}).workers == 4
    assert ConsumerSettings.from_env({}).workers == 1
    with pytest.raises(ConfigError, match="EVENTQ_WORKERS=65 is above the maximum of 64"):
        ConsumerSettings.from_env({"EVENTQ_WORKERS": "65"})
    with pytest.raises(ConfigError, match="EVENTQ_WORKERS"):
        ConsumerSettings(workers=0)


def worker(index: int, **state: object) -> _Worker:
    w = _Worker(index, RestartPolicy(), Path(f"/nonexistent/{index}"))
    for name, value in state.items():
        setattr(w, name, value)
    return w


def test_live_while_every_worker_that_should_run_is_live_or_restarting_and_ready_only_when_all_are() -> None:
    """/livez counts starting and backing-off workers as live; /readyz needs every running worker ready."""
    ready = worker(0, state="running", port=1, live=True, ready=True)
    backoff = worker(1, state="backoff")
    status = _SupervisorStatus([ready, backoff])
    assert (status.live, status.ready) == (True, False)

    backoff.state, backoff.port, backoff.live, backoff.ready = "running", 2, True, True
    assert (status.live, status.ready) == (True, True)
    assert [w["ready"] for w in status.as_dict()["workers"]] == [True, True]

    backoff.live = False
    assert status.live is False

    ready.state, backoff.state = "done", "done"
    assert (status.live, status.ready) == (True, False)


def test_metrics_are_the_workers_metrics_labelled_by_worker_plus_restarts() -> None:
    """/metrics merges each worker's families into one, each sample labelled with its worker."""
    text = (
        "# HELP eventq_consumer_lag Lag\n# TYPE eventq_consumer_lag gauge\n"
        'eventq_consumer_lag{{partition="0"}} {n}\n'
    )
    workers = [
        worker(0, state="running", metrics=text.format(n=5), restarts=2),
        worker(1, state="running", metrics=text.format(n=7)),
    ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_WorkerMetrics(workers))

    out = generate_latest(registry).decode()

    assert out.count("# TYPE eventq_consumer_lag gauge") == 1
    assert 'eventq_consumer_lag{partition="0",worker="0"} 5.0' in out
    assert 'eventq_consumer_lag{partition="0",worker="1"} 7.0' in out
    assert 'eventq_supervisor_restarts_total{worker="0"} 2.0' in out
    assert 'eventq_supervisor_worker_up{worker="1"} 1.0' in out
