"""Range headers over a real socket: whatever the value, a 206, a 200 or a 416, never a 500."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import threads

from tests.helpers import auth_header, deferred_test, exchange

BLOB = b"0123456789"


def _get(server, range_value: bytes) -> tuple[int, bytes]:
    """Blocking: GET alice's blob ``r`` with ``range_value`` as its Range header;
    (status, whole answer)."""
    request = (
        b"GET /blobs/alice/r HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + auth_header(server)
        + b"\r\nRange: "
        + range_value
        + b"\r\n\r\n"
    )
    answer = exchange(server.port.getHost().port, request, timeout=10)
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1]), answer


async def _store(server) -> None:
    request = (
        b"PUT /blobs/alice/r HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + auth_header(server)
        + b"\r\nContent-Length: 10\r\n\r\n"
        + BLOB
    )
    answer = await threads.deferToThread(exchange, server.port.getHost().port, request)
    assert answer.startswith(b"HTTP/1.1 200 "), answer


@pytest.mark.parametrize(
    "value",
    [
        b"bytes=\xb2-",  # '\xb2' (superscript two) is a digit to str.isdigit, not to int()
        b"bytes=0-\xb9",
        b"bytes=-\xb3",
        b"bytes=" + b"9" * 5000 + b"-",
        b"bytes=0-" + b"9" * 5000,
        b"bytes=-" + b"9" * 5000,
        b"bytes=" + b"1" * 20 + b"-",
    ],
)
@deferred_test
async def test_a_range_with_strange_digits_is_416(server, value):
    await _store(server)
    status, answer = await threads.deferToThread(_get, server, value)
    assert status == 416
    assert b"malformed Range header" in answer and b"bytes */10" in answer


# Values near the grammar (digits of every kind, dashes, commas, units) and anything at all.
_near_ranges = st.builds(
    lambda unit, spec: unit + spec,
    st.sampled_from([b"bytes=", b"BYTES =", b"bytes=-", b"items=", b""]),
    st.text(alphabet="0123456789-, \t=\xb2\xb3\xb9\u00bd", max_size=40).map(
        lambda text: text.encode("latin-1", "replace")
    ),
)
_any_value = st.binary(max_size=200).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b""))
_long_numbers = st.builds(
    lambda first, last: b"bytes=" + first + b"-" + last,
    st.integers(0, 6000).map(lambda n: b"7" * n),
    st.integers(0, 6000).map(lambda n: b"3" * n),
)


@deferred_test
async def test_no_range_header_is_a_server_error(server):
    await _store(server)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(value=st.one_of(_near_ranges, _any_value, _long_numbers))
    def property(value):
        status, _ = _get(server, value)
        assert status in (200, 206, 400, 416), value[:80]

    await threads.deferToThread(property)
