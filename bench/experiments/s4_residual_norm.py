"""Session-4 experiment: the fused residual add + layernorm (`pipeline/gpt/residual_norm.py`) on
an H100: its kernels against the reference math at d12's shape (B=32, T=1024), their launch
shapes, and the default training step with and without it (same process, alternating)."""
import itertools
import json
import os
import sys

sys.path.insert(0, "bench"); sys.path.insert(0, "bench/experiments"); sys.path.insert(0, ".")
import torch  # noqa: E402

import bench_train as bt  # noqa: E402
from pipeline.gpt import residual_norm as rn  # noqa: E402
from s3_profile import OUT, default_step_ms, graph_ms  # noqa: E402
from s4_probe import profile_default  # noqa: E402

res = {}


def save():
    with open(os.path.join(OUT, "residual_norm.json"), "w") as f:
        json.dump(res, f, indent=1)


def kernels(M=32768, C=768, width=832):
    gen = torch.Generator(device="cuda").manual_seed(0)

    def r(*s, std=1.0, dt=torch.bfloat16):
        return (torch.randn(*s, device="cuda", generator=gen) * std).to(dt)
    x, y = r(M, C), r(M, C, std=0.5)
    bias, w, b = r(C, std=0.1, dt=torch.float32), 1 + r(C, std=0.1, dt=torch.float32), r(C, std=0.1, dt=torch.float32)
    out = rn.residual_norm_forward(x, y, bias, w, b, width, 1e-5)
    ref = rn._forward_reference(x, y, bias, w, b, width, 1e-5)
    errs = {"fwd_" + k: (a.float() - e.float()).abs().max().item() for k, a, e in zip(("x_new", "h", "mean", "rstd"), out, ref)}
    x_new, h, mean, rstd = out
    g_x, g_h = r(M, C), r(M, width)
    got = rn.residual_norm_backward(g_x, g_h, x_new, mean, rstd, w)
    want = rn._backward_reference(g_x, g_h, x_new, mean, rstd, w)
    for k, a, e in zip(("g", "d_bias", "d_w", "d_b"), got, want):
        errs["bwd_" + k] = ((a.float() - e.float()).norm() / e.float().norm()).item()
    res["errors"] = errs
    print(errs, flush=True)
    fwd = {}
    for rows, warps in itertools.product((1, 2, 4, 8, 16), (2, 4, 8, 16)):
        rn.FORWARD_LAUNCH = dict(ROWS=rows, num_warps=warps)
        fwd["rows%d_w%d" % (rows, warps)] = graph_ms(lambda: rn.residual_norm_forward(x, y, bias, w, b, width, 1e-5))
    res["forward_ms"] = fwd
    print("fwd", sorted(fwd.items(), key=lambda kv: kv[1])[:5], flush=True)
    bwd = {}
    for rows, warps, per_sm in itertools.product((1, 2, 4, 8), (4, 8, 16), (1, 2, 4, 8, 16)):
        rn.BACKWARD_LAUNCH = dict(ROWS=rows, num_warps=warps, per_sm=per_sm)
        bwd["rows%d_w%d_sm%d" % (rows, warps, per_sm)] = graph_ms(
            lambda: rn.residual_norm_backward(g_x, g_h, x_new, mean, rstd, w))
    res["backward_ms"] = bwd
    print("bwd", sorted(bwd.items(), key=lambda kv: kv[1])[:5], flush=True)
    rows, warps = min(fwd, key=fwd.get)[4:].split("_w")
    rn.FORWARD_LAUNCH = dict(ROWS=int(rows), num_warps=int(warps))
    rw, sm = min(bwd, key=bwd.get).split("_sm")
    rows, warps = rw[4:].split("_w")
    rn.BACKWARD_LAUNCH = dict(ROWS=int(rows), num_warps=int(warps), per_sm=int(sm))
    sums = {}
    for block_p, block_n in ((64, 64), (128, 32), (32, 128), (256, 16)):
        rn.SUM_LAUNCH = dict(BLOCK_P=block_p, BLOCK_N=block_n, num_warps=4)
        sums["p%d_n%d" % (block_p, block_n)] = graph_ms(
            lambda: rn.residual_norm_backward(g_x, g_h, x_new, mean, rstd, w))
    res["backward_with_sum_launch_ms"] = sums
    block_p, block_n = min(sums, key=sums.get)[1:].split("_n")
    rn.SUM_LAUNCH = dict(BLOCK_P=int(block_p), BLOCK_N=int(block_n), num_warps=4)
    res["chosen"] = dict(forward=rn.FORWARD_LAUNCH, backward=rn.BACKWARD_LAUNCH, sums=rn.SUM_LAUNCH)
    print(res["chosen"], flush=True)
    save()


def step_ab():
    glob_ = bt.make_shards("/tmp/bench_train_data")

    def off(raw):
        raw.fused_residual = False
    for name, cfg in (("baseline", off), ("fused_residual", None), ("baseline", off), ("fused_residual", None)):
        res.setdefault("step_" + name, []).append(default_step_ms(glob_, cfg))
        print(name, res["step_" + name][-1], flush=True)
        save()


def profile():
    glob_ = bt.make_shards("/tmp/bench_train_data")
    d = profile_default(glob_, tag="_fused")
    res["profile_fused"] = dict(step_ms=d["step_ms_median"], kernel_ms=d["kernel_ms"],
                                families=d["families"], kernels=d["kernels"][:60])
    for r in d["kernels"][:45]:
        print("%8.4f ms %4d  %s" % (r["ms"], r["calls"], r["name"][:100]))
    save()


if __name__ == "__main__":
    kernels()
    if "--profile" in sys.argv:
        profile()
    if "--no-step" not in sys.argv:
        step_ab()
