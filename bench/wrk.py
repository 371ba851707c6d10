"""Small HTTP GET and PUT under `wrk` (C, keep-alive): the server, not the
client, is what saturates (treq tops out near 2,000 requests/s here).

Each contender gets the same load in the same run: GET of 10 KB spread over
1000 stored blobs, and PUT of 10 KB, every request a new id.
"""

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONNECTIONS = 64
THREADS = 2
SECONDS = 5
SIZE = 10_000
STORED = 1000  # blobs a GET run picks from
# PUT bodies are random, drawn once per run: encrypted blobs do not compress,
# and PostgreSQL compresses large-object pages, so a body of one repeated
# byte writes a seventh of the WAL a real one does.
BODY = os.urandom(SIZE)

# wrk's Lua: GET picks one of the stored ids; PUT numbers its ids per thread.
_SCRIPT = """
local prefix, auth, mode = "{prefix}", "{auth}", "{mode}"
local body = {body}
local counter, threads = 0, 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end
function request()
  local headers = {{}}
  if auth ~= "" then headers["Authorization"] = auth end
  if mode == "GET" then
    return wrk.format("GET", prefix .. "w" .. math.random(0, {stored} - 1), headers)
  end
  counter = counter + 1
  return wrk.format("PUT", prefix .. "{run}-" .. (thread_id or 0) .. "-" .. counter, headers, body)
end
"""


def _lua_string(data):
    """``data`` as a Lua string literal: a decimal escape per byte (LuaJIT's
    strings, as wrk runs them, hold any bytes)."""
    return '"' + "".join(f"\\{byte:03d}" for byte in data) + '"'


def available():
    return subprocess.run(["which", "wrk"], capture_output=True).returncode == 0


def requests_per_second(url, prefix, mode, auth="", run="r"):
    """Requests/s of ``mode`` (GET or PUT) against ``url``; fails if any
    answer was not 2xx."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            _SCRIPT.format(
                prefix=prefix,
                auth=auth,
                mode=mode,
                body=_lua_string(BODY),
                stored=STORED,
                run=run,
            )
        )
    done = subprocess.run(
        [
            "wrk",
            f"-t{THREADS}",
            f"-c{CONNECTIONS}",
            f"-d{SECONDS}s",
            "--timeout",
            "10s",
            "-s",
            script.name,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    Path(script.name).unlink()
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    errors = re.search(r"Socket errors: (.*)", done.stdout)
    if failed or errors:
        raise RuntimeError(f"wrk {mode} {url}: not every request succeeded:\n{done.stdout}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))


class BareServer:
    """bench/bare_server.py in its own process."""

    def __init__(self, port):
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.bare_server", str(port)], stdout=subprocess.PIPE
        )
        assert self.process.stdout.readline().strip() == b"serving"
        time.sleep(0.1)

    def stop(self):
        self.process.terminate()
        self.process.wait(10)
