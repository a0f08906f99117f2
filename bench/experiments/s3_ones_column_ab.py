"""Session-3 experiment 6: ones column on/off, readback loop; kernel trace of the new default."""
import json, os, statistics, sys
sys.path.insert(0, "bench"); sys.path.insert(0, "bench/experiments"); sys.path.insert(0, ".")
import torch
import bench_train as bt
from s3_profile import dump_trace
from pipeline.gpt import train as tr
from pipeline.gpt.data import DataLoader
OUT = os.environ.get("OUT", "/tmp/exp_out")
res = {}
glob_ = bt.make_shards("/tmp/bench_train_data")


def variant(ones, trace):
    from torch.profiler import ProfilerActivity, profile
    args, run, raw, opt, model = bt.setup(glob_, "flash", 1, 0, 32, 1024)
    for b in raw.transformer.h:
        b.ones_column = None if ones else False
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
    out = [1000 * statistics.median(loop(30)[3:]) for _ in range(2)]
    if trace:
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            loop(4)
            torch.cuda.synchronize()
        dump_trace(p, "trace_new.json")
    del args, run, raw, opt, model
    bt.release()
    return out


res["ones_on"] = variant(True, True)
print(res, flush=True)
res["ones_off"] = variant(False, False)
print(res, flush=True)
json.dump(res, open(os.path.join(OUT, "exp6.json"), "w"))
