"""What the tests share: driving a backend, SQL on the side, tokens, the CLI."""

import base64
import inspect
import io
import os
import subprocess
import sys
import time

import psycopg2
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import UNKNOWN_LENGTH

deferred_test = pytest_twisted.ensureDeferred  # a coroutine test, run on the reactor


def sql(dsn, statement, params=None):
    """Run one statement in autocommit mode; rows if it returns any."""
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else None
    finally:
        connection.close()


# %(count)s live blobs of "heavy", dated in name order, for listing them: rows
# only (their large-object numbers are never read).
LISTED_SEED = """
    INSERT INTO pgblobs.blobs (user_id, namespace, blob_id, lo_oid, size, tag, sha256, created_at)
    SELECT 'heavy', 'default', 'listed-' || i, i, 0, 'tag', '\\x00',
           now() - make_interval(secs => %(count)s - i)
    FROM generate_series(1, %(count)s) AS i
"""


# %(count)s blobs of alice in %(namespace)s, named m001, m002, ... in date
# order (oldest first), each carrying PENDING; real large objects.
PENDING_SEED = """
    SELECT pgblobs.insert_blobs(
        array_agg('alice'::text), array_agg(%(namespace)s::text),
        array_agg('m' || lpad(i::text, 3, '0')), array_agg(convert_to('message ' || i, 'UTF8')),
        array_agg('tag'::text), array_agg('\\x00'::bytea), array_agg('PENDING'::text),
        array_agg(now() - make_interval(secs => %(count)s - i)), '{}')
    FROM generate_series(1, %(count)s) AS i
"""


def seed_pending(dsn, count, namespace="MX"):
    sql(dsn, PENDING_SEED, {"count": count, "namespace": namespace})
    return [f"m{i:03d}" for i in range(1, count + 1)]


def token_header(user, token):
    """The value of the Authorization header Soledad clients send."""
    return "Token " + base64.b64encode(f"{user}:{token}".encode()).decode()


def pgblobs_command(*args):
    """The command line of `pgblobs ARGS` as an operator runs it."""
    return [sys.executable, "-m", "pgblobs.cli", *args]


def content(size, seed=0):
    """Deterministic, non-repeating-looking bytes."""
    block = bytes((i * 31 + seed) % 251 for i in range(4096))
    return (block * (size // len(block) + 1))[:size]


def producer(data, known_length=True):
    body = FileBodyProducer(io.BytesIO(data), cooperator=task.Cooperator())
    if not known_length:
        body.length = UNKNOWN_LENGTH
    return body


class Collector:
    """An IConsumer that keeps what it is given and remembers its producer."""

    def __init__(self):
        self.chunks = []
        self.producer = None
        self.registered = 0

    def registerProducer(self, producer, streaming):
        assert streaming, "pgblobs registers push producers"
        self.producer = producer
        self.registered += 1

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.chunks.append(data)

    @property
    def data(self):
        return b"".join(self.chunks)


async def write(backend, user, blob_id, data, namespace="", known_length=True):
    await backend.write_blob(user, blob_id, producer(data, known_length), namespace=namespace)


async def read(backend, user, blob_id, namespace="", range=None):
    collector = Collector()
    await backend.read_blob(user, blob_id, collector, namespace=namespace, range=range)
    return collector.data


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


async def until(condition, what="true", timeout=5.0, every=0.01):
    """Poll ``condition()`` on the reactor (awaiting it, if it is a coroutine
    function) until it is true; the seconds that took. Fails after ``timeout``,
    saying ``what`` (text, or a function giving it at that moment)."""
    started = time.monotonic()
    while True:
        outcome = condition()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, _still_not(what, timeout)
        await sleep(every)


def wait_until(condition, what="true", timeout=30.0, every=0.05):
    """Blocking: poll ``condition()`` until it is true, and return what it
    returned. Fails after ``timeout``, saying ``what``, as ``until`` does."""
    deadline = time.monotonic() + timeout
    while not (outcome := condition()):
        assert time.monotonic() < deadline, _still_not(what, timeout)
        time.sleep(every)
    return outcome


def _still_not(what, timeout):
    return f"still not {what() if callable(what) else what} after {timeout} s"


async def gather(*coroutines):
    """Results (values or exceptions) of coroutines run concurrently."""
    results = await defer.DeferredList(
        [defer.ensureDeferred(c) for c in coroutines], consumeErrors=True
    )
    return [value if ok else value.value for ok, value in results]


class ScriptedProducer:
    """An IBodyProducer that writes ``chunks`` as fast as it is allowed, then
    finishes, or fails with ``error`` after ``fail_after`` chunks. It records
    how often it was paused."""

    def __init__(self, chunks, length=UNKNOWN_LENGTH, fail_after=None, error=None):
        self.length = length
        self._chunks = list(chunks)
        self._fail_after = fail_after
        self._error = error or RuntimeError("the producer broke")
        self._paused = False
        self._stopped = False
        self.pauses = 0
        self.written = 0

    def startProducing(self, consumer):
        self._consumer = consumer
        self._done = defer.Deferred()
        reactor.callLater(0, self._next)
        return self._done

    def _next(self):
        if self._paused or self._stopped:
            return
        if self._fail_after is not None and self.written == self._fail_after:
            self._done.errback(self._error)
            return
        if self.written == len(self._chunks):
            self._done.callback(None)
            return
        self._consumer.write(self._chunks[self.written])
        self.written += 1
        reactor.callLater(0, self._next)

    def pauseProducing(self):
        self.pauses += 1
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        reactor.callLater(0, self._next)

    def stopProducing(self):
        self._stopped = True


def exchange(port, payload, timeout=5.0):
    """Blocking: send raw bytes to a local port; everything answered until it closes."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        try:
            connection.sendall(payload)
        except OSError:
            pass  # the server may answer and close before taking everything
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except OSError:
            pass
        return received


async def raw_http(server, payload, timeout=10):
    """Send raw bytes to the server; everything it answers until it closes."""
    from twisted.internet import threads

    return await threads.deferToThread(exchange, server.port.getHost().port, payload, timeout)


def auth_header(server, user="alice"):
    return b"Authorization: " + server.auth(user)[b"Authorization"][0]


def raw_request(server, method, path, *headers, body=b""):
    """The bytes of an HTTP/1.1 request with alice's token, for a raw socket."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: x", auth_header(server)]
    lines += [header.encode() for header in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def create_token(dsn, user):
    """A new token for ``user``, made as `pgblobs token create` makes it."""
    from pgblobs import accounts
    from pgblobs.db.sync import SyncConnection

    connection = SyncConnection.connect(dsn)
    try:
        return accounts.create_token(connection, user)
    finally:
        connection.close()


def pgblobs_cli(*args, env=None, unset=()):
    """Run the `pgblobs` command as an operator would; the CompletedProcess.
    ``env`` adds to the environment, ``unset`` names variables to leave out."""
    environment = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run(
        pgblobs_command(*args),
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(environment, **(env or {})),
    )


def statements_sent(backend):
    """The names of the statements ``backend`` sends from now on, in order
    (the real statements still run)."""
    sent = []
    fetch = backend.database.fetch

    def recording(name, params):
        sent.append(name)
        return fetch(name, params)

    backend.database.fetch = recording
    return sent


def create_upload(dsn, upload_id, length, received=b"", user="alice"):
    """An upload of ``user`` made as the server makes one (its blob id is its
    upload id), with ``received`` already in its large object; the large
    object's oid (None: of no bytes, it became its blob at once)."""
    sql(
        dsn,
        "SELECT pgblobs.create_upload(%(id)s, %(user)s, 'default', %(id)s, '', %(length)s, "
        "3600, 20, NULL, NULL)",
        {"id": upload_id, "user": user, "length": length},
    )
    rows = sql(
        dsn, "SELECT lo_oid FROM pgblobs.uploads WHERE upload_id = %(id)s", {"id": upload_id}
    )
    if not rows:
        return None
    if received:
        sql(dsn, "SELECT lo_put(%(oid)s, 0, %(bytes)s)", {"oid": rows[0][0], "bytes": received})
        sql(
            dsn,
            "UPDATE pgblobs.uploads SET upload_offset = %(n)s WHERE upload_id = %(id)s",
            {"n": len(received), "id": upload_id},
        )
    return rows[0][0]
