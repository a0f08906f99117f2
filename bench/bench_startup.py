"""Per-trial start-up cost of `pipeline train`, against a 128-step trial of the tiniest model.

For each model shape, runs `pipeline train` as a tuner trial does (a fresh process), once with the
trainer's defaults (which skip the fast-path set-up for short runs) and once with every fast path
forced on (--compile 1 --cuda-graphs 1 --cublaslt 1 --cudnn-attention 1), and splits the wall time
into a bare `python -c 'import torch, pipeline.gpt.train'` (process and imports), the steady steps
(steps x the median step time) and the rest (model build, data open, compilation, CUDA-graph capture,
autotuning, the final val pass). Prints a table; writes bench/results/startup_<gpu>.json.

    python bench/bench_startup.py -i 'out/shards/*_train_*.bin' -j 'out/shards/*_val_*.bin'
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

STEP = re.compile(r"^step\s+\d+/\d+ \| loss \S+ \| norm \S+ \| lr \S+ \| ([\d.]+) ms")
FORCED = ["--compile", "1", "--cuda-graphs", "1", "--cublaslt", "1", "--cudnn-attention", "1"]


def timed(cmd):
    t0 = time.time()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       env=dict(os.environ, PYTHONUNBUFFERED="1"))
    wall = time.time() - t0
    if p.returncode != 0:
        raise SystemExit("failed (%d): %s\n%s" % (p.returncode, " ".join(cmd), p.stdout[-3000:]))
    return wall, p.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-i", required=True)
    ap.add_argument("-j", required=True)
    ap.add_argument("--shapes", default="1/64/1,3/192/3")
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--flags", default="-d 524288 -b 64 -u 13 -v 0 -m 20 -s 0",
                    help="trainer flags of every run")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    a = ap.parse_args(argv)
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    imports, _ = timed([sys.executable, "-c", "import torch, pipeline.gpt.train"])
    rows = []
    for shape in a.shapes.split(","):
        d, c, h = shape.split("/")
        base = [sys.executable, "-m", "pipeline", "train", "-i", a.i, "-j", a.j, "-1d", d, "-1c", c, "-1h", h,
                "-x", str(a.steps)] + a.flags.split()
        for name, extra in (("defaults", []), ("fast paths forced", FORCED)):
            wall, out = timed(base + extra)
            steps = [float(m.group(1)) / 1000 for m in map(STEP.match, out.splitlines()) if m]
            median = statistics.median(steps[3:]) if len(steps) > 3 else float("nan")
            rows.append({"shape": shape, "setup": name, "wall_s": wall, "imports_s": imports,
                         "steady_steps_s": median * len(steps), "median_step_ms": median * 1000,
                         "overhead_s": wall - median * len(steps),
                         "skipped": "short run" in out})
    print("GPU: %s; %d steps; flags: %s" % (gpu, a.steps, a.flags))
    print("%-8s %-18s %8s %9s %12s %12s %11s" % ("shape", "set-up", "wall s", "imports s", "steps s",
                                                  "median ms", "overhead s"))
    for r in rows:
        print("%-8s %-18s %8.1f %9.1f %12.1f %12.2f %11.1f" % (
            r["shape"], r["setup"], r["wall_s"], r["imports_s"], r["steady_steps_s"], r["median_step_ms"],
            r["overhead_s"]))
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "startup_%s.json" % re.sub(r"\W+", "_", gpu))
    with open(path, "w") as f:
        json.dump({"gpu": gpu, "steps": a.steps, "flags": a.flags, "rows": rows}, f, indent=2)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
