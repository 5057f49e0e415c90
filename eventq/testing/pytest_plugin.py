"""pytest plugin (loaded automatically once eventq is installed): the ``eventq_kit`` fixture.

``eventq_kit(app, **options)`` makes a :class:`~eventq.testing.TestKit` for the test;
use it as ``async with eventq_kit(app) as kit:``. It gets the database URL from
``--eventq-database-url`` or ``EVENTQ_TEST_DATABASE_URL`` when one is set (a kit
without one keeps rows in memory and refuses ``transactional=True`` handlers);
``eventq_database_url`` is that URL, or None.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from eventq.consumers.app import App
from eventq.testing.kit import TestKit

ENV = "EVENTQ_TEST_DATABASE_URL"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("eventq").addoption(
        "--eventq-database-url", default=None, metavar="URL",
        help=f"PostgreSQL for eventq TestKits (transactional handlers, real rows); default ${ENV}",
    )


def configured_url(option: object, environ: Mapping[str, str]) -> str | None:
    """--eventq-database-url's value, else $EVENTQ_TEST_DATABASE_URL, else None (empty counts as unset)."""
    url = option or environ.get(ENV) or None
    return str(url) if url else None


@pytest.fixture
def eventq_database_url(request: pytest.FixtureRequest) -> str | None:
    """The database URL eventq TestKits get: --eventq-database-url, else $EVENTQ_TEST_DATABASE_URL, else None."""
    return configured_url(request.config.getoption("--eventq-database-url"), os.environ)


@pytest.fixture
def eventq_kit(eventq_database_url: str | None) -> Callable[..., TestKit]:
    """A factory of TestKits: ``async with eventq_kit(app) as kit:`` (options as for TestKit)."""

    def make(app: App, *args: Any, **options: Any) -> TestKit:
        options.setdefault("database_url", eventq_database_url)
        return TestKit(app, *args, **options)

    return make
