"""Fixtures of the use-case tests: a database of a test's own, for use cases that work across
tenants (the alert scan, the timer engine) and so would see every other test's flows in the
session's shared database.

``own_store`` (function)
    An open `FlowStore` on a migrated database of the test's own, dropped afterwards. The
    database is a copy of a migrated template: ``FLOWSTATE_TEST_TEMPLATE_DATABASE`` when set
    (``make mutate``), else one this session migrates once (``service_template``).
``own_database_url`` (function)
    That database's URL (for direct SQL).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from sqlalchemy.engine import make_url

from flowstate.storage import FlowStore
from flowstate.storage.migrate import upgrade

TEMPLATE_DATABASE_ENV = "FLOWSTATE_TEST_TEMPLATE_DATABASE"
"""As in tests/conftest.py (not importable: tests/ is no package)."""


@pytest_asyncio.fixture(scope="session")
async def service_template(database_server: Any) -> AsyncIterator[str]:
    """The name of a database migrated to head that nobody connects to (a template)."""
    given = os.environ.get(TEMPLATE_DATABASE_ENV, "").strip()
    if given:
        yield given
        return
    url = await database_server.create_database("flowstate_service_template")
    await upgrade(url)
    yield str(make_url(url).database)
    await database_server.drop_database(url)


@pytest_asyncio.fixture
async def own_database_url(database_server: Any, service_template: str) -> AsyncIterator[str]:
    url = await database_server.create_database("flowstate_service", template=service_template)
    yield url
    await database_server.drop_database(url)


@pytest_asyncio.fixture
async def own_store(own_database_url: str) -> AsyncIterator[FlowStore]:
    store = await FlowStore.open(own_database_url)
    yield store
    await store.close()
