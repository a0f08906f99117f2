"""Session-7 experiment: are the slow steps of a bench_train run Python garbage collections?

Runs `bench/bench_train.py` with its arguments (in this process), printing every full (generation
2) collection that takes over 2 ms, with the time since start; run it next to
`nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_throttle_reasons.active --format=csv -lms 50`
to see the clocks. Session 7: full collections took 20-380 ms as the process grew, but the slow
steps (58-65 ms against ~55, at the same step numbers in every run) stayed when the collector was
frozen after warm-up (`gc.collect(); gc.freeze()`, tried in `train.StepReadback`, not kept); they
line up with the GPU at its 700 W power cap ("SW power cap") dropping the SM clock to 1440-1785 MHz.
Usage: python bench/experiments/s7_gc_pauses.py --suite speed --steps 40 --configs ..."""
import gc
import runpy
import sys
import time

START = time.perf_counter()
_began = {}


def _report(phase, info):
    if phase == "start":
        _began["t"] = time.perf_counter()
    elif info["generation"] == 2 and "t" in _began:
        ms = (time.perf_counter() - _began["t"]) * 1e3
        if ms > 2:
            print("gc gen2 %.1f ms at t=%.2f s (collected %d)" % (ms, time.perf_counter() - START,
                                                                 info["collected"]), flush=True)


if __name__ == "__main__":
    gc.callbacks.append(_report)
    sys.argv = ["bench/bench_train.py"] + sys.argv[1:]
    runpy.run_path("bench/bench_train.py", run_name="__main__")
