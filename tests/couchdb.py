"""A real CouchDB-compatible server for the tests: pouchdb-server from npm,
installed by `make setup` under .node/, in memory (its native storage
modules are not built), on a free port of 127.0.0.1, stopped by its pid.

Token documents are written as a LEAP provider's web application writes
them: ``{"_id": sha512hex(token), "type": "Token", "user_id": user}`` in
``tokens_N``.
"""

import base64
import json
import secrets
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.error import HTTPError, URLError

from pgblobs.tokens.couchdb import database_name, document_id
from tests.helpers import wait_until
from tests.processes import free_port

POUCHDB_SERVER = (
    Path(__file__).resolve().parent.parent / ".node" / "node_modules" / ".bin" / ("pouchdb-server")
)


ADMIN, PASSWORD = "soledad", "a-couch-secret"


class PouchDB:
    """pouchdb-server in ``directory`` (its config and log files go there),
    with an admin, as a provider's CouchDB has: ``url`` carries its
    credentials, as --user-tokens couchdb:URL does."""

    def __init__(self, directory):
        self.directory = directory
        self.port = free_port()
        self.url = f"http://{ADMIN}:{PASSWORD}@127.0.0.1:{self.port}"
        self._base = f"http://127.0.0.1:{self.port}"
        self.process = None
        self._authorization = None  # an admin party, until the admin is made
        self.start()
        # Kept in the directory's config.json: the admin stays across restarts.
        status, answer = self._call("PUT", f"/_config/admins/{ADMIN}", PASSWORD)
        assert status == 200, answer
        credentials = base64.b64encode(f"{ADMIN}:{PASSWORD}".encode()).decode()
        self._authorization = f"Basic {credentials}"
        assert self._call("GET", "/tokens_0")[0] == 404  # not 401: the credentials work

    def start(self):
        """Start it (again, on the same port: in memory, so empty)."""
        self.process = subprocess.Popen(
            [str(POUCHDB_SERVER), "--in-memory", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, "pouchdb-server answering", timeout=60)

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)

    def _answers(self):
        assert self.process.poll() is None, "pouchdb-server exited"
        try:
            self._call("GET", "/")
            return True  # any answer
        except URLError:
            return False

    def _call(self, method, path, document=None):
        # bytes: a document as written, such as one nested deeper than json.dumps goes.
        data = (
            document
            if isinstance(document, bytes) or document is None
            else json.dumps(document).encode()
        )
        request = urllib.request.Request(self._base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self._authorization is not None:
            request.add_header("Authorization", self._authorization)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except HTTPError as error:
            return error.code, json.loads(error.read())

    def create_database(self, now=None):
        """The tokens database of ``now`` (unix time), as the web application makes it."""
        database = database_name(time.time() if now is None else now)
        status, answer = self._call("PUT", f"/{database}")
        assert status in (201, 412), answer  # 412: it exists already
        return database

    def add_token(self, user, now=None, token=None):
        """A new session token of ``user`` in the tokens database of ``now``."""
        return self.add_document({"type": "Token", "user_id": user}, now, token)

    def add_document(self, document, now=None, token=None):
        """A new token whose document is ``document``, in the tokens database of ``now``."""
        token = token or secrets.token_urlsafe(24)
        database = self.create_database(now)
        status, answer = self._call("PUT", f"/{database}/{document_id(token)}", document)
        assert status == 201, answer
        return token

    def lookups(self, token, now=None):
        """How many times the token's document has been read, by the log
        (log.txt), once a request made now is in it: all before it are."""
        marker = f"/marker-{secrets.token_hex(8)}"
        self._call("GET", marker)
        log = Path(self.directory) / "log.txt"
        wait_until(lambda: f"GET {marker} " in log.read_text(), "the log written")
        path = f"/{database_name(time.time() if now is None else now)}/{document_id(token)}"
        return sum(f"GET {path} " in line for line in log.read_text().splitlines())

    def change_token(self, token, now=None, **fields):
        """Change fields of the token's document (its ``type``, its ``user_id``)."""
        path = f"/{database_name(time.time() if now is None else now)}/{document_id(token)}"
        status, document = self._call("GET", path)
        assert status == 200, document
        status, answer = self._call("PUT", path, dict(document, **fields))
        assert status == 201, answer

    def remove_token(self, token, now=None):
        """Delete the token's document, as a logout does."""
        path = f"/{database_name(time.time() if now is None else now)}/{document_id(token)}"
        status, document = self._call("GET", path)
        assert status == 200, document
        status, answer = self._call("DELETE", f"{path}?rev={document['_rev']}")
        assert status == 200, answer
