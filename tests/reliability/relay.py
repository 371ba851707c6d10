"""A TCP relay between pgblobs and PostgreSQL that can fall silent.

``silence()`` stops forwarding in both directions while every socket stays
open: the kernel still acknowledges what each side sends, so neither TCP
keepalives nor ``tcp_user_timeout`` notice anything, and only a client's own
deadline can. That is how a stuck server, or a link that loses every packet
behind a middlebox, looks from pgblobs. ``resume()`` delivers what was held.
"""

import socket
import threading

from psycopg2.extensions import make_dsn, parse_dsn

_CHUNK = 65536


class Relay:
    """Listens on 127.0.0.1 (``port``) and forwards each connection to ``target``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @classmethod
    def to(cls, dsn: str) -> "Relay":
        """A relay to the server of ``dsn`` (host and port given in it)."""
        parts = parse_dsn(dsn)
        return cls(parts.get("host", "127.0.0.1"), int(parts.get("port", 5432)))

    def dsn(self, dsn: str) -> str:
        """``dsn``, through the relay."""
        return make_dsn(dsn, host="127.0.0.1", port=self.port)

    def silence(self) -> None:
        self._forwarding.clear()

    def resume(self) -> None:
        self._forwarding.set()

    def close(self) -> None:
        self._closed = True
        self._forwarding.set()  # pumps waiting to forward see ``_closed`` and stop
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def __enter__(self) -> "Relay":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(_CHUNK)
            except OSError:
                data = b""
            # What arrives while silent is held here, not passed on (nor lost).
            self._forwarding.wait()
            if self._closed:
                return
            try:
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
            except OSError:
                return
