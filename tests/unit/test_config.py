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
        ({"EVENTQ_DELIVERY_TIMEOUT_S": "-1"}, "EVENTQ_DELIVERY_TIMEOUT_S=-1.0 is below the minimum"),
        ({"EVENTQ_BOOTSTRAP_SERVERS": "localhost"}, "'localhost' is not host:port"),
        ({"EVENTQ_SECURITY_PROTOCOL": "TLS"}, "security_protocol 'TLS' is unknown"),
        ({"EVENTQ_SECURITY_PROTOCOL": "SASL_SSL"}, "needs sasl_mechanism"),
        ({"EVENTQ_COMPRESSION": "brotli"}, "compression 'brotli' is unknown"),
        ({"EVENTQ_SSL_CAFILE": "/no/such/ca.pem"}, "ssl_cafile '/no/such/ca.pem' does not exist"),
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
