"""What tests of /uploads share: tus requests over http.client (for the
statuses a client library hides), tuspy set up as a client app would, and a
TCP proxy that cuts a connection after so many bytes."""

import base64
import hashlib
import io
import socket
import threading

from tusclient import client as tus_client

from tests.reliability.clients import Client

TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_CONTENT = {"Content-Type": "application/offset+octet-stream"}
MIB = 1024 * 1024


def metadata(**pairs):
    """An Upload-Metadata header value: each key and its value in base64."""
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in pairs.items()
    )


def create(client: Client, blob_id, length, headers=None, body=None):
    """(status, headers, body) of a creation for ``blob_id``."""
    return client.request(
        "POST",
        f"/uploads/{client.user}/",
        body=body,
        headers={
            **TUS,
            "Upload-Length": str(length),
            "Upload-Metadata": metadata(blob_id=blob_id, filename="f.bin"),
            **(headers or {}),
        },
    )


def created(client: Client, blob_id, length):
    """The path of a new upload for ``blob_id``."""
    status, headers, body = create(client, blob_id, length)
    assert status == 201, body
    return path_of(headers["Location"])


def path_of(location):
    """The path of an upload's URL."""
    return "/" + location.split("/", 3)[3] if location.startswith("http") else location


def patch(client: Client, path, offset, data, headers=None):
    return client.request(
        "PATCH",
        path,
        body=data,
        headers={**TUS, **OFFSET_CONTENT, "Upload-Offset": str(offset), **(headers or {})},
    )


def head(client: Client, path):
    return client.request("HEAD", path, headers=TUS)


def offset_of(client: Client, path):
    status, headers, _ = head(client, path)
    assert status == 200, status
    return int(headers["Upload-Offset"])


def tuspy(url, user, token):
    """tuspy's client of ``url``'s /uploads/{user}/, with the user's token."""
    auth = "Token " + base64.b64encode(f"{user}:{token}".encode()).decode()
    return tus_client.TusClient(f"{url}/uploads/{user}/", headers={"Authorization": auth})


def uploader(tus, data, blob_id, chunk_size=8 * MIB, **options):
    """A tuspy uploader of ``data`` as the blob ``blob_id``, as a client app makes one."""
    return tus.uploader(
        file_stream=io.BytesIO(data),
        chunk_size=chunk_size,
        metadata={"blob_id": blob_id, "filename": f"{blob_id}.bin"},
        retries=0,
        **options,
    )


def sha256(data):
    return hashlib.sha256(data).hexdigest()


class CuttingProxy:
    """Forwards one connection at a time to ``port``, and cuts each (both
    sockets closed) once ``cut_after`` bytes from the client have passed; 0
    never cuts. ``passed`` counts what passed the current connection."""

    def __init__(self, port, cut_after=0):
        self._target = port
        self.cut_after = cut_after
        self.passed = 0
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            self.passed = 0
            threading.Thread(target=self._back, args=(upstream, downstream), daemon=True).start()
            threading.Thread(target=self._forth, args=(downstream, upstream), daemon=True).start()

    def _forth(self, source, target):
        try:
            while chunk := source.recv(65536):
                if self.cut_after and self.passed + len(chunk) >= self.cut_after:
                    chunk = chunk[: self.cut_after - self.passed]
                    target.sendall(chunk)
                    self.passed += len(chunk)
                    self.cuts += 1
                    break
                target.sendall(chunk)
                self.passed += len(chunk)
        except OSError:
            pass
        _cut(source, target)

    def _back(self, source, target):
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        _cut(source, target)

    def close(self):
        self._listener.close()


def _cut(*sockets):
    """Close both ends now: shutdown first, since a socket another thread
    still reads from is not closed (and sends no FIN) until that read ends."""
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # closed already
        sock.close()
