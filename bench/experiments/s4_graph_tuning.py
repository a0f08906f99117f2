"""Session-4 experiment (first run in session 5): are the matmul algorithms that
`cublaslt._CublasLt._tune` picks (timed eagerly, back to back) also the fastest inside the CUDA
graphs the trainer replays?

The session-4 kernel timeline shows a memset before several cuBLASLt matmuls (and 1-4 us of idle
GPU around it) that back-to-back eager timing barely sees. This script records every cuBLASLt call
of two compiled default steps (B=32, T=1024, no graphs), then times each problem's candidate
algorithms, and PyTorch's own matmul where it competes, as 10 calls captured in one CUDA graph,
next to the eager tuning times and each candidate's workspace size. JSON: graph_tuning.json in $OUT.
"""
import json
import os
import sys

sys.path.insert(0, "bench"); sys.path.insert(0, "bench/experiments"); sys.path.insert(0, ".")

import bench_train as bt  # noqa: E402
from pipeline.gpt import cublaslt  # noqa: E402
from pipeline.gpt import train as tr  # noqa: E402
from pipeline.gpt.data import DataLoader  # noqa: E402
from s3_profile import OUT, graph_ms  # noqa: E402

REPEAT = 10


def record_calls(glob_):
    """{problem key: (handle, matmul args)} for every cuBLASLt problem of the compiled step."""
    calls = {}
    original = cublaslt._CublasLt.matmul

    def recording(self, trans_a, trans_b, epilogue, a, a_shape, b, b_shape, d, d_shape, bias, aux,
                  fallback=None):
        # the key _CublasLt.matmul builds for its plan cache
        key = (d.device.index, trans_a, trans_b, epilogue, a_shape, b_shape, d_shape,
               None if bias is None else bias.dtype, aux is None)
        if key not in calls:
            calls[key] = (self, (trans_a, trans_b, epilogue, a, a_shape, b, b_shape, d, d_shape, bias, aux,
                                 fallback))
        return original(self, trans_a, trans_b, epilogue, a, a_shape, b, b_shape, d, d_shape, bias, aux,
                        fallback)
    cublaslt._CublasLt.matmul = recording
    try:
        args, run, raw, opt, model = bt.setup(glob_, "flash", 1, 0, 32, 1024)
        step_fn = bt.make_step("flash+compile+lt", args, run, raw, opt, model, 1)
        batches = tr.batch_source(DataLoader(glob_, 32, 1024), run)
        for _ in range(2):
            step_fn(batches, 6e-4)[0].item()
            batches.prefetch()
    finally:
        cublaslt._CublasLt.matmul = original
    return calls, original


def main():
    os.makedirs(OUT, exist_ok=True)
    glob_ = bt.make_shards("/tmp/bench_train_data")
    calls, matmul = record_calls(glob_)
    lt = cublaslt._lt()
    res = {}
    for key, (handle, call) in calls.items():
        plan = lt.plans[key]
        chosen, candidates = plan[5], plan[4]
        eager = lt.tuning.get(key, {})
        entry = dict(eager_candidates_ms=eager.get("candidates_ms"), eager_torch_ms=eager.get("torch_ms"),
                     eager_chosen=chosen, workspace_bytes=[int(c.workspaceSize) for c in candidates],
                     graph_candidates_ms=[], graph_torch_ms=None)
        options = list(range(len(candidates))) + ([-1] if call[-1] is not None else [])
        for index in options:
            plan[5] = index

            def calls10(handle=handle, call=call):
                for _ in range(REPEAT):
                    matmul(handle, *call)
            try:
                ms = graph_ms(calls10) / REPEAT
            except RuntimeError as e:
                ms = repr(e)[:200]
            if index < 0:
                entry["graph_torch_ms"] = ms
            else:
                entry["graph_candidates_ms"].append(ms)
        plan[5] = chosen
        timed = [(ms, i) for i, ms in enumerate(entry["graph_candidates_ms"]) if isinstance(ms, float)]
        if isinstance(entry["graph_torch_ms"], float):
            timed.append((entry["graph_torch_ms"], -1))
        best_ms, best = min(timed)
        chosen_ms = entry["graph_torch_ms"] if chosen == -1 else entry["graph_candidates_ms"][chosen]
        entry.update(graph_best=best, graph_best_ms=best_ms, graph_chosen_ms=chosen_ms)
        name = "epi%d %s x %s -> %s" % (key[3], key[4][:2], key[5][:2], key[6][:2])
        res[name] = entry
        print("%-60s chosen %2d %.4f ms | in-graph best %2d %.4f ms" % (name, chosen, chosen_ms, best, best_ms),
              flush=True)
        with open(os.path.join(OUT, "graph_tuning.json"), "w") as f:
            json.dump(res, f, indent=1)
    gain = sum(e["graph_chosen_ms"] - e["graph_best_ms"] for e in res.values())
    print("sum over problems of (chosen - in-graph best): %.4f ms per call each" % gain)


if __name__ == "__main__":
    main()
