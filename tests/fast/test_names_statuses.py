"""Generated names and flags against the site over the memory backend: every
status is exactly the one pgblobs.names predicts (tests/fast/statuses.py)."""

import json

from hypothesis import given, settings
from twisted.internet.task import Clock

from tests.fast import statuses
from tests.fast.wire import connect, memory_site, request

many = settings(max_examples=250, deadline=None)


@many
@given(user=statuses.users, blob_id=statuses.blob_ids, namespace=statuses.namespaces)
def test_the_status_of_every_step_of_a_blobs_life_is_predicted_by_names(user, blob_id, namespace):
    site = memory_site()
    path = statuses.blob_path(user, blob_id, namespace)
    for method, body in statuses.BLOB_LIFE:
        client = connect(site, Clock())
        client.send(request(method, path, body=body or b""))
        expected = statuses.expected_status(method, user, blob_id, namespace)
        assert client.status == expected, (method, path, client.answer[:300])


@many
@given(flags=statuses.flag_lists)
def test_the_status_of_a_flag_body_is_predicted_by_names(flags):
    site = memory_site()
    client = connect(site, Clock())
    client.send(request("PUT", "/blobs/alice/flagged", body=b"x"))
    assert client.status == 200
    client = connect(site, Clock())
    client.send(request("POST", "/blobs/alice/flagged", body=json.dumps(flags).encode()))
    assert client.status == statuses.expected_flags_status(flags), (flags, client.answer[:300])
