"""Timing helpers and the machine's description."""

import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

RUNS = 3


def median_seconds(run, runs=RUNS):
    """Median wall time of ``run()`` (a callable) over ``runs`` calls."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class PeakRss:
    """Samples a process's RSS from a reactor loop while work runs."""

    def __init__(self, pid, reactor):
        from twisted.internet import task

        self.pid = pid
        self.baseline = rss_kib(pid)
        self.peak = self.baseline
        self._loop = task.LoopingCall(self._sample)
        self._loop.clock = reactor
        self._loop.start(0.05)

    def _sample(self):
        self.peak = max(self.peak, rss_kib(self.pid))

    def stop(self):
        self._loop.stop()
        return (self.peak - self.baseline) / 1024


def machine():
    revision = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        or "unknown"
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], capture_output=True, text=True
    ).stdout.strip()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        line.split()[1]
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    postgres = subprocess.run(["postgres", "--version"], capture_output=True, text=True).stdout
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "revision": revision + (" (with uncommitted changes)" if dirty else ""),
        "machine": f"{os.cpu_count()} cores, {cpu}, {int(memory) // 1024 // 1024} GiB, "
        f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgres": postgres.strip() or "unknown",
    }
