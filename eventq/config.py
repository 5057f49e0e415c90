"""Connection settings shared by every Kafka client eventq creates.

Settings are frozen dataclasses with keyword-only constructors and a ``from_env()``
that reads ``EVENTQ_*`` variables; the CLI maps its options to the same fields.
Secrets (SASL password, TLS key password) are excluded from ``repr`` and never logged.

Plain constructors never read the environment; ``from_env(env=None, **overrides)``
reads every variable of its class except the fields given as keyword overrides (the
CLI's options), so a bad value is rejected with its variable's name whichever command
reads it (docs/adr/0013-settings-and-secrets.md). Each variable is declared once, in the
class's table (:data:`KAFKA` here; :mod:`eventq.settings_table`).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from eventq.errors import ConfigError
from eventq.settings_table import Setting, table

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


@dataclass(frozen=True, kw_only=True)
class KafkaSettings:
    """Where the brokers are and how to authenticate to them.

    Every field is validated on construction: an invalid combination raises
    :class:`~eventq.errors.ConfigError` naming the field and the fix.
    """

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    client_id: str = "eventq"
    security_protocol: str = "PLAINTEXT"
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = field(default=None, repr=False)
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        KAFKA.check(self)
        var = KAFKA.variable
        servers = [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]
        if not servers:
            raise ConfigError(f"bootstrap_servers is empty; set {var('bootstrap_servers')} to host:port[,host:port]")
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
                raise ConfigError(
                    f"bootstrap server {server!r} is not host:port; "
                    f"set {var('bootstrap_servers')} to e.g. 127.0.0.1:9092"
                )
        uses_sasl = self.security_protocol.startswith("SASL")
        if uses_sasl:
            if self.sasl_mechanism is None:
                raise ConfigError(
                    f"{self.security_protocol} needs sasl_mechanism "
                    f"({var('sasl_mechanism')}) set to one of {', '.join(SASL_MECHANISMS)}"
                )
            if not self.sasl_username or self.sasl_password is None:
                raise ConfigError(
                    f"{self.security_protocol} needs {var('sasl_username')} and {var('sasl_password')}"
                )
        elif self.sasl_mechanism is not None:
            raise ConfigError(
                f"sasl_mechanism ({var('sasl_mechanism')}) is set but security_protocol is "
                f"{self.security_protocol}; use SASL_PLAINTEXT or SASL_SSL"
            )
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"{name} {path!r} ({var(name)}) does not exist or is not a file")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> KafkaSettings:
        """Read the variables of :data:`KAFKA` (README, Configuration); ``overrides`` win and are not read."""
        return KAFKA.read(env, overrides)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client (producer, consumer, admin)."""
        from eventq.kafka import remember_connect_errors  # here: eventq.kafka imports this module

        remember_connect_errors()  # so that a failed bootstrap can say why (eventq.kafka.explain)
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            try:
                kwargs["ssl_context"] = create_ssl_context(
                    cafile=self.ssl_cafile,
                    certfile=self.ssl_certfile,
                    keyfile=self.ssl_keyfile,
                    password=self.ssl_password,
                )
            except (ssl.SSLError, OSError) as exc:  # the message names neither the files nor the password
                files = ", ".join(KAFKA.variable(name) for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"))
                raise ConfigError(
                    f"cannot load the TLS files ({files}): "
                    f"{exc}; check that they are PEM and that {KAFKA.variable('ssl_password')} opens the key"
                ) from exc
        if self.sasl_mechanism is not None:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password
        return kwargs


KAFKA = table(
    KafkaSettings,
    Setting("bootstrap_servers", "EVENTQ_BOOTSTRAP_SERVERS", help="Kafka brokers, host:port[,host:port]"),
    Setting("client_id", "EVENTQ_CLIENT_ID", help="Kafka client id"),
    Setting("security_protocol", "EVENTQ_SECURITY_PROTOCOL", "upper", choices=SECURITY_PROTOCOLS,
            help="how to reach the brokers"),
    Setting("ssl_cafile", "EVENTQ_SSL_CAFILE", help="CA certificates (PEM) that sign the brokers' certificates"),
    Setting("ssl_certfile", "EVENTQ_SSL_CERTFILE", help="this client's certificate (PEM)"),
    Setting("ssl_keyfile", "EVENTQ_SSL_KEYFILE", help="this client's private key (PEM)"),
    Setting("ssl_password", "EVENTQ_SSL_PASSWORD", help="the private key's password"),
    Setting("sasl_mechanism", "EVENTQ_SASL_MECHANISM", "choice", choices=SASL_MECHANISMS, help="SASL mechanism"),
    Setting("sasl_username", "EVENTQ_SASL_USERNAME", help="SASL user"),
    # "raw": a password is used as given, spaces and all (and an empty one is a password)
    Setting("sasl_password", "EVENTQ_SASL_PASSWORD", "raw", help="SASL password"),
)
"""The Kafka connection variables, one record per field of :class:`KafkaSettings`."""
