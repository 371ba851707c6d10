"""The channel's deadlines on a fake clock: the header deadline, the idle
timeout between requests, and the stall clock while the body is awaited or
the answer is not read. Each fires at its deadline, not a moment before, and
no clock runs while a request waits on the server."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from pgblobs.web.request import LINGER_SECONDS
from pgblobs.web.site import Limits
from tests.fast.wire import TOKEN, connect, memory_site, request, site_of

# Without a rate floor, so only the channel's own clocks can cut a body. The
# idle timeout also runs while headers come, restarted by every byte: these
# make the header deadline the shorter, so each clock can be seen alone.
LIMITS = Limits(idle_timeout=5, header_timeout=20, min_upload_rate=0)
HEADERS_FIRST = Limits(idle_timeout=60, header_timeout=20, min_upload_rate=0)
JUST_BEFORE = 0.01


def test_the_header_deadline_cuts_a_connection_that_sends_nothing():
    client = connect(memory_site(HEADERS_FIRST), Clock())
    client.clock.advance(HEADERS_FIRST.header_timeout - JUST_BEFORE)
    assert not client.cut
    client.clock.advance(JUST_BEFORE)
    assert client.aborted
    assert client.answer == b""


def test_a_silent_connection_is_closed_at_the_idle_timeout_when_that_is_shorter():
    client = connect(memory_site(LIMITS), Clock())
    client.clock.advance(LIMITS.idle_timeout - JUST_BEFORE)
    assert not client.cut
    client.clock.advance(JUST_BEFORE)
    assert client.transport.disconnecting


def test_headers_trickled_in_do_not_move_the_header_deadline():
    client = connect(memory_site(LIMITS), Clock())
    head = request("GET", "/blobs/alice/")
    for byte in head[:19]:  # a byte a second, each well within the idle timeout
        client.send(bytes([byte]))
        client.clock.advance(1)
    assert not client.cut
    client.clock.advance(1)  # 20 s since the connection was accepted
    assert client.aborted


def test_a_request_in_time_answers_and_the_idle_timeout_then_runs():
    client = connect(memory_site(LIMITS), Clock())
    client.clock.advance(LIMITS.idle_timeout - 1)
    client.send(request("GET", "/blobs/alice/"))
    assert client.status == 200 and not client.cut
    # Between requests the idle timeout (5 s) runs, and the header deadline
    # starts over (20 s): the first to expire closes the connection.
    client.clock.advance(LIMITS.idle_timeout - JUST_BEFORE)
    assert not client.cut
    client.clock.advance(JUST_BEFORE)
    assert client.transport.disconnecting


def test_the_header_deadline_starts_over_for_the_next_request():
    limits = Limits(idle_timeout=60, header_timeout=3, min_upload_rate=0)
    client = connect(memory_site(limits), Clock())
    for _ in range(5):  # every request within 3 s of the previous answer
        client.clock.advance(2.5)
        client.send(request("GET", "/blobs/alice/"))
    assert client.answer.count(b"HTTP/1.1 200 ") == 5 and not client.cut
    client.clock.advance(limits.header_timeout - JUST_BEFORE)
    assert not client.cut
    client.clock.advance(JUST_BEFORE)
    assert client.aborted


def test_a_body_that_stops_arriving_is_answered_408_then_the_connection_goes():
    client = connect(memory_site(LIMITS), Clock())
    client.send(request("PUT", "/blobs/alice/stalled", "Content-Length: 100") + b"x" * 10)
    client.clock.advance(LIMITS.idle_timeout - JUST_BEFORE)
    assert client.answer == b"" and not client.cut
    client.clock.advance(JUST_BEFORE)
    assert client.status == 408
    assert b"the request body stopped arriving for 5 s" in client.answer
    assert b"connection: close" in client.answer.lower()
    assert not client.cut  # the answer gets a moment to reach the client
    client.clock.advance(LINGER_SECONDS)
    assert client.cut


def test_every_body_byte_restarts_the_stall_clock():
    client = connect(memory_site(LIMITS), Clock())
    client.send(request("PUT", "/blobs/alice/slow", "Content-Length: 10"))
    for _ in range(10):
        client.clock.advance(LIMITS.idle_timeout - JUST_BEFORE)
        client.send(b"x")
    assert client.status == 200 and not client.cut


class _Unfinished(Resource):
    """GET: the start of an answer whose rest the server has yet to send."""

    isLeaf = True

    def render_GET(self, request: Request) -> object:
        request.write(b"the start")
        return NOT_DONE_YET


def test_an_answer_the_client_does_not_read_cuts_the_connection_at_the_idle_timeout():
    client = connect(site_of(_Unfinished(), LIMITS), Clock())
    client.send(request("GET", "/"))
    # The socket takes no more of the answer: the transport pauses its producer.
    client.transport.producer.pauseProducing()
    client.clock.advance(LIMITS.idle_timeout - JUST_BEFORE)
    assert not client.cut
    client.clock.advance(JUST_BEFORE)
    assert client.aborted


def test_reading_again_stops_the_stall_clock():
    client = connect(site_of(_Unfinished(), LIMITS), Clock())
    client.send(request("GET", "/"))
    client.transport.producer.pauseProducing()
    client.clock.advance(LIMITS.idle_timeout - JUST_BEFORE)
    client.transport.producer.resumeProducing()
    client.clock.advance(LIMITS.idle_timeout * 10)  # the answer waits on the server now
    assert not client.cut


def test_no_clock_runs_while_the_request_waits_on_the_server():
    checked: defer.Deferred[bool] = defer.Deferred()

    async def slow_token_check(user: str, token: str) -> bool:
        return await checked  # the server's side: a token store that is slow to answer

    client = connect(memory_site(LIMITS, token_is_valid=slow_token_check), Clock())
    client.send(request("GET", "/blobs/alice/"))
    client.clock.advance(LIMITS.header_timeout * 100)
    assert client.answer == b"" and not client.cut
    checked.callback(True)
    assert client.status == 200


def test_a_refused_body_is_drained_for_a_moment_then_the_connection_closes():
    client = connect(memory_site(LIMITS), Clock())
    wrong = request("PUT", "/blobs/bob/x", "Content-Length: 1000")
    client.send(wrong + b"x" * 10)
    assert client.status == 403
    assert TOKEN.encode() not in client.answer
    client.send(b"x" * 500)  # the rest of the body is read and dropped
    assert not client.cut
    client.clock.advance(LINGER_SECONDS - JUST_BEFORE)
    assert not client.cut
    client.clock.advance(JUST_BEFORE)
    assert client.cut
