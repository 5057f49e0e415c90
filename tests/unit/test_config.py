"""Settings: environment parsing, validation messages, and secrets kept out of repr."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from eventq.config import KafkaSettings
from eventq.database import DatabaseSettings
from eventq.errors import ConfigError
from eventq.producers import ProducerSettings


def test_from_env_reads_eventq_variables() -> None:
    """EVENTQ_* variables map onto the settings fields."""
    settings = ProducerSettings.from_env(
        {
            "EVENTQ_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
            "EVENTQ_TOPIC": "orders",
            "EVENTQ_SCHEMAS": "/srv/schemas,myapp.schemas",
            "EVENTQ_LINGER_MS": "20",
            "EVENTQ_COMPRESSION": "zstd",
            "EVENTQ_DELIVERY_TIMEOUT_S": "7.5",
        }
    )
    assert settings.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert settings.default_topic == "orders"
    assert settings.schemas == ("/srv/schemas", "myapp.schemas")
    assert (settings.linger_ms, settings.compression, settings.delivery_timeout_s) == (20, "zstd", 7.5)


def test_defaults_need_no_environment() -> None:
    """With no variables set, settings point at the local dev stack."""
    settings = ProducerSettings.from_env({})
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.default_topic is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EVENTQ_LINGER_MS": "soon"}, "EVENTQ_LINGER_MS='soon' is not an integer"),
        ({"EVENTQ_DELIVERY_TIMEOUT_S": "-1"}, "EVENTQ_DELIVERY_TIMEOUT_S=-1 is below the minimum"),
        ({"EVENTQ_BOOTSTRAP_SERVERS": "localhost"}, "'localhost' is not host:port"),
        ({"EVENTQ_SECURITY_PROTOCOL": "TLS"}, "security_protocol 'TLS' (EVENTQ_SECURITY_PROTOCOL) is unknown"),
        ({"EVENTQ_SECURITY_PROTOCOL": "SASL_SSL"}, "needs sasl_mechanism"),
        ({"EVENTQ_COMPRESSION": "brotli"}, "EVENTQ_COMPRESSION='brotli' is unknown"),
        ({"EVENTQ_SSL_CAFILE": "/no/such/ca.pem"}, "ssl_cafile '/no/such/ca.pem' (EVENTQ_SSL_CAFILE) does not exist"),
        ({"EVENTQ_SASL_MECHANISM": "PLAIN"}, "use SASL_PLAINTEXT or SASL_SSL"),
    ],
)
def test_invalid_values_name_the_setting(env: dict[str, str], message: str) -> None:
    """Each invalid value raises ConfigError whose message names the setting."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ProducerSettings.from_env(env)


def test_sasl_settings_pass_through_to_aiokafka() -> None:
    """SASL credentials reach the aiokafka client options."""
    settings = KafkaSettings(
        bootstrap_servers="k:9093",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="s3cret",
    )
    kwargs = settings.client_kwargs()
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("svc", "s3cret")


def test_secrets_never_appear_in_repr() -> None:
    """repr() of settings (what ends up in logs and tracebacks) omits passwords."""
    settings = ProducerSettings(
        kafka=KafkaSettings(
            security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="svc", sasl_password="s3cret"
        )
    )
    assert "s3cret" not in repr(settings)
    assert "svc" in repr(settings)


def test_tls_settings_build_a_verifying_ssl_context(tmp_path: Path) -> None:
    """SSL settings reach aiokafka as an SSLContext that trusts the given CA and verifies the broker."""
    ca = tmp_path / "ca.pem"
    key = tmp_path / "ca.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=eventq-test-ca",
         "-keyout", str(key), "-out", str(ca)],
        check=True, capture_output=True,
    )
    kwargs = KafkaSettings(bootstrap_servers="k:9093", security_protocol="SSL", ssl_cafile=str(ca)).client_kwargs()
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "eventq-test-ca"),),)]
    assert kwargs["security_protocol"] == "SSL"


def test_database_url_must_be_postgresql_and_its_password_stays_hidden() -> None:
    """A non-PostgreSQL URL is a ConfigError; a password never shows in repr or safe_url."""
    with pytest.raises(ConfigError, match="EVENTQ_DATABASE_URL"):
        DatabaseSettings.from_env({"EVENTQ_DATABASE_URL": "mysql://db:3306/x"})
    settings = DatabaseSettings.from_env({"EVENTQ_DATABASE_URL": "postgresql://svc:s3cret@db:5432/events"})
    assert settings.safe_url == "postgresql://svc:***@db:5432/events"
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("inf", "EVENTQ_DELIVERY_TIMEOUT_S='inf' is not a finite number"),
        ("-inf", "EVENTQ_DELIVERY_TIMEOUT_S='-inf' is not a finite number"),
        ("nan", "EVENTQ_DELIVERY_TIMEOUT_S='nan' is not a finite number"),
        ("1e12", "EVENTQ_DELIVERY_TIMEOUT_S=1e+12 is above the maximum of 2.14748e+06"),
        ("0", "EVENTQ_DELIVERY_TIMEOUT_S=0 is below the minimum of 0.001"),
    ],
)
def test_durations_must_be_finite_and_fit_kafkas_milliseconds(raw: str, message: str) -> None:
    """A duration variable that is infinite, not a number or past int32 milliseconds is refused by name."""
    with pytest.raises(ConfigError) as caught:
        ProducerSettings.from_env({"EVENTQ_DELIVERY_TIMEOUT_S": raw})
    assert message in str(caught.value)


def test_constructor_refuses_an_infinite_duration() -> None:
    """Settings built in code get the same bound as from the environment: no infinite timeout."""
    with pytest.raises(ConfigError, match="delivery_timeout_s must be a finite number"):
        ProducerSettings(delivery_timeout_s=float("inf"))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EVENTQ_LINGER_MS": "-5"}, "EVENTQ_LINGER_MS=-5 is below the minimum of 0"),
        ({"EVENTQ_LINGER_MS": "99999999"}, "EVENTQ_LINGER_MS=99999999 is above the maximum of 60000"),
        ({"EVENTQ_MAX_EVENT_BYTES": "10"}, "EVENTQ_MAX_EVENT_BYTES=10 is below the minimum of 1024"),
        ({"EVENTQ_MAX_BATCH_BYTES": "lots"}, "EVENTQ_MAX_BATCH_BYTES='lots' is not an integer"),
        ({"EVENTQ_BOOTSTRAP_SERVERS": "k:0"}, "'k:0' is not host:port"),
    ],
)
def test_every_producer_variable_is_checked_by_name(env: dict[str, str], message: str) -> None:
    """Each producer variable's bad value raises ConfigError naming the variable."""
    with pytest.raises(ConfigError) as caught:
        ProducerSettings.from_env(env)
    assert message in str(caught.value)


def test_overrides_win_and_are_not_read_from_the_environment() -> None:
    """from_env(**overrides) uses the override and never parses that field's variable (so a bad one is moot)."""
    env = {"EVENTQ_TOPIC": "from-env", "EVENTQ_LINGER_MS": "nonsense", "EVENTQ_MAX_EVENT_BYTES": "2000"}
    settings = ProducerSettings.from_env(env, default_topic="orders", linger_ms=0)
    assert (settings.default_topic, settings.linger_ms, settings.max_event_bytes) == ("orders", 0, 2000)
    kafka = KafkaSettings.from_env({"EVENTQ_BOOTSTRAP_SERVERS": "bad"}, bootstrap_servers="k1:9092")
    assert kafka.bootstrap_servers == "k1:9092"


def test_plain_constructors_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """ProducerSettings() gives the documented defaults whatever EVENTQ_* says; from_env() reads it."""
    monkeypatch.setenv("EVENTQ_BOOTSTRAP_SERVERS", "k9:9092")
    monkeypatch.setenv("EVENTQ_MAX_EVENT_BYTES", "2000")
    assert ProducerSettings().kafka.bootstrap_servers == "127.0.0.1:9092"
    assert ProducerSettings.from_env().max_event_bytes == 2000
    assert ProducerSettings.from_env(default_topic="orders").kafka.bootstrap_servers == "k9:9092"


def test_producer_without_settings_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Producer() uses ProducerSettings.from_env(), so EVENTQ_BOOTSTRAP_SERVERS applies to it."""
    from eventq.producers import Producer

    monkeypatch.setenv("EVENTQ_BOOTSTRAP_SERVERS", "k9:9092")
    monkeypatch.setenv("EVENTQ_TOPIC", "orders")
    producer = Producer()
    assert (producer.settings.kafka.bootstrap_servers, producer.settings.default_topic) == ("k9:9092", "orders")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://u@h:notaport/db", "has port 'notaport'; a port is a number from 1 to 65535"),
        ("postgresql://u@h:0/db", "has port '0'"),
        ("postgresql://u@h:70000/db", "has port '70000'"),
        ("postgresql://u@h1:5432,h2:x/db", "has port 'x'"),
        ("postgresql://u@h/db?sslmode=bogus", "has sslmode='bogus'; use one of disable, allow, prefer"),
        ("postgresql://u@[::1/db", "cannot be parsed"),
        ("postgresql:///db", "is not a PostgreSQL URL"),
    ],
)
def test_database_url_is_checked_before_connecting(url: str, message: str) -> None:
    """A database URL with a bad port or sslmode raises ConfigError naming EVENTQ_DATABASE_URL."""
    with pytest.raises(ConfigError) as caught:
        DatabaseSettings(url=url)
    assert message in str(caught.value) and "EVENTQ_DATABASE_URL" in str(caught.value)


def test_database_url_accepts_multiple_hosts_and_ipv6() -> None:
    """Multi-host and bracketed IPv6 URLs, with or without ports, are valid."""
    for url in ("postgresql://u@h1:5432,h2:5433/db", "postgresql://u@[::1]:5432/db?sslmode=verify-full",
                "postgres://u@h/db", "postgresql://u@h1,h2/db"):
        assert DatabaseSettings(url=url).url == url


def test_safe_url_masks_every_password_form() -> None:
    """safe_url hides the user-info password and every password/sslpassword parameter, in any case or encoding."""
    settings = DatabaseSettings(
        url="postgresql://u:p1@h/db?application_name=x&PASSWORD=p2&sslPassword=p3&pass%77ord=p4&sslmode=require"
    )
    assert settings.safe_url == (
        "postgresql://u:***@h/db?application_name=x&PASSWORD=***&sslPassword=***&pass%77ord=***&sslmode=require"
    )
    assert "p1" not in repr(settings)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cannot use postgresql://u:s3cr%40t@h:5/db: refused", "cannot use postgresql://u:***@h:5/db: refused"),
        ("url 'postgres://u:a@b@h/db' bad", "url 'postgres://u:***@h/db' bad"),
        ("host=h password=s3cret user=u", "host=h password=*** user=u"),
        ("host=h password = 's3 cret' user=u", "host=h password = *** user=u"),
        ("?sslpassword=x&user=u", "?sslpassword=***&user=u"),
        ("?pass%77ord=x", "?pass%77ord=***"),
        ("?Pass+word=x", "?Pass+word=x"),  # "pass word" is no libpq parameter
        ("postgresql://u@h/db?password=", "postgresql://u@h/db?password="),
        ("nothing to hide: a=1, user@example.com", "nothing to hide: a=1, user@example.com"),
    ],
)
def test_redact_masks_url_and_keyword_secrets(text: str, expected: str) -> None:
    """redact() masks URL user-info passwords and password/sslpassword parameters, and nothing else."""
    from eventq.redact import redact

    assert redact(text) == expected


def test_redact_processor_masks_strings_and_password_fields() -> None:
    """The structlog processor redacts every string value and any field named like a password."""
    from eventq.redact import redact_processor

    line = redact_processor(None, "info", {"event": "db postgresql://u:pw@h/db", "sasl_password": "x", "n": 3})
    assert line == {"event": "db postgresql://u:***@h/db", "sasl_password": "***", "n": 3}


def test_unloadable_tls_key_is_a_config_error_without_the_password(tmp_path: Path) -> None:
    """A key its EVENTQ_SSL_PASSWORD cannot open raises ConfigError that names the variables, not the password."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-keyout", "k.pem", "-out", "c.pem", "-days", "1",
         "-subj", "/CN=t", "-passout", "pass:right"],
        cwd=tmp_path, check=True, capture_output=True,
    )
    settings = KafkaSettings(security_protocol="SSL", ssl_certfile=str(tmp_path / "c.pem"),
                             ssl_keyfile=str(tmp_path / "k.pem"), ssl_password="wrong-Zz9")
    with pytest.raises(ConfigError) as caught:
        settings.client_kwargs()
    assert "EVENTQ_SSL_PASSWORD" in str(caught.value) and "wrong-Zz9" not in str(caught.value)
