"""Writing responses: plain and JSON bodies, errors through the status table,
bodies that must have exactly the length they promised, and JSON lists sent
as their pages come."""

import json
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pgblobs.errors import TransferStopped
from pgblobs.web.request import StreamingRequest
from pgblobs.web.status import (
    RETRY_AFTER_SECONDS,
    MethodNotAllowed,
    RangeNotSatisfiable,
    TusVersionUnsupported,
    status_of,
)

_log = Logger()


def send(
    request: StreamingRequest,
    code: int,
    body: bytes = b"",
    content_type: bytes = b"text/plain; charset=utf-8",
) -> None:
    """A complete response, unless the client is gone already."""
    if request.gone or request.answered:
        return
    request.setResponseCode(code)
    if code != 204:  # No Content has neither (RFC 9110)
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(b"Content-Length", b"%d" % len(body))
    if body and request.method != b"HEAD":
        request.write(body)
    request.finish()


def send_json(request: StreamingRequest, value: Any, code: int = 200) -> None:
    send(request, code, json.dumps(value).encode("utf-8"), b"application/json")


def send_error(request: StreamingRequest, failure: Failure) -> None:
    """Answer ``failure`` with its status; unknown errors are logged and hidden."""
    error = failure.value
    if request.gone or request.answered:
        return
    if request.startedWriting:
        # The status line is gone already; only a cut connection says "failed".
        _log.failure(
            "request {request_id} failed mid-response", failure, request_id=request.request_id
        )
        request.abort()
        return
    code = status_of(error)
    if code is None:
        _log.failure("request {request_id} failed", failure, request_id=request.request_id)
        send(request, 500, f"internal error (request id {request.request_id})\n".encode())
        return
    if code == 401:
        request.setHeader(b"WWW-Authenticate", b"Token")
    if code in (429, 503):
        request.setHeader(b"Retry-After", b"%d" % RETRY_AFTER_SECONDS)
    if isinstance(error, MethodNotAllowed):
        request.setHeader(b"Allow", ", ".join(error.allowed).encode("ascii"))
    if isinstance(error, TusVersionUnsupported):
        request.setHeader(b"Tus-Version", b"1.0.0")
    if isinstance(error, RangeNotSatisfiable):
        request.setHeader(b"Content-Range", b"bytes */%d" % error.size)
    message = str(error)[:300]
    send(request, code, f"{message}\n".encode("utf-8", "replace"))


def exactly(request: StreamingRequest, written: int, length: int) -> bool:
    """Whether a body had exactly the promised ``length``; if not, the
    connection is cut, since a response of the wrong length must not look
    complete."""
    if written == length:
        return True
    _log.warn(
        "request {request_id}: {written} bytes instead of {length}",
        request_id=request.request_id,
        written=written,
        length=length,
    )
    request.abort()
    return False


@implementer(IConsumer)
class ExactBody:
    """An IConsumer in front of a request that holds the status line and
    headers until the first byte, and counts what passes."""

    def __init__(
        self,
        request: StreamingRequest,
        length: int,
        code: int = 200,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        self._request = request
        self._length = length
        self._code = code
        self._headers = headers
        self.written = 0

    def _start(self) -> None:
        if not self._request.startedWriting:
            self._request.setResponseCode(self._code)
            for name, value in self._headers:
                self._request.setHeader(name, value)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._request.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._request.unregisterProducer()

    def write(self, data: bytes) -> None:
        self._start()
        self.written += len(data)
        self._request.write(data)

    def verified(self) -> bool:
        return exactly(self._request, self.written, self._length)

    def finish(self) -> None:
        """End a response that this body was all of (a HEAD answer: its headers)."""
        if (self._request.method == b"HEAD" or self.verified()) and not self._request.gone:
            self._start()
            self._request.finish()


@implementer(IPushProducer)
class JsonList:
    """A JSON list of strings sent as its pages come (``add`` is the
    ``each_page`` of IBlobsBackend.list_blob_pages), in the bytes
    ``send_json`` gives the whole list.

    A list of one page goes out as ``send_json`` sends it, with its
    Content-Length. A longer one is never whole in memory: it goes out
    chunked, page by page, and while the client is not reading, ``add``
    returns a Deferred that holds the next page back.
    """

    def __init__(self, request: StreamingRequest) -> None:
        self._request = request
        self._first: list[str] | None = None  # held, until a second page comes
        self._streaming = False
        self._resumed: Deferred[None] | None = None  # while the client is not reading
        self._stopped = False

    def add(self, page: list[str]) -> Deferred[None] | None:
        if self._stopped or self._request.gone:
            raise TransferStopped("the client went away")
        if not self._streaming:
            if self._first is None:
                self._first = page
                return None
            self._start()
        self._request.write(b", " + _items(page))
        return self._resumed

    def _start(self) -> None:
        self._streaming = True
        self._request.setResponseCode(200)
        self._request.setHeader(b"Content-Type", b"application/json")
        self._request.registerProducer(self, True)
        first, self._first = self._first or [], None
        self._request.write(b"[" + _items(first))

    def finish(self) -> None:
        if not self._streaming:
            send_json(self._request, self._first or [])
        elif not self._request.gone:
            self._request.write(b"]")
            self._request.unregisterProducer()
            self._request.finish()

    # IPushProducer: the request pauses the list while the client does not read.

    def pauseProducing(self) -> None:
        if self._resumed is None:
            self._resumed = Deferred()

    def resumeProducing(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def stopProducing(self) -> None:
        self._stopped = True
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.errback(TransferStopped("the client went away"))


def _items(page: list[str]) -> bytes:
    """The JSON of a list's items, without its brackets."""
    return json.dumps(page)[1:-1].encode("utf-8")
