"""Tokens remembered per node and forgotten on every change (issue 11): a
check of a known token costs no statement, a revocation is heard at once,
and a node that cannot hear remembers nothing."""

import os
import signal

import pytest_twisted

from pgblobs import accounts
from pgblobs.db.sync import SyncConnection
from pgblobs.tokens import KnownTokens
from tests.helpers import (
    create_token,
    deferred_test,
    sleep,
    sql,
    statements_sent,
    until,
    wait_until,
)


@pytest_twisted.async_yield_fixture
async def known(backend):
    tokens = KnownTokens(backend.database)
    await tokens.start()
    yield tokens
    tokens.stop()


@deferred_test
async def test_a_known_token_costs_no_statement_until_it_is_revoked(backend, known, dsn):
    connection = SyncConnection.connect(dsn)
    try:
        token = accounts.create_token(connection, "alice")
        service_token = accounts.create_service_token(connection, "mx")
        # The creations' own notifications are heard first. Nothing the node
        # shows marks that (polling "remembered" raced a late notification),
        # so this stays a fixed wait.
        await sleep(0.3)
        assert await known.user_token_is_valid("alice", token)
        assert await known.service_token_is_valid("mx", service_token)
        sent = statements_sent(backend)
        for _ in range(3):
            assert await known.user_token_is_valid("alice", token)
            assert await known.service_token_is_valid("mx", service_token)
        assert sent == []
        # Neither kind of token opens the other's door.
        assert not await known.service_token_is_valid("alice", token)
        assert not await known.user_token_is_valid("mx", service_token)

        accounts.revoke_tokens(connection, "alice")

        async def refused():
            return not await known.user_token_is_valid("alice", token)

        assert await until(refused, "refused") < 1.0
        accounts.revoke_service_tokens(connection, "mx")

        async def service_refused():
            return not await known.service_token_is_valid("mx", service_token)

        assert await until(service_refused, "refused") < 1.0
    finally:
        connection.close()


@deferred_test
async def test_a_new_token_works_at_once_and_a_lost_listener_forgets_everything(
    backend, known, dsn
):
    connection = SyncConnection.connect(dsn)
    try:
        first = accounts.create_token(connection, "alice")
        assert await known.user_token_is_valid("alice", first)
        second = accounts.create_token(connection, "alice")
        assert await known.user_token_is_valid("alice", second)
        # Cut the listening connection: until it listens again every check
        # asks the database, so a revocation made meanwhile still counts.
        sql(
            dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE 'LISTEN pgblobs_tokens%%'",
        )
        accounts.revoke_tokens(connection, "alice")

        async def refused():
            return not await known.user_token_is_valid("alice", first)

        await until(refused, "refused")
        assert not await known.user_token_is_valid("alice", second)
        third = accounts.create_token(connection, "alice")

        async def accepted():
            return await known.user_token_is_valid("alice", third)

        await until(accepted, "accepted")
    finally:
        connection.close()


def listener_backend(dsn, seconds=10.0):
    """The one PostgreSQL backend that LISTENs for token changes."""

    def listening():
        rows = sql(dsn, "SELECT pid FROM pg_stat_activity WHERE query = 'LISTEN pgblobs_tokens'")
        return rows[0][0] if len(rows) == 1 else None

    return wait_until(listening, "one backend listening", timeout=seconds)


def remembered(is_valid, sent, name, token):
    """A condition for ``until``: ``is_valid(name, token)`` (a KnownTokens
    check) and asking again costs no statement (``sent``: statements_sent of
    the tokens' database)."""

    async def condition():
        assert await is_valid(name, token)
        before = len(sent)
        assert await is_valid(name, token)
        return len(sent) == before

    return condition


@deferred_test
async def test_a_stuck_listener_is_noticed_and_a_revocation_still_counts(backend, dsn):
    # Made before anyone listens, so no notification of its own races the test.
    token = create_token(dsn, "alice")
    known = KnownTokens(backend.database)
    await known.start()
    connection = SyncConnection.connect(dsn)
    sent = statements_sent(backend)
    try:
        await until(remembered(known.user_token_is_valid, sent, "alice", token))
        listening = listener_backend(dsn)
        # The listening connection's server stops answering, yet its socket
        # stays open: nothing tells the node, but its own liveness check.
        os.kill(listening, signal.SIGSTOP)
        try:
            accounts.revoke_tokens(connection, "alice")

            async def refused():
                return not await known.user_token_is_valid("alice", token)

            await until(refused, "refused", timeout=20)
            # Listening again (on a new connection), it remembers again.
            renewed = accounts.create_token(connection, "alice")
            await until(remembered(known.user_token_is_valid, sent, "alice", renewed), timeout=20)
        finally:
            os.kill(listening, signal.SIGCONT)
    finally:
        connection.close()
        known.stop()


@deferred_test
async def test_a_remembered_token_is_confirmed_again_after_token_cache_seconds(backend, dsn):
    token = create_token(dsn, "alice")  # before anyone listens, as above
    known = KnownTokens(backend.database, cache_seconds=0.5)
    await known.start()
    sent = statements_sent(backend)
    try:
        await until(remembered(known.user_token_is_valid, sent, "alice", token))
        asked = len(sent)

        async def asked_again():
            assert await known.user_token_is_valid("alice", token)
            return len(sent) > asked

        await until(asked_again, "asked again")
        assert sent[asked:] == ["token_digests"]
        assert await known.user_token_is_valid("alice", token)
        assert sent[asked:] == ["token_digests"]  # and remembered again
    finally:
        known.stop()
