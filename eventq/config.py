"""Connection settings shared by every Kafka client eventq creates.

Settings are frozen dataclasses with keyword-only constructors and a ``from_env()``
that reads ``EVENTQ_*`` variables; the CLI maps its options to the same fields.
Secrets (SASL password, TLS key password) are excluded from ``repr`` and never logged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from eventq.errors import ConfigError

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


def env_str(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    """Return the non-empty value of ``name`` in ``env``, else ``default``."""
    value = env.get(name, "").strip()
    return value or default


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    """Parse an integer variable; a bad value raises ConfigError naming the variable."""
    raw = env_str(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer; set it to a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} is below the minimum of {minimum}")
    return value


def env_float(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    """Parse a float variable; a bad value raises ConfigError naming the variable."""
    raw = env_str(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number; set it to e.g. 2.5") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} is below the minimum of {minimum}")
    return value


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
        servers = [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]
        if not servers:
            raise ConfigError(
                "bootstrap_servers is empty; set EVENTQ_BOOTSTRAP_SERVERS to host:port[,host:port]"
            )
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError(
                    f"bootstrap server {server!r} is not host:port; "
                    "set EVENTQ_BOOTSTRAP_SERVERS to e.g. 127.0.0.1:9092"
                )
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(
                f"security_protocol {self.security_protocol!r} is unknown; "
                f"use one of {', '.join(SECURITY_PROTOCOLS)}"
            )
        uses_sasl = self.security_protocol.startswith("SASL")
        if uses_sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ConfigError(
                    f"{self.security_protocol} needs sasl_mechanism "
                    f"(EVENTQ_SASL_MECHANISM) set to one of {', '.join(SASL_MECHANISMS)}"
                )
            if not self.sasl_username or self.sasl_password is None:
                raise ConfigError(
                    f"{self.security_protocol} needs EVENTQ_SASL_USERNAME and EVENTQ_SASL_PASSWORD"
                )
        elif self.sasl_mechanism is not None:
            raise ConfigError(
                "sasl_mechanism is set but security_protocol is "
                f"{self.security_protocol}; use SASL_PLAINTEXT or SASL_SSL"
            )
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"{name} {path!r} does not exist or is not a file")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSettings:
        """Read ``EVENTQ_BOOTSTRAP_SERVERS``, ``EVENTQ_CLIENT_ID``,
        ``EVENTQ_SECURITY_PROTOCOL``, ``EVENTQ_SSL_*`` and ``EVENTQ_SASL_*``."""
        e = os.environ if env is None else env
        return cls(
            bootstrap_servers=env_str(e, "EVENTQ_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP) or "",
            client_id=env_str(e, "EVENTQ_CLIENT_ID", "eventq") or "eventq",
            security_protocol=(env_str(e, "EVENTQ_SECURITY_PROTOCOL", "PLAINTEXT") or "").upper(),
            ssl_cafile=env_str(e, "EVENTQ_SSL_CAFILE"),
            ssl_certfile=env_str(e, "EVENTQ_SSL_CERTFILE"),
            ssl_keyfile=env_str(e, "EVENTQ_SSL_KEYFILE"),
            ssl_password=env_str(e, "EVENTQ_SSL_PASSWORD"),
            sasl_mechanism=env_str(e, "EVENTQ_SASL_MECHANISM"),
            sasl_username=env_str(e, "EVENTQ_SASL_USERNAME"),
            sasl_password=e.get("EVENTQ_SASL_PASSWORD"),
        )

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client (producer, consumer, admin)."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile,
                certfile=self.ssl_certfile,
                keyfile=self.ssl_keyfile,
                password=self.ssl_password,
            )
        if self.sasl_mechanism is not None:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password
        return kwargs
