"""Blocking HTTP clients for tests that drive `pgblobs serve` processes from threads."""

import http.client
from urllib.parse import urlsplit

from tests.helpers import pgblobs_cli, token_header


def token_for(dsn, user):
    """A token made by `pgblobs token create`, as an operator makes one."""
    done = pgblobs_cli("token", "create", user, "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class Client:
    """One user's blocking client of one node."""

    def __init__(self, url, user, token, timeout=30):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.user = user
        self.timeout = timeout
        self.auth = token_header(user, token)

    def request(self, method, path, body=None, headers=None):
        """(status, headers, body); status 0 when the connection broke."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            connection.request(
                method, path, body=body, headers={"Authorization": self.auth, **(headers or {})}
            )
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        except (OSError, http.client.HTTPException):
            return 0, {}, b""
        finally:
            connection.close()

    def put(self, blob_id, data):
        return self.request("PUT", f"/blobs/{self.user}/{blob_id}", body=data)

    def get(self, blob_id):
        return self.request("GET", f"/blobs/{self.user}/{blob_id}")
