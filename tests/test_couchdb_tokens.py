"""`pgblobs serve --user-tokens couchdb:URL`: user tokens as a provider's
web application writes them into CouchDB (Soledad's tokens_N databases),
against a real pouchdb-server (installed by `make setup` into .node)."""

import hashlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.error import HTTPError

import pytest

from pgblobs.tokens.couchdb import PERIOD_SECONDS
from tests.helpers import pgblobs_cli, token_header, wait_until
from tests.processes import ServeProcess, free_port

POUCHDB = Path(__file__).parent.parent / ".node" / "node_modules" / ".bin" / "pouchdb-server"


def couch(method, url, document=None):
    """(status, JSON answer) of one request to CouchDB."""
    data = None if document is None else json.dumps(document).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except HTTPError as error:
        return error.code, json.loads(error.read())


class PouchDB:
    """A pouchdb-server in memory on a free port of 127.0.0.1; ``directory``
    takes the config.json and log.txt it writes."""

    def __init__(self, directory):
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            [str(POUCHDB), "--in-memory", "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
        )
        wait_until(self._answers, "pouchdb-server answering")

    def _answers(self):
        try:
            return couch("GET", self.url + "/")[0] == 200
        except OSError:
            return False

    def stop(self):
        os.kill(self.process.pid, signal.SIGTERM)
        self.process.wait(30)

    def database(self, offset=0):
        """The URL of the tokens database of this period (``offset`` periods on)."""
        name = f"tokens_{int(time.time() / PERIOD_SECONDS) + offset}"
        couch("PUT", f"{self.url}/{name}")
        return f"{self.url}/{name}"

    def add_token(self, user, token, offset=0, kind="Token"):
        """The document id, written as the provider's web application writes it."""
        document_id = hashlib.sha512(token.encode()).hexdigest()
        status, _ = couch(
            "PUT",
            f"{self.database(offset)}/{document_id}",
            {"type": kind, "user_id": user},
        )
        assert status == 201
        return document_id

    def lookups(self, token):
        """How many times CouchDB was asked for ``token``'s document (its request log)."""
        document_id = hashlib.sha512(token.encode()).hexdigest()
        log = Path(self.directory) / "log.txt"
        return sum(
            "GET /tokens_" in line and f"/{document_id} " in line
            for line in log.read_text().splitlines()
        )

    def delete_token(self, token):
        url = f"{self.database()}/{hashlib.sha512(token.encode()).hexdigest()}"
        _, document = couch("GET", url)
        assert couch("DELETE", f"{url}?rev={document['_rev']}")[0] == 200


@pytest.fixture
def pouchdb(tmp_path):
    server = PouchDB(tmp_path)
    server.start()
    yield server
    if server.process.poll() is None:
        server.stop()


def listing(node, user, token, path_user=None):
    """(status, headers) of a listing of ``path_user``'s blobs with ``user``'s token."""
    request = urllib.request.Request(
        f"{node.url}/blobs/{path_user or user}/",
        headers={"Authorization": token_header(user, token)},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers
    except HTTPError as error:
        return error.code, error.headers


def remembered(server, pouchdb, user, token):
    """Whether ``server`` answers ``token`` from memory (CouchDB not asked)."""
    asked = pouchdb.lookups(token)
    return listing(server, user, token)[0] == 200 and pouchdb.lookups(token) == asked


def node(dsn, pouchdb):
    return ServeProcess("--dsn", dsn, "--user-tokens", f"couchdb:{pouchdb.url}")


def test_tokens_are_checked_in_couchdb_and_revoked_on_every_node_at_once(dsn, pouchdb):
    pouchdb.add_token("alice", "alice-token")
    pouchdb.add_token("carol", "carol-session", kind="Session")
    pouchdb.add_token("dave", "last-period-token", offset=-1)
    first, second = node(dsn, pouchdb), node(dsn, pouchdb)
    try:
        for server in (first, second):
            assert listing(server, "alice", "alice-token")[0] == 200
            assert listing(server, "alice", "unknown-token")[0] == 401
            # The token is alice's: not bob's, and alice may not list bob's blobs.
            assert listing(server, "bob", "alice-token")[0] == 401
            assert listing(server, "alice", "alice-token", path_user="bob")[0] == 403
            # A document of another type, or in another period's database, is no token.
            assert listing(server, "carol", "carol-session")[0] == 401
            assert listing(server, "dave", "last-period-token")[0] == 401

        # Once each node follows the changes feed it remembers the token...
        for server in (first, second):
            wait_until(lambda s=server: remembered(s, pouchdb, "alice", "alice-token"))
        # ...and forgets it when the feed says its document was deleted.
        revoked = time.monotonic()
        pouchdb.delete_token("alice-token")
        wait_until(
            lambda: all(listing(s, "alice", "alice-token")[0] == 401 for s in (first, second)),
            "refused on both nodes",
        )
        assert time.monotonic() - revoked < 1.0
    finally:
        assert first.stop() == 0 and second.stop() == 0


def test_while_couchdb_is_down_remembered_tokens_work_others_get_503(dsn, pouchdb):
    pouchdb.add_token("alice", "alice-token")
    server = node(dsn, pouchdb)
    try:
        wait_until(lambda: remembered(server, pouchdb, "alice", "alice-token"))
        pouchdb.stop()
        assert listing(server, "alice", "alice-token")[0] == 200
        status, headers = listing(server, "alice", "unknown-token")
        assert (status, headers["Retry-After"]) == (503, "2")

        # Started again (in memory, so empty), the node follows it again by
        # itself: new tokens are remembered, and their revocations heard.
        pouchdb.start()
        pouchdb.add_token("alice", "new-alice-token")
        wait_until(lambda: remembered(server, pouchdb, "alice", "new-alice-token"))
        revoked = time.monotonic()
        pouchdb.delete_token("new-alice-token")
        wait_until(lambda: listing(server, "alice", "new-alice-token")[0] == 401)
        assert time.monotonic() - revoked < 1.0
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("source", ["couch", "couchdb:", "couchdb:ftp://host", "pgblob"])
def test_a_malformed_source_is_an_argparse_error(source):
    done = pgblobs_cli("serve", "--user-tokens", source)
    assert done.returncode == 2
    assert "couchdb:URL" in done.stderr and "'pgblobs'" in done.stderr
