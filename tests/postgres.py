"""PostgreSQL for tests: the server ``.ci/run`` starts, a fresh database per test.

The tests that need PostgreSQL read its URL from ``CHUCK_TEST_POSTGRES_URL`` (a role that may
create databases, e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``). Without it they
skip, saying so, so that the README's test command runs where no server is installed; with
``CHUCK_TEST_REQUIRE_POSTGRES=1`` (set by ``.ci/run``) a missing or unreachable server fails
them instead, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

URL_VAR = "CHUCK_TEST_POSTGRES_URL"
REQUIRE_VAR = "CHUCK_TEST_REQUIRE_POSTGRES"


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_VAR):
        pytest.fail(f"{reason}, and {REQUIRE_VAR} is set: PostgreSQL tests must run here")
    pytest.skip(reason)


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The server's admin URL, checked reachable."""
    url = os.environ.get(URL_VAR)
    if not url:
        _unavailable(f"no PostgreSQL server: set {URL_VAR} (.ci/run starts one)")
    try:
        import psycopg
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'chuck[postgres]')")
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        _unavailable(f"PostgreSQL at {URL_VAR} is unreachable: {str(exc).strip()}")
    return url  # type: ignore[return-value]


def _admin(url: str, sql: str) -> None:
    import psycopg

    # autocommit: CREATE/DROP DATABASE cannot run in a transaction
    with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture
def fresh_database(postgres_url):
    """A new, empty database for one test (dropped afterwards); yields its URL."""
    name = f"chuck_test_{uuid.uuid4().hex[:12]}"
    _admin(postgres_url, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(postgres_url, name)
    finally:
        _admin(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def query(url: str, sql: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.execute(sql).fetchall()
