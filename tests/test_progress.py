"""Long stages show progress: Spark's console progress bar, in local mode, when stderr is a terminal.
(When it is not, the bar stays off: see test_end_to_end's separate launch, whose stderr is a pipe.)"""
import os
import sys

import pytest

SCRIPT = """
import time
from pipeline.spark import get_spark
spark = get_spark("progress-test", master="local[1]")
n = spark.sparkContext.parallelize(range(6), 6).map(lambda x: time.sleep(0.7) or x).count()
print("counted", n, flush=True)
spark.stop()
"""


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_progress_bar_in_a_terminal():
    import pty

    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    chunks = []

    def read(fd):
        data = os.read(fd, 4096)
        chunks.append(data)
        return data

    # pty.fork gives the child a terminal on stdin/stdout/stderr, as a user's shell would.
    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.execve(sys.executable, [sys.executable, "-c", SCRIPT], env)
    try:
        while True:
            try:
                if not read(fd):
                    break
            except OSError:  # the child closed the terminal
                break
    finally:
        _, status = os.waitpid(pid, 0)
    out = b"".join(chunks).decode("utf-8", "replace")
    assert os.waitstatus_to_exitcode(status) == 0, out[-2000:]
    assert "counted 6" in out
    assert "[Stage 0:" in out and "/ 6]" in out, out[-2000:]
