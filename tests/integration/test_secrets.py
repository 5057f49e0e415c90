"""Secrets never leave the process: not in error lines, logs, ``repr`` or any command's output.

A distinctive secret is planted in every place one can be configured (the database URL's
user-info, ``?password=``, ``?sslpassword=`` and a percent-encoded ``pass%77ord=``,
``EVENTQ_SASL_PASSWORD``, ``EVENTQ_SSL_PASSWORD``); then every failure path the CLI can
be driven into runs in a subprocess at ``--log-level DEBUG``, and the secret must appear
nowhere in what it printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from eventq.config import KafkaSettings
from eventq.consumers import ConsumerSettings
from eventq.database import DatabaseSettings
from eventq.producers import ProducerSettings
from eventq_dev.devstack import StackSettings

EVENTQ = str(Path(sys.executable).with_name("eventq"))
REPO = Path(__file__).resolve().parents[2]
STACK = StackSettings.from_env()  # the dev stack the suite runs against (its ports may be moved)
BOOTSTRAP = STACK.bootstrap_servers
STACK_ENV = {
    "EVENTQ_STACK_DIR": str(STACK.dir),
    "EVENTQ_DEV_KAFKA_PORT": str(STACK.kafka_port),
    "EVENTQ_DEV_CONTROLLER_PORT": str(STACK.controller_port),
    "EVENTQ_DEV_PG_PORT": str(STACK.pg_port),
}

SECRETS = {
    "userinfo": "Xu7-userinfo-S3CR3T",
    "query": "Xq7-query-S3CR3T",
    "ssl_query": "Xs7-sslquery-S3CR3T",
    "encoded": "Xe7-encoded-S3CR3T",
    "sasl": "Xk7-sasl-S3CR3T",
    "tls": "Xt7-tlskey-S3CR3T",
}
APP = (
    "from eventq.consumers import App\n"
    "app = App('secrets', topics=['secrets.orders'])\n\n"
    "@app.handler('eventq.ping.v1')\n"
    "async def on_ping(event, ctx):\n"
    "    pass\n"
)


def url(
    host: str = f"127.0.0.1:{STACK.pg_port}", user: str = "postgres", database: str = "eventq", extra: str = ""
) -> str:
    """A database URL carrying the secret in user-info, ``password=``, ``sslpassword=`` and ``pass%77ord=``."""
    return (
        f"postgresql://{user}:{SECRETS['userinfo']}@{host}/{database}?password={SECRETS['query']}"
        f"&sslpassword={SECRETS['ssl_query']}&pass%77ord={SECRETS['encoded']}{extra}"
    )


SASL = {
    "EVENTQ_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "EVENTQ_SASL_MECHANISM": "SCRAM-SHA-512",
    "EVENTQ_SASL_USERNAME": "alice",
    "EVENTQ_SASL_PASSWORD": SECRETS["sasl"],
}


def assert_no_secret(text: str) -> None:
    for where, secret in SECRETS.items():
        assert secret not in text, f"the {where} secret leaked:\n{text}"


def run_eventq(argv: list[str], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTQ_", "OTEL_"))}
    base.update({"PYTHONPATH": str(REPO), "OTEL_SDK_DISABLED": "true", "EVENTQ_DELIVERY_TIMEOUT_S": "5", **env})
    return subprocess.run(
        [EVENTQ, "--log-level", "DEBUG", *argv], env=base, cwd=cwd, capture_output=True, text=True, timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A self-signed certificate and a key encrypted with a passphrase that is not the planted secret."""
    home = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-keyout", "key.pem", "-out", "cert.pem", "-days", "1",
         "-subj", "/CN=eventq-test", "-passout", "pass:not-the-secret"],
        cwd=home, check=True, capture_output=True,
    )
    return {"EVENTQ_SSL_CERTFILE": str(home / "cert.pem"), "EVENTQ_SSL_KEYFILE": str(home / "key.pem")}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "secret_app.py").write_text(APP)
    return tmp_path


DB_FAILURES = [
    pytest.param({"EVENTQ_DATABASE_URL": url(host="127.0.0.1:1")}, id="refused"),
    pytest.param({"EVENTQ_DATABASE_URL": url(host="127.0.0.1:notaport")}, id="port-word"),
    pytest.param({"EVENTQ_DATABASE_URL": url(host="127.0.0.1:99999")}, id="port-too-big"),
    pytest.param({"EVENTQ_DATABASE_URL": url(extra="&sslmode=bogus")}, id="sslmode-bogus"),
    pytest.param({"EVENTQ_DATABASE_URL": url(host="no-such-host.invalid:5432")}, id="unknown-host"),
    pytest.param({"EVENTQ_DATABASE_URL": url(extra="&sslmode=require")}, id="ssl-rejected", marks=pytest.mark.postgres),
    pytest.param({"EVENTQ_DATABASE_URL": url(user="no_such_role")}, id="auth-failure", marks=pytest.mark.postgres),
    pytest.param({"EVENTQ_DATABASE_URL": url(database="no_such_db")}, id="unknown-db", marks=pytest.mark.postgres),
    pytest.param({"EVENTQ_DATABASE_URL": url(extra="&no_such_setting=1")}, id="bad-parameter",
                 marks=pytest.mark.postgres),
    # asyncpg, like libpq, matches names exactly: this one goes to the server as a setting
    pytest.param({"EVENTQ_DATABASE_URL": url(extra=f"&PassWord={SECRETS['query']}")}, id="mixed-case-name",
                 marks=pytest.mark.postgres),
    pytest.param({"EVENTQ_DATABASE_URL": url(extra="&sslmode=verify-full&sslrootcert=/no/such/root.crt")},
                 id="missing-root-cert"),
]


@pytest.mark.parametrize("env", DB_FAILURES)
@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["db", "migrate"], id="migrate"),
        pytest.param(["db", "purge", "--older-than", "30d"], id="purge"),
        pytest.param(["consume", "secret_app:app", "--migrate", "--until-idle"], id="consume"),
        pytest.param(["demo", "--events", "20", "--bootstrap-servers", "127.0.0.1:1"], id="demo"),
    ],
)
def test_database_failures_never_show_the_secret(workdir: Path, argv: list[str], env: dict[str, str]) -> None:
    """Every database failure (bad URL, refused, unknown host, auth, SSL) prints no secret of the URL."""
    result = run_eventq(argv, env, workdir)
    assert result.returncode != 0
    assert_no_secret(result.stdout + result.stderr)
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["db", "migrate", "--database-url", url(host="127.0.0.1:1")], id="migrate-option"),
        pytest.param(["db", "migrate", "--database-url", url(host="[::1")], id="unparseable-option"),
        pytest.param(["consume", "secret_app:app", "--database-url", url(extra="&sslmode=nope")], id="consume-option"),
    ],
)
def test_database_url_option_is_not_echoed(workdir: Path, argv: list[str]) -> None:
    """A secret-bearing --database-url given on the command line is shown redacted, never as given."""
    result = run_eventq(argv, {}, workdir)
    assert result.returncode == 1
    assert "***" in result.stderr
    assert_no_secret(result.stdout + result.stderr)


@pytest.mark.postgres
def test_successful_migrate_shows_no_secret(workdir: Path) -> None:
    """A migrate that works against the real PostgreSQL (which ignores the passwords) prints none of them."""
    result = run_eventq(["db", "migrate"], {"EVENTQ_DATABASE_URL": url()}, workdir)
    assert result.returncode == 0, result.stderr
    assert_no_secret(result.stdout + result.stderr)


KAFKA_COMMANDS = [
    pytest.param(["publish", "-t", "secrets.orders", "--type", "eventq.ping.v1"], id="publish"),
    pytest.param(["topics", "create", "secrets.orders"], id="topics-create"),
    pytest.param(["dlq", "list"], id="dlq-list"),
    pytest.param(["dlq", "show", "secrets.orders.dlt", "--offset", "0"], id="dlq-show"),
    pytest.param(["dlq", "replay", "secrets.orders.dlt", "--dry-run"], id="dlq-replay"),
    pytest.param(["dlq", "archive", "secrets.orders.dlt", "--file", "archive.jsonl"], id="dlq-archive"),
    pytest.param(["consume", "secret_app:app", "--until-idle"], id="consume"),
    pytest.param(["demo", "--events", "20"], id="demo"),
]


@pytest.mark.parametrize("argv", KAFKA_COMMANDS)
@pytest.mark.parametrize(
    "broker",
    [
        pytest.param("127.0.0.1:1", id="refused"),
        pytest.param("no-such-host.invalid:9092", id="unknown-host"),
        pytest.param(BOOTSTRAP, id="plaintext-listener", marks=pytest.mark.kafka),
    ],
)
def test_sasl_failures_never_show_the_password(workdir: Path, argv: list[str], broker: str) -> None:
    """With a SASL password set, every Kafka command failing to connect or authenticate prints no secret."""
    env = {**SASL, "EVENTQ_BOOTSTRAP_SERVERS": broker, "EVENTQ_DATABASE_URL": url(host="127.0.0.1:1")}
    result = run_eventq(argv, env, workdir)
    assert result.returncode != 0
    assert_no_secret(result.stdout + result.stderr)
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("argv", KAFKA_COMMANDS)
@pytest.mark.parametrize("right_password", [pytest.param(False, id="wrong-key-password"),
                                            pytest.param(True, id="tls-to-plaintext", marks=pytest.mark.kafka)])
def test_tls_failures_never_show_the_key_password(
    workdir: Path, tls_files: dict[str, str], argv: list[str], right_password: bool
) -> None:
    """With a TLS key password set, a key it cannot open or a failed handshake prints no secret."""
    # The real passphrase is not distinctive, so only the wrong-password case plants the secret;
    # the handshake case plants it in the SASL variables instead (SASL_SSL).
    env = {**tls_files, "EVENTQ_DATABASE_URL": url(host="127.0.0.1:1"), "EVENTQ_BOOTSTRAP_SERVERS": BOOTSTRAP}
    if right_password:
        env |= {**SASL, "EVENTQ_SECURITY_PROTOCOL": "SASL_SSL", "EVENTQ_SSL_PASSWORD": "not-the-secret"}
    else:
        env |= {"EVENTQ_SECURITY_PROTOCOL": "SSL", "EVENTQ_SSL_PASSWORD": SECRETS["tls"]}
    result = run_eventq(argv, env, workdir)
    assert result.returncode != 0
    assert_no_secret(result.stdout + result.stderr)
    assert "Traceback" not in result.stdout + result.stderr


def test_unexpected_errors_and_tracebacks_are_redacted(workdir: Path) -> None:
    """Even ``--traceback`` output of a failure whose text holds the URL shows it redacted."""
    (workdir / "leaky_app.py").write_text(f"raise RuntimeError('cannot use {url()}')\n")
    result = run_eventq(["--traceback", "consume", "leaky_app:app"], {}, workdir)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "password=***" in result.stderr
    assert_no_secret(result.stdout + result.stderr)


def test_handler_logs_are_redacted(workdir: Path) -> None:
    """A log line whose text or fields hold a URL or a ``password`` field is printed redacted."""
    (workdir / "logging_app.py").write_text(
        "import logging, structlog\n"
        f"structlog.get_logger().error('connecting', dsn={url()!r}, password={SECRETS['sasl']!r})\n"
        f"logging.getLogger('asyncpg').error('connect to %s failed', {url()!r})\n"
        "app = 1\n"
    )
    result = run_eventq(["consume", "logging_app:app"], {}, workdir)
    assert "connecting" in result.stderr and "connect to" in result.stderr
    assert_no_secret(result.stdout + result.stderr)


def test_dev_up_with_an_unreachable_database_shows_no_secret(workdir: Path) -> None:
    """``eventq dev up`` pointed at an external database that refuses prints no secret of its URL."""
    env = {"EVENTQ_DATABASE_URL": url(host="127.0.0.1:1"), **STACK_ENV}
    result = run_eventq(["dev", "up"], env, workdir)
    assert result.returncode == 1
    assert_no_secret(result.stdout + result.stderr)


def test_repr_of_every_settings_object_shows_no_secret() -> None:
    """``repr`` of every settings class built from secret-bearing variables holds none of the secrets."""
    env = {**SASL, "EVENTQ_SECURITY_PROTOCOL": "SASL_SSL", "EVENTQ_SSL_PASSWORD": SECRETS["tls"],
           "EVENTQ_DATABASE_URL": url()}
    objects = [
        KafkaSettings.from_env(env),
        DatabaseSettings.from_env(env),
        ProducerSettings.from_env(env),
        ConsumerSettings.from_env(env),
    ]
    for settings in objects:
        assert_no_secret(repr(settings))
        assert_no_secret(str(settings))
    assert DatabaseSettings.from_env(env).url == url()  # the secret is still there to connect with


@pytest.mark.postgres
@pytest.mark.kafka
def test_dev_up_with_an_external_database_shows_no_secret(workdir: Path) -> None:
    """``eventq dev up`` with a reachable external database exports only the brokers: its password never shows."""
    env = {"EVENTQ_DATABASE_URL": url(), **STACK_ENV}
    result = run_eventq(["dev", "up"], env, workdir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"export EVENTQ_BOOTSTRAP_SERVERS={BOOTSTRAP}"]
    assert_no_secret(result.stdout + result.stderr)
