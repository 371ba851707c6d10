"""/health, /metrics and the handling of errors nobody planned for."""

import treq
from twisted.internet import defer
from zope.interface import implementer

from pgblobs import IBlobsBackend
from pgblobs.tokens import KnownTokens
from pgblobs.web.site import build_site
from tests.helpers import create_token, deferred_test, token_header


@deferred_test
async def test_health_answers_when_the_database_does(server):
    response = await treq.get(server.url + "/health")
    assert response.code == 200


@deferred_test
async def test_metrics_count_requests_by_route_and_status(server):
    await treq.get(server.url + "/blobs/alice/missing", headers=server.auth())
    await treq.put(server.url + "/blobs/alice/one", data=b"12345", headers=server.auth())
    response = await treq.get(server.url + "/metrics")
    assert response.code == 200
    text = (await response.content()).decode()
    assert 'pgblobs_http_requests_total{method="GET",route="blob",status="404"} 1.0' in text
    assert 'pgblobs_http_requests_total{method="PUT",route="blob",status="200"} 1.0' in text
    assert "pgblobs_http_request_duration_seconds_bucket" in text
    assert "pgblobs_http_received_bytes_total 5.0" in text
    assert 'pgblobs_db_connections_in_use{pool="content"}' in text


@implementer(IBlobsBackend)
class _Exploding:
    """A backend whose every answer is a bug, to see what a client is told."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: defer.fail(RuntimeError("secret internals"))


@deferred_test
async def test_an_unexpected_error_is_a_500_with_a_request_id_only(backend, dsn):
    from twisted.internet import reactor

    token = create_token(dsn, "alice")
    site = build_site(
        _Exploding(), KnownTokens(backend.database).user_token_is_valid, backend.database.ping
    )
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        import base64

        auth = {b"Authorization": [b"Token " + base64.b64encode(f"alice:{token}".encode())]}
        response = await treq.get(
            f"http://127.0.0.1:{port.getHost().port}/blobs/alice/?only_count=True", headers=auth
        )
        body = (await response.content()).decode()
        request_id = response.headers.getRawHeaders(b"x-request-id")[0].decode()
        assert response.code == 500
        assert request_id in body
        assert "secret" not in body and "Traceback" not in body
    finally:
        await port.stopListening()


@deferred_test
async def test_metrics_labels_take_only_known_methods(server):
    from tests.helpers import raw_http

    for number in range(40):
        await raw_http(
            server,
            b"INVENTED%d /blobs/alice/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % number,
        )
    text = (await (await treq.get(server.url + "/metrics")).content()).decode()
    assert "INVENTED" not in text
    assert 'method="other"' in text


@deferred_test
async def test_the_site_runs_on_the_memory_backend_without_a_database():
    """The web layer needs a backend, a token check and a health check: no
    PostgreSQL. (What MemoryBlobsBackend is for: tests and embedders.)"""
    from twisted.internet import reactor

    from pgblobs import MemoryBlobsBackend

    async def token_is_valid(user, token):
        return (user, token) == ("alice", "secret")

    site = build_site(MemoryBlobsBackend(), token_is_valid, lambda: defer.succeed(None))
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}"
        auth = {b"Authorization": [token_header("alice", "secret").encode()]}
        response = await treq.put(f"{url}/blobs/alice/one", data=b"in memory", headers=auth)
        assert response.code == 200
        response = await treq.get(f"{url}/blobs/alice/one", headers=auth)
        assert (response.code, await response.content()) == (200, b"in memory")
        response = await treq.post(
            f"{url}/stream/alice?direction=download", data=b'["one"]', headers=auth
        )
        assert await response.content() == b"00000009" + b"aW4gbWVtb3J5" + b" " * 12 + b" in memory"
        assert (await treq.get(f"{url}/health")).code == 200
        assert (await treq.get(f"{url}/blobs/alice/one")).code == 401
        # Claims need leases that end on their own: this store does not provide IClaims.
        assert (await treq.post(f"{url}/claim/alice", headers=auth)).code == 404
    finally:
        await port.stopListening()
        for channel in list(site.open_channels):
            channel.transport.abortConnection()
