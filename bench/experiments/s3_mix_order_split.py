"""Session-3 experiment 9: inductor's mix-order reduction split size (layernorm backward partials)."""
import json, os, statistics, sys
sys.path.insert(0, "bench"); sys.path.insert(0, "bench/experiments"); sys.path.insert(0, ".")
import torch._inductor.config as ic
import bench_train as bt
from pipeline.gpt import train as tr
from pipeline.gpt.data import DataLoader
OUT = os.environ.get("OUT", "/tmp/exp_out")
glob_ = bt.make_shards("/tmp/bench_train_data")
res = {}


def variant(split):
    ic.triton.mix_order_reduction_split_size = split
    args, run, raw, opt, model = bt.setup(glob_, "flash", 1, 0, 32, 1024)
    step_fn = bt.make_step("flash+compile+lt+graphs", args, run, raw, opt, model, 1)
    batches = tr.batch_source(DataLoader(glob_, 32, 1024), run)
    rb = tr.StepReadback(run)

    def loop(n):
        ts = []
        for s in range(n):
            rb.begin()
            loss, norm = step_fn(batches, 6e-4)
            d = rb.push(s, 6e-4, loss, norm)
            batches.prefetch()
            if d:
                ts.append(d[4])
        rb.drain()
        return ts
    loop(8)
    out = [round(1000 * statistics.median(loop(30)[3:]), 3) for _ in range(2)]
    del args, run, raw, opt, model
    bt.release()
    return out


for split in (None, 64, 128, 32, None):
    key = "split_%s" % split
    res.setdefault(key, []).append(variant(split))
    print(res, flush=True)
    json.dump(res, open(os.path.join(OUT, "exp9.json"), "w"))
