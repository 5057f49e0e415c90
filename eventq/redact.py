"""Masking secrets that are shaped like URLs or ``key=value`` connection parameters.

:func:`redact` is a pure function of the text: it needs no registry of secret values,
so it can run on every CLI error line and every log line (:func:`redact_processor`)
without any state. It masks

- the password of a URL's user-info: ``postgresql://user:***@host/db``;
- the value of every parameter libpq or asyncpg treat as a secret (``password``,
  ``sslpassword``), in a URL's query string or a libpq ``key=value`` string, whatever
  the case of the name and however it is percent-encoded (``PassWord=``, ``pass%77ord=``).

Secrets that are not shaped like that (``EVENTQ_SASL_PASSWORD``, ``EVENTQ_SSL_PASSWORD``)
are kept out of messages at the source instead: settings exclude them from ``repr`` and
no eventq message formats them (docs/adr/0013-settings-and-secrets.md).
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import unquote_plus

MASK = "***"

# libpq connection parameters whose value is a secret (asyncpg reads the same names).
SECRET_PARAMETERS = frozenset({"password", "sslpassword"})

# scheme://user:password@ — the password runs to the last "@" before white space or a quote.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@'\"]*):(?P<secret>[^\s'\"]*)@")
# name=value where name may be percent-encoded; value runs to a separator.
_PARAMETER = re.compile(r"(?P<name>[A-Za-z0-9%_+.\-]+)(?P<eq>\s*=\s*|%3[Dd])(?P<value>'(?:[^'\\]|\\.)*'|[^\s&'\"#]*)")


def _mask_parameter(match: re.Match[str]) -> str:
    name = unquote_plus(match.group("name")).strip().lower()
    if name not in SECRET_PARAMETERS or not match.group("value"):
        return match.group(0)
    return f"{match.group('name')}{match.group('eq')}{MASK}"


def redact(text: str) -> str:
    """``text`` with every URL password and secret connection parameter replaced by ``***``."""
    if "=" not in text and "@" not in text:
        return text  # the common case on the logging hot path: nothing to look at
    text = _USERINFO.sub(lambda m: f"{m.group('head')}:{MASK}@", text)
    return _PARAMETER.sub(_mask_parameter, text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, BaseException):
        text = str(value)
        masked = redact(text)
        return value if masked == text else f"{type(value).__name__}: {masked}"
    return value


def redact_processor(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: :func:`redact` every string value of the line (and stdlib messages' arguments)."""
    for key, value in event_dict.items():
        if key == "_record":
            continue  # the stdlib LogRecord itself; its rendered message is in "event"
        if key.lower().endswith("password") and value is not None:
            event_dict[key] = MASK
            continue
        masked = _redact_value(value)
        if masked is not value:
            event_dict[key] = masked
    return event_dict
