"""Where and how a benchmark ran, stored with its JSON so every number carries its machine and command."""
from __future__ import annotations

import datetime
import os
import platform
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
