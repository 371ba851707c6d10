"""The ways of moving the same bytes that the benchmark compares.

Each contender stores and fetches a list of (name, bytes) with up to
IN_FLIGHT operations at once; names are fresh per run, since pgblobs (like
Soledad) refuses to overwrite a blob.
"""

import io
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg2
import treq
from twisted.internet import defer, threads
from twisted.web.client import FileBodyProducer, HTTPConnectionPool
from twisted.web.static import NoRangeStaticProducer

from pgblobs import PostgresBlobsBackend

IN_FLIGHT = 100
CHUNK = 1024 * 1024


async def bounded(operations):
    """Run coroutine factories with at most IN_FLIGHT at once; fail on any failure."""
    semaphore = defer.DeferredSemaphore(IN_FLIGHT)
    runs = [semaphore.run(lambda op=op: defer.ensureDeferred(op())) for op in operations]
    await defer.gatherResults(runs, consumeErrors=True)


def body(data):
    """An IBodyProducer of ``data``, as a client library would make one."""
    return FileBodyProducer(io.BytesIO(data))


class Counting:
    """A consumer that keeps only a count (reads must not be timed against memory)."""

    def __init__(self):
        self.received = 0
        self.producer = None

    def registerProducer(self, producer, streaming):
        self.producer = producer
        if not streaming:  # a pull producer: ask until it is done
            while self.producer is not None:
                producer.resumeProducing()

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.received += len(data)

    def finish(self):
        pass


class Ceiling:
    """psycopg2's synchronous lobject, 1 MiB chunks, one connection: the
    fastest way Python moves bytes in and out of large objects. It blocks
    the reactor while it runs, which is fine for a lone transfer."""

    name = "ceiling (sync lobject)"

    def __init__(self, dsn):
        self._connection = psycopg2.connect(dsn)
        self._oids = {}

    async def write(self, items):
        for name, data in items:
            large_object = self._connection.lobject(0, "wb")
            for offset in range(0, len(data), CHUNK):
                large_object.write(data[offset : offset + CHUNK])
            large_object.close()
            self._connection.commit()
            self._oids[name] = large_object.oid

    async def read(self, items):
        for name, data in items:
            large_object = self._connection.lobject(self._oids[name], "rb")
            received = 0
            while chunk := large_object.read(CHUNK):
                received += len(chunk)
            self._connection.rollback()
            assert received == len(data)

    async def close(self):
        for oid in self._oids.values():
            self._connection.lobject(oid).unlink()
        self._connection.commit()
        self._connection.close()


class Files:
    """Soledad's filesystem backend's way: FileBodyProducer into a file,
    twisted.web.static's producer out of it, on the same disk. With
    ``fsync``, each file is flushed to disk before its write counts as done,
    as PostgreSQL's commit is."""

    def __init__(self, directory, fsync=False):
        self._root = Path(directory)
        self._root.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self.name = "files that fsync" if fsync else "files (FileBodyProducer / static)"

    async def write(self, items):
        async def store(name, data):
            with open(self._root / name, "wb") as target:
                await body(data).startProducing(_FileSink(target))
                if self._fsync:  # in threads, so the 100 in flight overlap
                    target.flush()
                    await threads.deferToThread(os.fsync, target.fileno())

        await bounded([lambda n=n, d=d: store(n, d) for n, d in items])

    async def read(self, items):
        async def fetch(name, data):
            consumer = Counting()
            with open(self._root / name, "rb") as source:
                NoRangeStaticProducer(consumer, source).start()
            assert consumer.received == len(data)

        await bounded([lambda n=n, d=d: fetch(n, d) for n, d in items])

    async def close(self):
        shutil.rmtree(self._root, ignore_errors=True)


class _FileSink:
    def __init__(self, target):
        self._target = target

    def write(self, data):
        self._target.write(data)


class Backend:
    """pgblobs' own API, in this process."""

    def __init__(self, backend, name):
        self.backend = backend
        self.name = name

    @classmethod
    async def connect(cls, dsn, name="pgblobs backend API"):
        return cls(await PostgresBlobsBackend.connect(dsn, quota_bytes=None), name)

    async def write(self, items):
        await bounded(
            [lambda n=n, d=d: self.backend.write_blob("bench", n, body(d)) for n, d in items]
        )

    async def read(self, items):
        async def fetch(name, data):
            consumer = Counting()
            await self.backend.read_blob("bench", name, consumer)
            assert consumer.received == len(data)

        await bounded([lambda n=n, d=d: fetch(n, d) for n, d in items])

    async def close(self):
        await self.backend.close()


class HttpStore:
    """An HTTP server taking PUT and GET, driven by treq over loopback with
    persistent connections. ``urls`` are used in turn (several nodes)."""

    def __init__(self, name, urls, headers=None):
        from twisted.internet import reactor

        self.name = name
        self._urls = urls
        self._headers = headers or {}
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = IN_FLIGHT
        self._pool = pool

    def _url(self, index, name):
        return f"{self._urls[index % len(self._urls)]}/{name}"

    async def write(self, items):
        async def store(index, name, data):
            response = await treq.put(
                self._url(index, name), data=data, headers=self._headers, pool=self._pool
            )
            await response.content()
            assert response.code in (200, 201, 204), response.code

        await bounded([lambda i=i, n=n, d=d: store(i, n, d) for i, (n, d) in enumerate(items)])

    async def read(self, items):
        async def fetch(index, name, data):
            response = await treq.get(
                self._url(index, name), headers=self._headers, pool=self._pool
            )
            received = []
            await treq.collect(response, lambda chunk: received.append(len(chunk)))
            assert response.code == 200 and sum(received) == len(data), response.code

        await bounded([lambda i=i, n=n, d=d: fetch(i, n, d) for i, (n, d) in enumerate(items)])

    async def close(self):
        await self._pool.closeCachedConnections()


class Nginx:
    """Debian's nginx with its WebDAV module, PUT and GET on loopback."""

    CONFIG = """
daemon off;
user root;
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    client_max_body_size 0;
    sendfile on;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {prefix}/dav;
        location / {{ dav_methods PUT DELETE; create_full_put_path on; }}
    }}
}}
"""

    def __init__(self, port):
        self.prefix = Path(tempfile.mkdtemp(prefix="pgblobs-nginx-"))
        (self.prefix / "dav").mkdir()
        config = self.prefix / "nginx.conf"
        config.write_text(self.CONFIG.format(prefix=self.prefix, port=port))
        self.process = subprocess.Popen(
            ["nginx", "-c", str(config), "-p", str(self.prefix)], stderr=subprocess.PIPE
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while not _listening(port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nginx did not start: " + self.process.stderr.read().decode())
            time.sleep(0.05)

    def stop(self):
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.prefix, ignore_errors=True)


def _listening(port):
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def nginx_available():
    return shutil.which("nginx") is not None and os.geteuid() == 0
