"""Blocking HTTP clients for tests that drive `pgblobs serve` processes from threads."""
import base64
import http.client
import subprocess
import sys
from urllib.parse import urlsplit


def token_for(dsn, user):
    done = subprocess.run([sys.executable, "-m", "pgblobs.cli", "token", "create", user,
                           "--dsn", dsn], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class Client:
    """One user's blocking client of one node."""

    def __init__(self, url, user, token, timeout=30):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.user = user
        self.timeout = timeout
        self.auth = "Token " + base64.b64encode(f"{user}:{token}".encode()).decode()

    def request(self, method, path, body=None, headers=None):
        """(status, headers, body); status 0 when the connection broke."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            connection.request(method, path, body=body,
                               headers={"Authorization": self.auth, **(headers or {})})
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
