"""Mail delivery on the services listener: PUT /incoming/{user}/{blob_id},
stored with its PENDING flag in one transaction (a real `pgblobs serve`)."""

import base64
import json
import time

import pytest

from pgblobs.mail import ENCODED_PREAMBLE_BYTES, METHOD_PGP, SCHEME_EXTERNAL, Preamble
from tests.helpers import content, pgblobs_cli, sql
from tests.processes import ServeProcess, free_port
from tests.reliability.clients import Client, token_for

pytestmark = pytest.mark.slow

PENDING_MAIL = "/blobs/alice/?namespace=MX&filter_flag=PENDING"


class Node:
    """A node with a services listener, an MX's token and alice's."""

    def __init__(self, dsn, *options):
        self.dsn = dsn
        services_port = free_port()
        self.process = ServeProcess(
            "--dsn", dsn, "--services-listen", f"tcp:{services_port}:interface=127.0.0.1", *options
        )
        done = pgblobs_cli("service-token", "create", "mx", "--dsn", dsn)
        assert done.returncode == 0, done.stderr
        self.mx_token = done.stdout.strip()
        self.alice_token = token_for(dsn, "alice")
        self.mx = Client(f"http://127.0.0.1:{services_port}", "mx", self.mx_token)
        self.alice = Client(self.process.url, "alice", self.alice_token)

    def deliver(self, user, blob_id, message, client=None):
        return (client or self.mx).request("PUT", f"/incoming/{user}/{blob_id}", body=message)


@pytest.fixture
def node(dsn):
    started = Node(dsn, "--quota-bytes", "100000", "--max-blob-bytes", "3000000")
    yield started
    started.process.stop()


def test_a_delivered_message_is_pending_mail_behind_soledads_preamble(node):
    message = b"-----BEGIN PGP MESSAGE-----\n" + content(50_000) + b"\n-----END PGP MESSAGE-----\n"
    before = int(time.time())
    assert node.deliver("alice", "mail-1", message)[0] == 200
    status, _, listed = node.alice.request("GET", PENDING_MAIL)
    assert status == 200 and json.loads(listed) == ["mail-1"]
    status, headers, stored = node.alice.request("GET", "/blobs/alice/mail-1?namespace=MX")
    assert status == 200
    assert stored[ENCODED_PREAMBLE_BYTES:] == b" " + message
    assert int(headers["Content-Length"]) == ENCODED_PREAMBLE_BYTES + 1 + len(message)
    preamble = Preamble.decode(base64.urlsafe_b64decode(stored[:ENCODED_PREAMBLE_BYTES]))
    assert (
        preamble.doc_id,
        preamble.rev,
        preamble.scheme,
        preamble.method,
        preamble.content_size,
    ) == ("mail-1", "0", SCHEME_EXTERNAL, METHOD_PGP, len(message))
    assert preamble.iv == bytes(16) and preamble.magic == b"\x13\x37"
    assert before <= preamble.timestamp <= int(time.time())
    assert Preamble.of_stored(stored) == preamble


def test_a_large_message_streams_in_with_its_flag(node):
    message = content(2_500_000, seed=3)
    assert node.deliver("alice", "big-mail", message)[0] == 507  # the default quota is small
    assert pgblobs_cli("quota", "set", "alice", "unlimited", "--dsn", node.dsn).returncode == 0
    assert node.deliver("alice", "big-mail", message)[0] == 200
    assert json.loads(node.alice.request("GET", PENDING_MAIL)[2]) == ["big-mail"]
    _, _, stored = node.alice.request("GET", "/blobs/alice/big-mail?namespace=MX")
    assert stored[ENCODED_PREAMBLE_BYTES + 1 :] == message


def test_refusals(node, dsn):
    assert node.deliver("alice", "once", b"first message")[0] == 200
    assert node.deliver("alice", "once", b"second message")[0] == 409
    stored = node.alice.request("GET", "/blobs/alice/once?namespace=MX")[2]
    assert stored.endswith(b" first message")
    # Over quota (100,000 bytes): 507, and nothing stored.
    assert node.deliver("alice", "huge", content(120_000))[0] == 507
    assert node.alice.request("GET", "/blobs/alice/huge?namespace=MX")[0] == 404
    # Over --max-blob-bytes once the preamble is counted: 413.
    assert node.deliver("alice", "too-big", b"x" * (3_000_000 - 500))[0] == 413
    for user, blob_id in (("al%20ice", "x"), ("alice", "bad%20id"), ("alice", "a" * 300)):
        assert node.deliver(user, blob_id, b"x")[0] == 400, (user, blob_id)
    assert sql(dsn, "SELECT count(*) FROM pgblobs.blobs")[0][0] == 1
    assert sql(dsn, "SELECT count(*) FROM pg_largeobject_metadata")[0][0] == 1


def test_each_kind_of_token_opens_only_its_own_site(node):
    services = f"http://127.0.0.1:{node.mx.port}"
    as_user_on_services = Client(services, "alice", node.alice_token)
    assert node.deliver("alice", "m", b"x", client=as_user_on_services)[0] == 401
    assert (
        node.deliver("alice", "m", b"x", client=Client(services, "mx", "not-the-token"))[0] == 401
    )
    no_token = Client(services, "mx", "")
    no_token.auth = ""
    assert node.deliver("alice", "m", b"x", client=no_token)[0] == 401
    as_service_on_public = Client(node.process.url, "mx", node.mx_token)
    assert as_service_on_public.request("GET", "/blobs/mx/")[0] == 401
    assert as_service_on_public.request("PUT", "/blobs/mx/m", body=b"x")[0] == 401
    # The services site serves deliveries and health, nothing else.
    assert node.mx.request("GET", "/blobs/alice/")[0] == 404
    assert node.mx.request("GET", "/health")[0] == 200
    assert node.mx.request("GET", "/incoming/alice/m")[0] == 405
    # A revoked service token is refused at once.
    assert pgblobs_cli("service-token", "revoke", "mx", "--dsn", node.dsn).returncode == 0
    assert node.deliver("alice", "m", b"x")[0] == 401


def test_a_delivery_whose_flag_cannot_be_stored_stores_nothing(node, dsn):
    sql(
        dsn,
        """
        CREATE FUNCTION pgblobs.refuse_flags() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'flags refused by the test'; END $$;
        CREATE TRIGGER refuse_flags BEFORE INSERT ON pgblobs.blob_flags
        FOR EACH ROW EXECUTE FUNCTION pgblobs.refuse_flags();
    """,
    )
    try:
        assert pgblobs_cli("quota", "set", "alice", "unlimited", "--dsn", dsn).returncode == 0
        for blob_id, size in (("small", 1000), ("large", 600_000)):
            status, _, _ = node.deliver("alice", blob_id, content(size))
            assert status >= 500, (blob_id, status)
        assert sql(dsn, "SELECT count(*) FROM pgblobs.blobs")[0][0] == 0
        assert sql(dsn, "SELECT count(*) FROM pg_largeobject_metadata")[0][0] == 0
    finally:
        sql(
            dsn,
            "DROP TRIGGER refuse_flags ON pgblobs.blob_flags; DROP FUNCTION pgblobs.refuse_flags()",
        )
    assert node.deliver("alice", "after", b"fine")[0] == 200


def test_the_mail_clients_processing_loop(node):
    for number in range(3):
        assert node.deliver("alice", f"m{number}", f"message {number}".encode())[0] == 200
    alice = node.alice

    def listed(flag):
        status, _, body = alice.request("GET", f"/blobs/alice/?namespace=MX&filter_flag={flag}")
        assert status == 200
        return json.loads(body)

    assert listed("PENDING") == ["m0", "m1", "m2"]
    flags = "/blobs/alice/m1?namespace=MX"
    assert alice.request("POST", flags, body=b'["PROCESSING"]')[0] == 200
    assert listed("PENDING") == ["m0", "m2"] and listed("PROCESSING") == ["m1"]
    assert alice.request("POST", flags, body=b'["PROCESSED"]')[0] == 200
    assert listed("PROCESSING") == [] and listed("PROCESSED") == ["m1"]
    assert alice.request("GET", flags + "&only_flags=True")[2] == b'["PROCESSED"]'
    assert alice.request("DELETE", flags)[0] == 200
    assert listed("PROCESSED") == [] and listed("PENDING") == ["m0", "m2"]
    _status, _, body = alice.request("GET", "/blobs/alice/?namespace=MX&deleted=True")
    assert json.loads(body) == ["m1"]
