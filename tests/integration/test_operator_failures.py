"""What an operator sees when a command fails: one line, the right exit code, never a traceback.

Each case runs the real ``eventq`` executable in a subprocess (as an operator would), in a
working directory holding the handler modules below, with no ``EVENTQ_*`` variable from
the test's own environment except the ones the case sets.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from eventq_dev.devstack import StackSettings

EVENTQ = str(Path(sys.executable).with_name("eventq"))
REPO = Path(__file__).resolve().parents[2]
STACK = StackSettings.from_env()  # the dev stack the suite runs against (its ports may be moved)
PG_PORT = STACK.pg_port
# Where the stack is, unless a case says otherwise.
STACK_ENV = {
    "EVENTQ_BOOTSTRAP_SERVERS": STACK.bootstrap_servers,
    "EVENTQ_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{PG_PORT}/eventq",
}
REFUSED_KAFKA = "127.0.0.1:1"  # nothing listens on port 1: connection refused at once
REFUSED_DB = "postgresql://postgres@127.0.0.1:1/eventq"

MODULES = {
    "good_app.py": (
        "from eventq.consumers import App\n"
        "app = App('opfail', topics=['opfail.orders'])\n\n"
        "@app.handler('eventq.ping.v1')\n"
        "async def on_ping(event, ctx):\n"
        "    pass\n"
    ),
    "raises_app.py": "from eventq.consumers import App\n\napp = App('opfail')\nrate = 1 / 0\n",
    "missing_app.py": "import no_such_package_for_eventq_tests\n",
    "syntax_app.py": "def broken(:\n    pass\n",
    "interrupt_app.py": "raise KeyboardInterrupt\n",
    "not_an_app.py": "app = 42\n",
}


def run_eventq(argv: list[str], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``eventq ARGV`` with a clean EVENTQ_* environment (the stack's address) plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTQ_", "OTEL_"))}
    base.update({"PYTHONPATH": str(REPO), "OTEL_SDK_DISABLED": "true", **STACK_ENV, **env})
    return subprocess.run(
        [EVENTQ, *argv], env=base, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A working directory holding the handler modules of :data:`MODULES`."""
    for name, text in MODULES.items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A local port something already listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


CONSUME = ["consume", "good_app:app", "--bootstrap-servers", REFUSED_KAFKA]
PUBLISH = ["publish", "-t", "opfail.orders", "--type", "eventq.ping.v1", "--bootstrap-servers", REFUSED_KAFKA]
DLQ_REPLAY = ["dlq", "replay", "opfail.orders.dlt", "--bootstrap-servers", REFUSED_KAFKA, "--dry-run"]

# (case id, argv, env, exit code, words the last line of stderr contains)
CASES: list[tuple[str, list[str], dict[str, str], int, str]] = [
    # handler modules that cannot be imported: the module, the exception, where it came from
    ("import-raises", ["consume", "raises_app:app"], {}, 1,
     "importing 'raises_app' failed: ZeroDivisionError: division by zero (raises_app.py:4)"),
    ("import-missing-package", ["consume", "missing_app:app"], {}, 1,
     "importing 'missing_app' failed: ModuleNotFoundError: No module named 'no_such_package_for_eventq_tests' "
     "(missing_app.py:1)"),
    ("import-syntax-error", ["consume", "syntax_app:app"], {}, 1,
     "importing 'syntax_app' failed: SyntaxError: invalid syntax (syntax_app.py:1)"),
    ("module-not-found", ["consume", "no_such_module:app"], {}, 2, "module 'no_such_module' not found"),
    ("not-an-app", ["consume", "not_an_app:app"], {}, 2, "is int, not an eventq App"),
    ("not-module-colon-app", ["consume", "good_app"], {}, 2, "is not MODULE:ATTRIBUTE"),
    # consumer variables
    ("batch-timeout-inf", CONSUME, {"EVENTQ_MAX_BATCH_TIMEOUT_S": "inf"}, 1,
     "EVENTQ_MAX_BATCH_TIMEOUT_S='inf' is not a finite number"),
    ("poll-interval-inf", CONSUME, {"EVENTQ_MAX_POLL_INTERVAL_S": "inf"}, 1,
     "EVENTQ_MAX_POLL_INTERVAL_S='inf' is not a finite number"),
    ("poll-interval-nan", CONSUME, {"EVENTQ_MAX_POLL_INTERVAL_S": "nan"}, 1,
     "EVENTQ_MAX_POLL_INTERVAL_S='nan' is not a finite number"),
    ("session-timeout-past-int32-ms", CONSUME, {"EVENTQ_SESSION_TIMEOUT_S": "1e12"}, 1,
     "EVENTQ_SESSION_TIMEOUT_S=1e+12 is above the maximum"),
    ("grace-minus-inf", CONSUME, {"EVENTQ_SHUTDOWN_GRACE_S": "-inf"}, 1,
     "EVENTQ_SHUTDOWN_GRACE_S='-inf' is not a finite number"),
    ("batch-size-word", CONSUME, {"EVENTQ_MAX_BATCH_SIZE": "many"}, 1,
     "EVENTQ_MAX_BATCH_SIZE='many' is not an integer"),
    ("attempts-zero", CONSUME, {"EVENTQ_MAX_ATTEMPTS": "0"}, 1, "EVENTQ_MAX_ATTEMPTS=0 is below the minimum of 1"),
    ("ordering-unknown", CONSUME, {"EVENTQ_ORDERING": "random"}, 1, "EVENTQ_ORDERING='random' is unknown"),
    ("health-port-word", CONSUME, {"EVENTQ_HEALTH_PORT": "http"}, 1, "EVENTQ_HEALTH_PORT='http' is not an integer"),
    ("health-port-too-big", CONSUME, {"EVENTQ_HEALTH_PORT": "70000"}, 1,
     "EVENTQ_HEALTH_PORT=70000 is above the maximum of 65535"),
    ("create-topics-maybe", CONSUME, {"EVENTQ_CREATE_TOPICS": "maybe"}, 1,
     "EVENTQ_CREATE_TOPICS='maybe' is not a boolean"),
    ("pool-size-one", CONSUME, {"EVENTQ_DB_POOL_SIZE": "1"}, 1, "EVENTQ_DB_POOL_SIZE=1 is below the minimum of 2"),
    ("daemon-reads-producer-variables", CONSUME, {"EVENTQ_LINGER_MS": "-5"}, 1,
     "EVENTQ_LINGER_MS=-5 is below the minimum of 0"),
    ("daemon-reads-compression", CONSUME, {"EVENTQ_COMPRESSION": "bogus"}, 1,
     "EVENTQ_COMPRESSION='bogus' is unknown"),
    ("option-overrides-variable", [*CONSUME, "--max-attempts", "0"], {}, 2, "--max-attempts"),
    # producer variables, read by eventq publish
    ("delivery-timeout-word", PUBLISH, {"EVENTQ_DELIVERY_TIMEOUT_S": "abc"}, 1,
     "EVENTQ_DELIVERY_TIMEOUT_S='abc' is not a number"),
    ("linger-negative", PUBLISH, {"EVENTQ_LINGER_MS": "-5"}, 1, "EVENTQ_LINGER_MS=-5 is below the minimum of 0"),
    ("compression-unknown", PUBLISH, {"EVENTQ_COMPRESSION": "bogus"}, 1, "EVENTQ_COMPRESSION='bogus' is unknown"),
    ("no-topic", ["publish", "--type", "eventq.ping.v1"], {}, 2, "give --topic TOPIC or set EVENTQ_TOPIC"),
    ("bad-json", [*PUBLISH, "--data", "{oops"], {}, 2, "not valid JSON"),
    # Kafka connection variables, for every command that talks to Kafka
    ("bootstrap-not-host-port", PUBLISH[:-2] + ["--bootstrap-servers", "localhost"], {}, 1,
     "'localhost' is not host:port"),
    ("bootstrap-port-too-big", ["dlq", "list"], {"EVENTQ_BOOTSTRAP_SERVERS": "127.0.0.1:99999"}, 1,
     "'127.0.0.1:99999' is not host:port"),
    ("security-protocol-unknown", ["topics", "create", "x"], {"EVENTQ_SECURITY_PROTOCOL": "TLS"}, 1,
     "(EVENTQ_SECURITY_PROTOCOL) is unknown"),
    ("sasl-without-mechanism", ["dlq", "show", "x.dlt", "--offset", "0"],
     {"EVENTQ_SECURITY_PROTOCOL": "SASL_SSL"}, 1, "needs sasl_mechanism (EVENTQ_SASL_MECHANISM)"),
    ("ssl-cafile-missing", DLQ_REPLAY, {"EVENTQ_SECURITY_PROTOCOL": "SSL", "EVENTQ_SSL_CAFILE": "/no/ca.pem"}, 1,
     "(EVENTQ_SSL_CAFILE) does not exist"),
    ("refused-broker", ["dlq", "list", "--bootstrap-servers", REFUSED_KAFKA], {}, 1,
     "cannot reach a Kafka broker at 127.0.0.1:1"),
    ("log-level-unknown", ["dlq", "list"], {"EVENTQ_LOG_LEVEL": "LOUD"}, 1, "EVENTQ_LOG_LEVEL='LOUD' is unknown"),
    # ages too large for a datetime
    ("dlq-since-overflow", [*DLQ_REPLAY, "--since", "99999999999d"], {}, 2, "more than 36500d (100 years) ago"),
    ("dlq-archive-before-overflow", ["dlq", "archive", "x.dlt", "--file", "a.jsonl", "--before", "99999999999d"],
     {}, 2, "more than 36500d (100 years) ago"),
    ("purge-older-than-overflow", ["db", "purge", "--older-than", "99999999999d"], {}, 2,
     "longer than 36500d (100 years)"),
    ("purge-older-than-word", ["db", "purge", "--older-than", "forever"], {}, 2, "is not a duration"),
    ("topics-partitions-past-int32", ["topics", "create", "x", "--partitions", "99999999999"], {}, 2,
     "--partitions"),
    # database URLs and variables
    ("db-port-word", ["db", "migrate"], {"EVENTQ_DATABASE_URL": "postgresql://postgres@127.0.0.1:notaport/eventq"},
     1, "has port 'notaport'; a port is a number from 1 to 65535 (EVENTQ_DATABASE_URL)"),
    ("db-port-zero", ["db", "migrate", "--database-url", "postgresql://postgres@127.0.0.1:0/eventq"], {}, 1,
     "has port '0'"),
    ("db-sslmode-bogus", ["db", "migrate"], {"EVENTQ_DATABASE_URL": "postgresql://postgres@127.0.0.1/e?sslmode=bogus"},
     1, "has sslmode='bogus'; use one of disable, allow, prefer, require, verify-ca, verify-full"),
    ("db-not-postgres", ["db", "migrate", "--database-url", "mysql://root@127.0.0.1/e"], {}, 1,
     "is not a PostgreSQL URL"),
    ("db-bad-ipv6", ["db", "migrate", "--database-url", "postgresql://postgres@[::1/eventq"], {}, 1,
     "cannot be parsed"),
    ("db-connect-timeout-inf", ["db", "migrate"], {"EVENTQ_DB_CONNECT_TIMEOUT_S": "inf"}, 1,
     "EVENTQ_DB_CONNECT_TIMEOUT_S='inf' is not a finite number"),
    ("db-refused", ["db", "migrate", "--database-url", REFUSED_DB], {}, 1,
     "cannot use the database at postgresql://postgres@127.0.0.1:1/eventq"),
    ("consume-db-refused-migrate", [*CONSUME, "--migrate"], {"EVENTQ_DATABASE_URL": REFUSED_DB}, 1,
     "cannot use the database at postgresql://postgres@127.0.0.1:1/eventq"),
    # files the operator named
    ("trace-file-missing", ["trace", "some-id", "--file", "no/such/spans.jsonl"], {}, 1, "cannot read span file"),
    ("demo-trace-file-unwritable", ["demo", "--trace-file", "/proc/no-such-dir/spans.jsonl"], {}, 1,
     "cannot use '/proc/no-such-dir'"),
]


@pytest.mark.parametrize(
    ("argv", "env", "code", "words"),
    [
        *(pytest.param(*c[1:], id=c[0]) for c in CASES),
        # the size check runs when the event is sent, so this one needs the broker
        pytest.param(["publish", "-t", "opfail.orders", "--type", "eventq.ping.v1", "--data",
                      '{"pad": "' + "x" * 3000 + '"}'], {"EVENTQ_MAX_EVENT_BYTES": "2000"}, 1,
                     "over the limit of 2000 bytes (max_event_bytes / EVENTQ_MAX_EVENT_BYTES)",
                     id="max-event-bytes-applied", marks=pytest.mark.kafka),
    ],
)
def test_failure_is_one_line_with_the_right_exit_code(
    workdir: Path, argv: list[str], env: dict[str, str], code: int, words: str
) -> None:
    """Each known failure exits 1 (failed) or 2 (usage), its last stderr line says what was wrong, no traceback."""
    result = run_eventq(argv, env, workdir)
    output = result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == code, output
    assert last.startswith("Error:"), output
    assert words in last, output
    assert "Traceback" not in output


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("url", "words"),
    [
        pytest.param(f"postgresql://no_such_role@127.0.0.1:{PG_PORT}/eventq", 'role "no_such_role" does not exist',
                     id="unknown-role"),
        pytest.param(f"postgresql://postgres@127.0.0.1:{PG_PORT}/no_such_db_for_eventq", "does not exist",
                     id="unknown-db"),
        pytest.param(f"postgresql://postgres@127.0.0.1:{PG_PORT}/eventq?sslmode=require", "rejected SSL upgrade",
                     id="ssl-required-but-off"),
        pytest.param(f"postgresql://postgres@127.0.0.1:{PG_PORT}/eventq?no_such_setting=1",
                     "unrecognized configuration",
                     id="unknown-parameter"),
    ],
)
def test_database_refusals_are_one_line(workdir: Path, url: str, words: str) -> None:
    """PostgreSQL's own refusals (role, database, SSL, parameter) end as one ``Error:`` line, exit 1."""
    result = run_eventq(["db", "migrate", "--database-url", url], {}, workdir)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: cannot use the database")
    assert words in result.stderr and "Traceback" not in result.stdout + result.stderr


@pytest.mark.kafka
@pytest.mark.postgres
def test_health_port_taken_is_one_line(workdir: Path, busy_port: int) -> None:
    """``--health-port`` on a port already in use exits 1 with one line naming the port (no traceback)."""
    created = run_eventq(["topics", "create", "opfail.orders", "--partitions", "1"], {}, workdir)
    assert created.returncode == 0, created.stderr
    result = run_eventq(
        ["consume", "good_app:app", "--health-port", str(busy_port), "--until-idle", "--migrate"], {}, workdir
    )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error:") and str(busy_port) in last, result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("switch", [pytest.param(["--traceback"], id="flag"), pytest.param([], id="EVENTQ_DEBUG")])
def test_traceback_switch_shows_the_full_traceback(workdir: Path, switch: list[str]) -> None:
    """``eventq --traceback`` or ``EVENTQ_DEBUG=1`` prints the full traceback, still ending with the ``Error:`` line."""
    env = {} if switch else {"EVENTQ_DEBUG": "1"}
    result = run_eventq([*switch, "consume", "raises_app:app"], env, workdir)
    assert result.returncode == 1
    assert "Traceback (most recent call last):" in result.stderr
    assert 'raises_app.py", line 4' in result.stderr and "rate = 1 / 0" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: importing 'raises_app' failed")


def test_interrupt_exits_130_quietly(workdir: Path) -> None:
    """A KeyboardInterrupt (Ctrl-C) anywhere in a command exits 130 with nothing on stderr."""
    result = run_eventq(["consume", "interrupt_app:app"], {}, workdir)
    assert (result.returncode, result.stderr) == (130, "")
