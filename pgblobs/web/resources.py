"""The resources' common ground: a base that answers unknown methods with 405
and HEAD like GET, coroutine ``render_*`` methods whose errors go through the
status table, the path level whose children are users, and the 404 leaf."""

import functools

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from pgblobs.web import arguments
from pgblobs.web.responses import send_error
from pgblobs.web.status import MethodNotAllowed, NotFound


def rendered(method):
    """Make a coroutine a ``render_*`` method: it sends its own response, and
    whatever it raises is answered through the status table."""

    @functools.wraps(method)
    def render(resource, request):
        done = defer.ensureDeferred(method(resource, request))
        done.addErrback(lambda failure: send_error(request, failure))
        return NOT_DONE_YET

    return render


_METHODS_OF: dict[type, list[str]] = {}  # Handler class -> its methods, worked out once


def _allowed_methods(kind):
    """The methods a Handler class answers."""
    if kind in _METHODS_OF:
        return _METHODS_OF[kind]
    methods = {
        name[len("render_") :]
        for name in dir(kind)
        if name.startswith("render_") and name[len("render_") :].isupper()
    }
    # Resource defines render_HEAD for everyone; it means something only beside GET.
    methods.discard("HEAD")
    if "GET" in methods:
        methods.add("HEAD")
    _METHODS_OF[kind] = sorted(methods)
    return _METHODS_OF[kind]


class Handler(Resource):
    """A resource that answers a method it lacks with 405 through the status
    table (twisted.web says 501 for methods outside GET, HEAD and POST), and
    HEAD wherever it answers GET: the same status and headers, no body."""

    def allowed_methods(self):
        return _allowed_methods(type(self))

    def render(self, request):
        method = request.method.decode("latin-1")
        if method not in self.allowed_methods():
            send_error(request, Failure(MethodNotAllowed(self.allowed_methods())))
            return NOT_DONE_YET
        # Every render_GET here sends its own response, and send() leaves
        # the body out of a HEAD answer: so GET serves both.
        return getattr(self, "render_" + ("GET" if method == "HEAD" else method))(request)


class Users(Handler):
    """A path whose children are users (/blobs, /stream, /incoming): each
    child is ``per_user(context, user)``."""

    def __init__(self, context, per_user):
        super().__init__()
        self._context = context
        self._per_user = per_user

    def getChild(self, path, request):
        if not path:
            return Missing()
        return self._per_user(self._context, arguments.segment(path))


class Missing(Handler):
    """Whatever is asked of a path that names nothing: 404."""

    isLeaf = True

    @rendered
    async def render(self, request):
        raise NotFound("no such resource")
