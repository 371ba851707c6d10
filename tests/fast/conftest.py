"""tests/fast runs without PostgreSQL: a test here that asks for the database
(``postgresql``, and through it ``dsn``, ``backend``, ``server``...) fails at
once instead of starting a server."""

import pytest


@pytest.fixture(scope="session")
def postgresql() -> None:
    pytest.fail("tests/fast need no PostgreSQL: use the memory backend (tests/fast/wire.py)")
