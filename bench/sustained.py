"""Sustained small writes from an empty database: does throughput hold as the
table grows (issue 17, item 17)?

64 users PUT 10 KB of random bytes (each wrk thread draws its body once)
through one `pgblobs serve` under `wrk`, on a new cluster with fsync on,
in back-to-back windows of ``WINDOW`` seconds for ``WINDOWS`` windows, with
nothing analysing the table but autovacuum. The goal: the last window within
0.8x of the first. Writes bench/sustained.md.

    python -m bench.sustained [WINDOWS]
"""

import datetime
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.scratch import new_database, serving
from pgblobs import accounts
from pgblobs.db.sync import SyncConnection
from tests.helpers import token_header

USERS = 64
CONNECTIONS = 64
THREADS = 2
SIZE = 10_000
WINDOW = 10  # seconds
WINDOWS = 7
GOAL = 0.8  # last window / first window
RESULTS = Path(__file__).with_name("sustained.md")

# Each request goes to the next user (its own token); ids are numbered per thread
# and window, so every PUT stores a new blob.
_SCRIPT = """
local auths = {{{auths}}}
local window = "{window}"
local counter, threads = 0, 0
local body
function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end
function init(args)
  math.randomseed(os.time() + (thread_id or 0))
  local bytes = {{}}
  for i = 1, {size} do bytes[i] = string.char(math.random(0, 255)) end
  body = table.concat(bytes)
end
function request()
  counter = counter + 1
  local user = counter % {users}
  local headers = {{["Authorization"] = auths[user + 1]}}
  return wrk.format("PUT", "/blobs/u" .. user .. "/" .. window .. "-" .. (thread_id or 0) ..
                    "-" .. counter, headers, body)
end
"""


def _window(url, auths, number):
    """PUT/s of one window; fails if any answer was not 2xx."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            _SCRIPT.format(
                auths=", ".join(f'"{auth}"' for auth in auths),
                window=f"w{number}",
                size=SIZE,
                users=USERS,
            )
        )
    done = subprocess.run(
        ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{WINDOW}s", "--timeout", "10s",
         "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    Path(script.name).unlink()
    if re.search(r"Non-2xx or 3xx responses|Socket errors", done.stdout):
        raise RuntimeError(f"not every PUT succeeded:\n{done.stdout}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))


def main(windows):
    with new_database("pgblobs-sustained-") as dsn:
        connection = SyncConnection.connect(dsn)
        auths = [
            token_header(f"u{user}", accounts.create_token(connection, f"u{user}"))
            for user in range(USERS)
        ]
        rates = []
        with serving(dsn, "--quota-bytes", "unlimited") as node:
            for number in range(windows):
                rates.append(_window(node.url, auths, number))
                print(f"window {number + 1}: {rates[-1]:,.0f} PUT/s", flush=True)
        stored = connection.fetch_one("live_totals").blobs
        connection.close()
    ratio = rates[-1] / rates[0]
    verdict = "met" if ratio >= GOAL else "MISSED"
    lines = [
        "# Sustained small writes from an empty database",
        "",
        f"{datetime.date.today()}: {USERS} users, 10 KB random bodies, {CONNECTIONS} connections "
        f"under wrk, one `pgblobs serve`, fsync on, {windows} windows of {WINDOW} s back to back "
        f"({stored:,} blobs stored in all).",
        "",
        "| window | PUT/s |",
        "|---:|---:|",
        *(f"| {n + 1} | {rate:,.0f} |" for n, rate in enumerate(rates)),
        "",
        f"Last window / first: {ratio:.2f} (goal: at least {GOAL}) — {verdict}.",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines[-2:]))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else WINDOWS)
