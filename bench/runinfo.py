"""Where and how a benchmark ran, stored with its JSON so every number carries its machine and command."""
from __future__ import annotations

import datetime
import os
import platform
import resource
import sys


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_info() -> dict:
    """CPU model and count, Python, UTC date, 1-minute load average (other work on the machine shows
    up in wall times, not in CPU-seconds), and the command line that produced the file."""
    return {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "date_utc": datetime.datetime.now(datetime.timezone.utc)
            .strftime("%Y-%m-%dT%H:%M:%SZ"), "loadavg_1m": round(os.getloadavg()[0], 2),
            "command": "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])}


def proc_tree_cpu_s(pid: int) -> float:
    """CPU seconds of pid and its live descendants, plus their reaped children (for Spark: the JVM
    and every Python worker under it)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, times = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(name)] = int(fields[1])
        times[int(name)] = sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
    total, stack = 0.0, [pid]
    children = {}
    for p, pp in parent.items():
        children.setdefault(pp, []).append(p)
    while stack:
        p = stack.pop()
        total += times.get(p, 0.0)
        stack.extend(children.get(p, []))
    return total


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
