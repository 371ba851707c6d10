"""The Python HTTP floor: twisted.web doing no work at all.

GET answers 10 KB from memory, PUT reads the body into memory and answers
200 (twisted.web's own Request buffers it). Whatever pgblobs does beyond
this is its own cost. Run: python -m bench.bare_server PORT
"""

import os
import sys

from twisted.internet import reactor
from twisted.web import resource, server

BODY = os.urandom(10_000)  # random, as every benchmark body (encrypted blobs)


class Anything(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"application/octet-stream")
        return BODY

    def render_PUT(self, request):
        request.content.read()
        return b""


if __name__ == "__main__":
    site = server.Site(Anything())
    site.log = lambda request: None  # pgblobs logs nothing per request either
    reactor.listenTCP(int(sys.argv[1]), site, interface="127.0.0.1")
    print("serving", flush=True)
    reactor.run()
