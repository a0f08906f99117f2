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


def proc_stat() -> dict:
    """pid -> the fields of /proc/<pid>/stat after the command name, for every readable process.
    fields[0] is stat(5)'s field 3 (state); so ppid = fields[1], utime/stime/cutime/cstime =
    fields[11:15], starttime = fields[19], rss (pages) = fields[21]."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                table[int(name)] = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
    return table


def children_of(table: dict) -> dict:
    """ppid -> [pid] from a proc_stat() table."""
    children = {}
    for pid, fields in table.items():
        children.setdefault(int(fields[1]), []).append(pid)
    return children


def descendants(table: dict, pid: int) -> list:
    """Every live process under pid (not pid itself) in a proc_stat() table."""
    children, out, stack = children_of(table), [], list(children_of(table).get(pid, []))
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, []))
    return out


def proc_tree_cpu_s(pid: int) -> float:
    """CPU seconds of pid and its live descendants, plus their reaped children (for Spark: the JVM
    and every Python worker under it)."""
    tick, table = os.sysconf("SC_CLK_TCK"), proc_stat()
    return sum(sum(int(x) for x in table[p][11:15]) / tick  # utime stime cutime cstime
               for p in [pid] + descendants(table, pid) if p in table)


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def thread_cpu_s(pid: int) -> dict:
    """tid -> (thread name as /proc shows it, at most 15 characters; CPU seconds) for every live
    thread of pid (a JVM names its threads: "Executor task l", "C1 CompilerThre", "GC Thread#0", ...)."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return out
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                line = f.read()
        except OSError:
            continue
        name = line[line.index("(") + 1:line.rindex(")")]
        fields = line.rsplit(")", 1)[1].split()
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out
