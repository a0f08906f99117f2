"""Dump inductor's output code for the default compiled training step (d12, B=32)."""
import sys
sys.path.insert(0, "bench"); sys.path.insert(0, "bench/experiments"); sys.path.insert(0, ".")
import bench_train as bt
from pipeline.gpt import train as tr
from pipeline.gpt.data import DataLoader
glob_ = bt.make_shards("/tmp/bench_train_data")
args, run, raw, opt, model = bt.setup(glob_, "flash", 1, 0, 32, 1024)
step_fn = bt.make_step("flash+compile+lt", args, run, raw, opt, model, 1)
batches = tr.batch_source(DataLoader(glob_, 32, 1024), run)
for _ in range(2):
    step_fn(batches, 6e-4)[0].item()
