"""The resources' common ground: what every blobs resource needs (its
``Context``), a base that answers unknown methods with 405 and HEAD like
GET, coroutine ``render_*`` methods whose errors go through the status
table, the path level whose children are users, and the 404 leaf."""

import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from pgblobs.interfaces import IBlobStore
from pgblobs.web import arguments
from pgblobs.web.auth import Authenticator
from pgblobs.web.request import RequestBody, StreamingRequest
from pgblobs.web.responses import send_error
from pgblobs.web.status import MethodNotAllowed, NotFound

if TYPE_CHECKING:
    from pgblobs.web.site import Limits

_Resource = TypeVar("_Resource", bound=Resource)


@dataclass(frozen=True)
class Context:
    """What every blobs resource needs."""

    store: IBlobStore
    auth: Authenticator
    limits: "Limits"


def rendered(
    method: Callable[[_Resource, StreamingRequest], Coroutine[Any, Any, None]],
) -> Callable[[_Resource, StreamingRequest], int]:
    """Make a coroutine a ``render_*`` method: it sends its own response, and
    whatever it raises is answered through the status table."""

    @functools.wraps(method)
    def render(resource: _Resource, request: StreamingRequest) -> int:
        done = defer.ensureDeferred(method(resource, request))
        done.addErrback(lambda failure: send_error(request, failure))
        return NOT_DONE_YET

    return render


def body_of(request: StreamingRequest) -> RequestBody:
    """The body of a request being rendered (StreamingRequest renders only
    once its headers, and so its body, are in)."""
    if request.body is None:
        raise RuntimeError("a request is rendered before its headers are in")
    return request.body


_METHODS_OF: dict[type, list[str]] = {}  # Handler class -> its methods, worked out once


def _allowed_methods(kind: type) -> list[str]:
    """The methods a Handler class answers."""
    if kind in _METHODS_OF:
        return _METHODS_OF[kind]
    methods = {
        name[len("render_") :]
        for name in dir(kind)
        if name.startswith("render_") and name[len("render_") :].isupper()
    }
    # Resource defines render_HEAD for everyone; it means something only beside GET,
    # or where a resource answers HEAD itself.
    if not _answers_head(kind):
        methods.discard("HEAD")
    if "GET" in methods:
        methods.add("HEAD")
    _METHODS_OF[kind] = sorted(methods)
    return _METHODS_OF[kind]


def _answers_head(kind: type) -> bool:
    """Whether a Handler class answers HEAD itself (tus's HEAD has no GET)."""
    return getattr(kind, "render_HEAD", None) is not Resource.render_HEAD


class Handler(Resource):
    """A resource that answers a method it lacks with 405 through the status
    table (twisted.web says 501 for methods outside GET, HEAD and POST), and
    HEAD wherever it answers GET: the same status and headers, no body."""

    route: str | None = None  # what metrics call the requests it answers

    def allowed_methods(self) -> list[str]:
        return _allowed_methods(type(self))

    def render(self, request: StreamingRequest) -> int | bytes:
        method = request.method.decode("latin-1")
        if method not in self.allowed_methods():
            send_error(request, Failure(MethodNotAllowed(self.allowed_methods())))
            return NOT_DONE_YET
        if self.route is not None:
            request.route = self.route
        # Every render_GET here sends its own response, and send() leaves
        # the body out of a HEAD answer: so GET serves both.
        if method == "HEAD" and not _answers_head(type(self)):
            method = "GET"
        render: Callable[[StreamingRequest], int | bytes] = getattr(self, "render_" + method)
        return render(request)


class OfUser(Handler):
    """A resource below ``/{path}/{user}``: the user as the path names it
    (names.py judges it), and the context."""

    def __init__(self, context: Context, user: str) -> None:
        super().__init__()
        self._context = context
        self._user = user


class UserLeaf(OfUser):
    """A resource that is all of ``/{path}/{user}`` (a trailing slash
    allowed): anything after the user is 404."""

    isLeaf = True

    def render(self, request: StreamingRequest) -> int | bytes:
        if request.postpath not in ([], [b""]):
            return Missing().render(request)
        return super().render(request)


class OfBlob(OfUser):
    """A resource below ``/{path}/{user}/{blob_id}``."""

    def __init__(self, context: Context, user: str, blob_id: str) -> None:
        super().__init__(context, user)
        self._blob_id = blob_id


class Users(Handler):
    """A path whose children are users (/blobs, /stream, /incoming): each
    child is ``per_user(context, user)``."""

    def __init__(self, context: Context, per_user: Callable[[Context, str], OfUser]) -> None:
        super().__init__()
        self._context = context
        self._per_user = per_user

    def getChild(self, path: bytes, request: StreamingRequest) -> IResource:
        if not path:
            return Missing()
        return self._per_user(self._context, arguments.segment(path))


class Missing(Handler):
    """Whatever is asked of a path that names nothing: 404."""

    isLeaf = True

    @rendered
    async def render(self, request: StreamingRequest) -> None:
        raise NotFound("no such resource")
