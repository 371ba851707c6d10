"""The rate floor of request bodies, on a channel driven by a fake clock:
a trickle is cut at the end of its window, time the server keeps the body
waiting never counts, and a body at the floor goes through."""

from twisted.internet.task import Clock
from twisted.web import server
from twisted.web.resource import Resource

from pgblobs.web.site import Limits
from tests.fast.wire import connect as connect_to
from tests.fast.wire import site_of

LIMITS = Limits(idle_timeout=10, min_upload_rate=1024, upload_rate_window=10)


class _Sink:
    """The consumer of a body: keeps its bytes, and the body (the tests pause it)."""

    def __init__(self):
        self.received = b""
        self.body = None

    def write(self, data):
        self.received += data


class _Upload(Resource):
    """PUT /: reads the body into a sink, then answers 200 with its length."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.sink = _Sink()

    def render_PUT(self, request):
        self.sink.body = request.body
        done = request.body.startProducing(self.sink)

        def answer(_):
            request.write(b"%d" % len(self.sink.received))
            request.finish()

        done.addCallbacks(answer, lambda _: None)
        return server.NOT_DONE_YET


def connect(limits=LIMITS):
    root = _Upload()
    client = connect_to(site_of(root, limits), Clock())
    return client.clock, client.channel, client.transport, root.sink


def start_put(clock, channel, length):
    channel.dataReceived(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length)
    clock.advance(0)  # the request renders on the next turn


def test_a_trickle_that_keeps_the_stall_clock_going_is_cut_at_the_end_of_its_window():
    clock, channel, transport, _ = connect()
    start_put(clock, channel, 1_000_000)
    for _ in range(2):  # a byte every 4 s: the 10 s stall clock never fires
        clock.advance(4)
        channel.dataReceived(b"x")
    assert transport.value() == b""
    clock.advance(2)  # 10 s of wanting the body, 2 bytes received
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"slower than 1024 bytes/s (2 bytes in 10 s)" in answer
    assert b"connection: close" in answer.lower()
    clock.advance(2)  # the answer had its moment: the connection goes
    assert transport.disconnecting or transport.disconnected


def test_time_the_server_keeps_the_body_waiting_does_not_count():
    clock, channel, transport, sink = connect()
    start_put(clock, channel, 1_000_000)
    clock.advance(6)  # 6 s of the window used, nothing sent
    sink.body.pauseProducing()  # the server is busy (the database, say)
    clock.advance(300)
    assert transport.value() == b"" and not transport.disconnecting
    sink.body.resumeProducing()
    clock.advance(3.9)  # the window goes on where it stopped, not from the start
    assert transport.value() == b""
    clock.advance(0.2)
    assert transport.value().startswith(b"HTTP/1.1 408 ")


def test_pausing_and_resuming_does_not_start_the_window_over():
    clock, channel, transport, sink = connect()
    start_put(clock, channel, 1_000_000)
    for _ in range(11):  # a pause every second cannot keep the window from ending
        clock.advance(1)
        sink.body.pauseProducing()
        sink.body.resumeProducing()
    assert transport.value().startswith(b"HTTP/1.1 408 ")


def test_a_body_at_the_floor_goes_through():
    clock, channel, transport, _ = connect()
    chunk = b"y" * 2600  # every 2 s: 10,400 bytes in each 10 s window, the floor 10,240
    start_put(clock, channel, len(chunk) * 30)
    for _ in range(30):
        clock.advance(2)
        channel.dataReceived(chunk)
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert b"\r\n%d\r\n" % (len(chunk) * 30) in answer


def test_no_floor_when_the_rate_is_zero():
    clock, channel, transport, _ = connect(
        Limits(idle_timeout=10, min_upload_rate=0, upload_rate_window=10)
    )
    start_put(clock, channel, 1_000_000)
    for _ in range(30):  # two minutes of a byte every 4 s
        clock.advance(4)
        channel.dataReceived(b"x")
    assert transport.value() == b"" and not transport.disconnecting
