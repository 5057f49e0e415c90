"""Connection settings shared by every Kafka client eventq creates.

Settings are frozen dataclasses with keyword-only constructors and a ``from_env()``
that reads ``EVENTQ_*`` variables; the CLI maps its options to the same fields.
Secrets (SASL password, TLS key password) are excluded from ``repr`` and never logged.

Plain constructors never read the environment; ``from_env(env=None, **overrides)``
reads every variable of its class except the fields given as keyword overrides (the
CLI's options), so a bad value is rejected with its variable's name whichever command
reads it (docs/adr/0013-settings-and-secrets.md).
"""

from __future__ import annotations

import math
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from eventq.errors import ConfigError

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
T = TypeVar("T")

# The longest duration a setting may have: aiokafka passes timeouts to the broker as
# milliseconds in a signed 32-bit int, so about 24.8 days is the most any of them can mean.
MAX_SECONDS = (2**31 - 1) // 1000


def env_str(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    """Return the non-empty value of ``name`` in ``env``, else ``default``."""
    value = env.get(name, "").strip()
    return value or default


def env_int(
    env: Mapping[str, str], name: str, default: int, *, minimum: int = 0, maximum: int = 2**31 - 1
) -> int:
    """Parse an integer variable; a bad value (or one outside minimum..maximum) raises ConfigError naming it."""
    raw = env_str(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer; set it to a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} is below the minimum of {minimum}")
    if value > maximum:
        raise ConfigError(f"{name}={value} is above the maximum of {maximum}")
    return value


def env_float(
    env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0, maximum: float = MAX_SECONDS
) -> float:
    """Parse a finite float variable; a bad value (also inf, nan, above ``maximum``) raises ConfigError naming it."""
    raw = env_str(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number; set it to e.g. 2.5") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name}={raw!r} is not a finite number; set it to e.g. 2.5")
    if value < minimum:
        raise ConfigError(f"{name}={value:g} is below the minimum of {minimum:g}")
    if value > maximum:
        raise ConfigError(f"{name}={value:g} is above the maximum of {maximum:g}")
    return value


def check_seconds(value: float, field_name: str, variable: str, *, minimum: float = 0.0) -> None:
    """Raise ConfigError unless ``value`` is a finite duration from ``minimum`` to :data:`MAX_SECONDS`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{field_name} must be a finite number of seconds ({variable})")
    if not minimum <= value <= MAX_SECONDS:
        raise ConfigError(f"{field_name} must be from {minimum:g} to {MAX_SECONDS} seconds ({variable})")


def read_env(
    cls: Callable[..., T],
    readers: Mapping[str, Callable[[], Any]],
    overrides: Mapping[str, Any],
) -> T:
    """``cls(**fields)``: each field from its reader unless ``overrides`` gives it (then it is not read)."""
    values = {name: read() for name, read in readers.items() if name not in overrides}
    return cls(**values, **overrides)


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
            if not sep or not host or not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
                raise ConfigError(
                    f"bootstrap server {server!r} is not host:port; "
                    "set EVENTQ_BOOTSTRAP_SERVERS to e.g. 127.0.0.1:9092"
                )
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(
                f"security_protocol {self.security_protocol!r} (EVENTQ_SECURITY_PROTOCOL) is unknown; "
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
                "sasl_mechanism (EVENTQ_SASL_MECHANISM) is set but security_protocol is "
                f"{self.security_protocol}; use SASL_PLAINTEXT or SASL_SSL"
            )
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ConfigError(
                    f"{name} {path!r} (EVENTQ_{name.upper()}) does not exist or is not a file"
                )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> KafkaSettings:
        """Read ``EVENTQ_BOOTSTRAP_SERVERS``, ``EVENTQ_CLIENT_ID``,
        ``EVENTQ_SECURITY_PROTOCOL``, ``EVENTQ_SSL_*`` and ``EVENTQ_SASL_*``; ``overrides`` win."""
        e = os.environ if env is None else env
        return read_env(cls, {
            "bootstrap_servers": lambda: env_str(e, "EVENTQ_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP) or "",
            "client_id": lambda: env_str(e, "EVENTQ_CLIENT_ID", "eventq") or "eventq",
            "security_protocol": lambda: (env_str(e, "EVENTQ_SECURITY_PROTOCOL", "PLAINTEXT") or "").upper(),
            "ssl_cafile": lambda: env_str(e, "EVENTQ_SSL_CAFILE"),
            "ssl_certfile": lambda: env_str(e, "EVENTQ_SSL_CERTFILE"),
            "ssl_keyfile": lambda: env_str(e, "EVENTQ_SSL_KEYFILE"),
            "ssl_password": lambda: env_str(e, "EVENTQ_SSL_PASSWORD"),
            "sasl_mechanism": lambda: env_str(e, "EVENTQ_SASL_MECHANISM"),
            "sasl_username": lambda: env_str(e, "EVENTQ_SASL_USERNAME"),
            "sasl_password": lambda: e.get("EVENTQ_SASL_PASSWORD"),
        }, overrides)

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
                raise ConfigError(
                    f"cannot load the TLS files (EVENTQ_SSL_CAFILE, EVENTQ_SSL_CERTFILE, EVENTQ_SSL_KEYFILE): "
                    f"{exc}; check that they are PEM and that EVENTQ_SSL_PASSWORD opens the key"
                ) from exc
        if self.sasl_mechanism is not None:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password
        return kwargs
