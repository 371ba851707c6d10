"""`pgblobs serve --user-tokens couchdb:URL`: users' tokens from a provider's
CouchDB (pouchdb-server here), checked as Soledad's server checks them, by
real `pgblobs serve` processes."""

import time
import urllib.request
from pathlib import Path
from urllib.error import HTTPError

import pytest
from twisted.internet import reactor

from pgblobs.settings import USER_TOKENS_VARIABLE
from pgblobs.tokens.couchdb import PERIOD_SECONDS, CouchDBAddress, CouchDBTokens, database_name
from tests.couchdb import PASSWORD, PouchDB
from tests.helpers import pgblobs_cli, token_header, until, wait_until
from tests.processes import ServeProcess

USER = "alice"
FOLLOWING = "following tokens_"  # what a node logs when it follows a feed


@pytest.fixture
def couchdb(tmp_path):
    server = PouchDB(tmp_path)
    yield server
    if server.process.poll() is None:
        server.stop()


@pytest.fixture
def nodes(dsn, couchdb):
    """Start nodes reading users' tokens from ``couchdb``; stopped at the end."""
    started = []
    couchdb.create_database()  # as a provider's has, before pgblobs starts

    def start(*more):
        node = ServeProcess("--dsn", dsn, "--user-tokens", f"couchdb:{couchdb.url}", *more)
        started.append(node)
        # Serving once it follows the feed (or failed to, once): here it must have.
        assert any(FOLLOWING in line for line in node.errors), "".join(node.errors)
        return node

    yield start
    for node in started:
        node.stop()


def answer(node, token, user=USER, path_user=USER):
    """(status, headers) of listing ``path_user``'s blobs with ``user:token``."""
    request = urllib.request.Request(f"{node.url}/blobs/{path_user}/")
    request.add_header("Authorization", token_header(user, token))
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers
    except HTTPError as error:
        return error.code, error.headers


def status(node, token, **users):
    return answer(node, token, **users)[0]


def test_a_token_from_couchdb_is_checked_as_soledad_checks_it(nodes, couchdb, dsn):
    node = nodes()
    token = couchdb.add_token(USER)
    assert status(node, token) == 200
    # Another user's path: the token is valid, for alice (as with pgblobs' own tokens).
    assert status(node, token, path_user="bob") == 403
    # Presented as bob's: not bob's token.
    assert status(node, token, user="bob", path_user="bob") == 401
    assert status(node, "never-issued") == 401
    # With couchdb, pgblobs' own token table is not consulted.
    own = pgblobs_cli("token", "create", USER, "--dsn", dsn)
    assert own.returncode == 0, own.stderr
    assert status(node, own.stdout.strip()) == 401


def test_a_logout_is_refused_on_two_nodes_within_a_second(nodes, couchdb):
    token = couchdb.add_token(USER)  # before: its creation is no change a node hears
    first, second = nodes(), nodes()
    assert [status(first, token), status(second, token)] == [200, 200]
    assert couchdb.lookups(token) == 2
    # Remembered by both (for --token-cache-seconds, 30 s, unless CouchDB says otherwise).
    assert [status(first, token), status(second, token)] == [200, 200]
    assert couchdb.lookups(token) == 2
    couchdb.remove_token(token)
    started = time.monotonic()
    wait_until(
        lambda: status(first, token) == 401 and status(second, token) == 401,
        "the removed token refused by both nodes",
        timeout=5,
    )
    assert time.monotonic() - started < 1.5


def test_a_changed_document_is_heard_too(nodes, couchdb):
    expiring, moved = couchdb.add_token(USER), couchdb.add_token(USER)
    node = nodes()
    assert [status(node, expiring), status(node, moved)] * 2 == [200, 200] * 2
    assert [couchdb.lookups(expiring), couchdb.lookups(moved)] == [1, 1]  # remembered
    couchdb.change_token(expiring, type="Expired")
    couchdb.change_token(moved, user_id="bob")
    wait_until(lambda: status(node, expiring) == 401, "the expired token refused", timeout=1.5)
    wait_until(lambda: status(node, moved) == 401, "alice's token, now bob's, refused", timeout=1.5)
    assert status(node, moved, user="bob", path_user="bob") == 200


def test_couchdb_down_then_back(nodes, couchdb):
    remembered = couchdb.add_token(USER)
    unknown = couchdb.add_token(USER)
    node = nodes()
    assert status(node, remembered) == 200
    couchdb.stop()
    # Remembered: still served for the rest of its time.
    assert status(node, remembered) == 200, "".join(node.errors)
    code, headers = answer(node, unknown)
    assert code == 503
    assert headers["Retry-After"] == "2"
    followed = sum(FOLLOWING in line for line in node.errors)
    couchdb.start()  # in memory: empty, as after a restore; the web application writes again
    again = couchdb.add_token(USER)
    wait_until(lambda: status(node, again) == 200, "a token served after CouchDB came back")
    wait_until(
        lambda: sum(FOLLOWING in line for line in node.errors) > followed,
        "the feed followed again",
    )
    assert status(node, again) == 200  # remembered again, with the feed followed
    couchdb.remove_token(again)
    wait_until(lambda: status(node, again) == 401, "the logout heard again", timeout=1.5)


def test_workers_check_couchdb_tokens_with_its_password_on_no_command_line(dsn, couchdb):
    """$PGBLOBS_USER_TOKENS (e.g. from systemd's EnvironmentFile) gives
    --user-tokens, and a supervisor hands it to its workers so too."""
    couchdb.create_database()
    node = ServeProcess(
        "--dsn", dsn, "--workers", "2", env={USER_TOKENS_VARIABLE: f"couchdb:{couchdb.url}"}
    )
    try:
        token = couchdb.add_token(USER)
        assert [status(node, token) for _ in range(4)] == [200] * 4
        supervisor = node.process.pid
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
        assert len(children) == 2
        for pid in [supervisor, *children]:
            assert PASSWORD.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    finally:
        assert node.stop() == 0


def test_user_tokens_accepts_only_pgblobs_or_a_couchdb_url():
    for wrong in ("couchdb", "couchdb:ftp://host", "ldap:whatever", "couchdb:http://"):
        run = pgblobs_cli("serve", "--user-tokens", wrong)
        assert run.returncode == 2, run
        assert "--user-tokens" in run.stderr
        assert "couchdb:" in run.stderr


async def test_the_next_database_is_followed_when_the_period_turns(couchdb):
    """Rotation, with a clock the test turns (the tokens of a node use it
    only to name the database): two databases, as at the end of a period."""
    clock = [20_000 * PERIOD_SECONDS + PERIOD_SECONDS - 5]
    this, following = clock[0], clock[0] + PERIOD_SECONDS
    old = couchdb.add_token(USER, now=this)
    new = couchdb.add_token(USER, now=following)
    tokens = CouchDBTokens(reactor, CouchDBAddress.parse(couchdb.url), now=lambda: clock[0])
    await tokens.start()
    try:
        assert tokens.following == database_name(this)
        assert await tokens.user_token_is_valid(USER, old)  # and remembered
        assert not await tokens.user_token_is_valid(USER, new)
        clock[0] = following
        await until(lambda: tokens.following == database_name(following), "the next database")
        # Soledad reads only the current period's database: the old token,
        # remembered a moment ago, is not valid any more.
        assert not await tokens.user_token_is_valid(USER, old)
        assert await tokens.user_token_is_valid(USER, new)
        couchdb.remove_token(new, now=following)

        async def refused():
            return not await tokens.user_token_is_valid(USER, new)

        await until(refused, "the logout in the next database heard", timeout=1.5)
    finally:
        tokens.stop()


def test_odd_documents_are_never_a_500(nodes, couchdb):
    """Documents no web application writes: a user_id no name can be (a lone
    surrogate), one nested past Python's recursion limit, one past the 64 KiB
    a token document may take. Each is refused or a 503, never a 500."""
    node = nodes()
    odd = {
        "lone surrogate": ({"type": "Token", "user_id": "\ud800"}, 401),
        "deep": (
            f'{{"type": "Token", "user_id": "{USER}", "x": {"[" * 1500}{"]" * 1500}}}'.encode(),
            503,
        ),
        "long": ({"type": "Token", "user_id": USER, "padding": "x" * 100_000}, 503),
    }
    for name, (document, expected) in odd.items():
        token = couchdb.add_document(document)
        assert status(node, token) == expected, name
    assert status(node, couchdb.add_token(USER)) == 200  # the node is none the worse
