"""`pgblobs serve` as a separate process, as operators run it."""

import os
import queue
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from pgblobs.serve import READY
from tests.helpers import pgblobs_command

# The last lines of the quick starts the embedded default prints (pgblobs/serve.py).
QUICK_START_END = "/blobs/dev/\n"
MAIL_QUICK_START_END = "filter_flag=PENDING"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServeProcess:
    """Starts `pgblobs serve ARGS` and waits until it says it is serving;
    ``env`` adds to its environment."""

    def __init__(self, *args, timeout=90, env=None):
        # Without --dsn, serve runs the embedded PostgreSQL and prints its
        # quick start (and, with a services listener, the mail delivery)
        # right after saying it is serving.
        self._last_lines = []
        if "--dsn" not in args:
            self._last_lines.append(QUICK_START_END)
            if "--services-listen" in args:
                self._last_lines.append(MAIL_QUICK_START_END)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = pgblobs_command(
            "serve", "--listen", f"tcp:{self.port}:interface=127.0.0.1", *args
        )
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
        )
        self.lines = queue.Queue()
        self.output = []
        threading.Thread(target=self._pump, args=(self.process.stdout,), daemon=True).start()
        self.errors = []
        threading.Thread(target=self._collect, args=(self.process.stderr,), daemon=True).start()
        self._wait_serving(timeout)

    def _pump(self, stream):
        for line in stream:
            self.output.append(line)
            self.lines.put(line)

    def _collect(self, stream):
        for line in stream:
            self.errors.append(line)

    def _wait_serving(self, timeout):
        """Until serve says it is serving and has printed what follows that."""
        deadline = time.monotonic() + timeout
        awaited = [READY, *self._last_lines]
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            if awaited[0] in line:
                awaited.pop(0)
                if not awaited:
                    return
        raise RuntimeError("pgblobs serve did not start:\n" + "".join(self.output + self.errors))

    def dev_token(self):
        for line in self.output:
            if line.startswith("development token"):
                return line.rsplit(" ", 1)[1].strip()
        raise AssertionError("no development token printed:\n" + "".join(self.output))

    def rss_kib(self):
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self, signum=signal.SIGTERM, timeout=60):
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def no_stray_postgres(data_dir):
    """True when the embedded cluster in ``data_dir`` is not running."""
    pid_file = Path(data_dir) / "data" / "postmaster.pid"
    if not pid_file.exists():
        return True
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    os.kill(pid, signal.SIGINT)  # do not leave it behind, but report it
    return False
