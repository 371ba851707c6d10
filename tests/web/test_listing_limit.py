"""GET /blobs/{user}/?limit=N: a listing a page per request, each page
pointing to the next with `Link: <...>; rel="next"`, over a real socket.

Following the links gives every id listed throughout exactly once, in
order, while blobs are added and deleted between the pages."""

import base64
import json
import random
import re
from urllib.parse import urljoin

import pytest
import treq

from pgblobs import Flags
from tests.helpers import deferred_test, sql, write

SEEDED = 2500
# alice: SEEDED live blobs and SEEDED tombstones, dated in name order, their
# dates interleaved and every date shared by three rows (a group commit's);
# the live ones flagged PENDING but every fifth. Real large objects: deleting
# a seeded blob unlinks its content as it would any other's.
SEED = """
    INSERT INTO pgblobs.blobs (user_id, namespace, blob_id, lo_oid, size, tag, sha256,
                               created_at, deleted_at)
    SELECT 'alice', 'default', kind || '-' || lpad(i::text, 4, '0'),
           CASE kind WHEN 'live' THEN lo_from_bytea(0, '\\x78') END, 1, 'tag', '\\x00',
           now() - interval '1 hour' + (i / 3) * interval '2 ms'
                 + CASE kind WHEN 'live' THEN interval '0' ELSE interval '1 ms' END,
           CASE kind WHEN 'gone' THEN now() END
    FROM generate_series(1, %(count)s) AS i, unnest(ARRAY['live', 'gone']) AS kind
    ORDER BY i, kind DESC;
    INSERT INTO pgblobs.blob_flags (blob_row, user_id, namespace, blob_id, created_at, flag)
    SELECT id, user_id, namespace, blob_id, created_at, 'PENDING' FROM pgblobs.blobs
    WHERE deleted_at IS NULL AND right(blob_id, 4)::int %% 5 <> 0;
"""
_NEXT = re.compile(r'<([^>]*)>; rel="next"')


async def get(server, path):
    response = await treq.get(urljoin(server.url, path), headers=server.auth())
    return response, await response.content()


def next_of(response):
    """The target of the response's Link rel="next", or None."""
    links = response.headers.getRawHeaders(b"link") or []
    assert len(links) <= 1, links
    if not links:
        return None
    found = _NEXT.fullmatch(links[0].decode("ascii"))
    assert found, links
    return found.group(1)


class Churn:
    """Between two pages, what changes one listing: one id it listed leaves
    it, one it has not reached yet leaves it, and one joins it somewhere."""

    def __init__(self, backend, query, initial):
        self.backend = backend
        self.query = query
        self.initial = initial
        self.touched = set()  # ids that were not in the listing throughout
        self.joined = set()  # ids that joined it
        self._new = 0
        # Joining anywhere in the listing, behind the pages read and ahead.
        self._unflagged = [f"live-{i:04d}" for i in range(5, SEEDED + 1, 5)]
        self._live = [f"live-{i:04d}" for i in range(1, SEEDED + 1)]
        random.Random(7).shuffle(self._unflagged)
        random.Random(8).shuffle(self._live)

    async def between_pages(self, listed):
        behind = [i for i in listed if i not in self.touched]
        seen = set(listed)
        ahead = [i for i in self.initial if i not in self.touched and i not in seen]
        for blob_id in (behind[len(behind) // 2 :] or [None])[:1] + ahead[len(ahead) // 2 :][:1]:
            if blob_id is not None:
                await self._leave(blob_id)
        await self._join()

    async def _leave(self, blob_id):
        self.touched.add(blob_id)
        if "deleted" in self.query:  # writing the id again replaces its tombstone
            await write(self.backend, "alice", blob_id, b"again")
        else:
            await self.backend.delete_blob("alice", blob_id)

    async def _join(self):
        if "deleted" in self.query:  # a new tombstone, dated among the listed ones
            blob_id = self._take(self._live)
            await self.backend.delete_blob("alice", blob_id)
        elif "filter_flag" in self.query:  # a flagged blob, dated among the listed ones
            blob_id = self._take(self._unflagged)
            await self.backend.set_flags("alice", blob_id, [Flags.PENDING])
        else:
            self._new += 1
            blob_id = f"new-{self._new}"
            await write(self.backend, "alice", blob_id, b"new")
        self.touched.add(blob_id)
        self.joined.add(blob_id)

    def _take(self, ids):
        while ids[-1] in self.touched:
            ids.pop()
        return ids.pop()


@pytest.mark.parametrize("limit", [1000, 7])
@pytest.mark.parametrize(
    "query",
    ["", "order_by=-date", "deleted=true", "filter_flag=PENDING&order_by=%2Bdate"],
)
@deferred_test
async def test_following_next_lists_every_id_listed_throughout_once_in_order(
    server, dsn, query, limit
):
    sql(dsn, SEED, {"count": SEEDED})
    response, body = await get(server, f"/blobs/alice/?{query}")
    initial = json.loads(body)
    assert next_of(response) is None  # without limit, the listing as it always was
    assert len(initial) == (2000 if "filter_flag" in query else SEEDED)
    churn = Churn(server.backend, query, initial)
    listed, pages = [], 0
    target = f"/blobs/alice/?{query}&limit={limit}"
    while target is not None:
        response, body = await get(server, target)
        assert response.code == 200, body
        page = json.loads(body)
        target = next_of(response)
        assert len(page) == limit if target else len(page) <= limit
        listed += page
        pages += 1
        if target:
            await churn.between_pages(listed)
    assert len(listed) == len(set(listed)), "an id listed twice"
    throughout = [i for i in initial if i not in churn.touched]
    assert len(throughout) > len(initial) // 2 and pages > len(throughout) // limit
    assert [i for i in listed if i not in churn.touched] == throughout
    assert set(listed) <= set(initial) | churn.joined


@deferred_test
async def test_the_next_link_keeps_the_parameters_and_head_gives_it_too(server, dsn):
    for i in range(5):
        await write(server.backend, "alice", f"m{i}", b"x", namespace="mail")
    response, body = await get(server, "/blobs/alice/?namespace=mail&order_by=%2Bdate&limit=2")
    assert json.loads(body) == ["m0", "m1"]
    [link] = response.headers.getRawHeaders(b"link")
    token = re.fullmatch(
        rb"</blobs/alice/\?namespace=mail&order_by=%2Bdate&limit=2&page=([A-Za-z0-9_-]+)>;"
        rb' rel="next"',
        link,
    ).group(1)
    head = await treq.head(
        server.url + "/blobs/alice/?namespace=mail&order_by=%2Bdate&limit=2",
        headers=server.auth(),
    )
    assert head.code == 200 and await head.content() == b""
    for header in (b"link", b"content-type"):
        assert head.headers.getRawHeaders(header) == response.headers.getRawHeaders(header)
    assert head.headers.getRawHeaders(b"content-length") == [b"%d" % len(body)]
    response, body = await get(server, next_of(response))
    assert json.loads(body) == ["m2", "m3"]
    # The token of the page, not the page's place in the request: page replaced.
    again = f"/blobs/alice/?page={token.decode()}&namespace=mail&limit=3&order_by=date"
    response, body = await get(server, again)
    assert json.loads(body) == ["m2", "m3", "m4"] and next_of(response) is None
    assert body == json.dumps(["m2", "m3", "m4"]).encode()
    response, body = await get(server, "/blobs/alice/?namespace=mail&limit=5")
    assert json.loads(body) == [f"m{i}" for i in range(5)] and next_of(response) is None
    response, body = await get(server, "/blobs/alice/?namespace=none&limit=5")
    assert body == b"[]" and next_of(response) is None


@deferred_test
async def test_a_bad_limit_or_page_is_400(server, dsn):
    for i in range(4):
        await write(server.backend, "alice", f"b{i}", b"x")
    for blob_id in ("b2", "b3"):
        await server.backend.delete_blob("alice", blob_id)
    response, _ = await get(server, "/blobs/alice/?deleted=true&limit=1")
    tombstone_page = next_of(response)
    response, _ = await get(server, "/blobs/alice/?limit=1")
    live_page = next_of(response)
    live_token = live_page.rpartition("page=")[2]
    # The right listing, a date no Python date reaches: no 500 for it either.
    past_any_date = _with_date(live_token, 2**62)
    for bad in (
        "limit=0",
        "limit=10001",
        "limit=x",
        "limit=",
        "limit=-1",
        "limit=1.5",
        "limit=%C2%B2",  # a superscript two: a digit to str.isdigit
        "limit=99999999999999999999999",
        "limit=1&page=",
        "limit=1&page=garbage",
        f"limit=1&page={live_token[:-1]}",
        f"limit=1&page={live_token}A",
        f"limit=1&page={past_any_date}",
        # A token made for one listing, used with another: not a position in it.
        tombstone_page.replace("deleted=true&", ""),
        f"limit=1&order_by=-date&page={live_token}",
        f"limit=1&namespace=mail&page={live_token}",
        f"limit=1&filter_flag=PENDING&page={live_token}",
        # page without limit: a token says where a page begins, not how long it is.
        f"page={live_token}",
    ):
        response, body = await get(server, bad if bad.startswith("/") else f"/blobs/alice/?{bad}")
        assert response.code == 400, (bad, body)
        assert body and b"Traceback" not in body and response.headers.getRawHeaders(b"link") is None
    response, body = await get(server, live_page)
    assert response.code == 200 and json.loads(body) == ["b1"]


def _with_date(token, date):
    """``token`` with its key's date replaced (tokens: date, row, fingerprint; 8 bytes each)."""
    raw = base64.urlsafe_b64decode(token)
    return base64.urlsafe_b64encode(date.to_bytes(8, "big") + raw[8:]).decode()
