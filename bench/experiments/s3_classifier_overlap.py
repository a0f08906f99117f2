"""Session-3 experiment 7: classifier forward in row chunks, loss kernel of chunk i on a side stream
while the matmul of chunk i+1 runs (optionally on fewer SMs)."""
import json, os, sys, traceback
sys.path.insert(0, "bench"); sys.path.insert(0, "bench/experiments"); sys.path.insert(0, ".")
import torch
from s3_profile import graph_ms
from pipeline.gpt import cublaslt as L
OUT = os.environ.get("OUT", "/tmp/exp_out")


def main(n=32768, C=768, V=50304, vocab=50257):
    torch.manual_seed(0)
    x = torch.randn(n, C, device="cuda").bfloat16()
    w = (0.02 * torch.randn(V, C, device="cuda")).bfloat16()
    t = torch.randint(0, vocab, (n,), device="cuda")
    logits = torch.empty(n, V, device="cuda", dtype=torch.bfloat16)
    side = torch.cuda.Stream()
    ce = torch.ops.gpt.cross_entropy_grad_
    out = {}

    def seq():
        L.lt_mm(x, w, False, True, L._EPILOGUE_DEFAULT, out=logits)
        ce(logits, t, vocab)
    out["sequential"] = graph_ms(seq)
    L.lt_mm(x, w, False, True, L._EPILOGUE_DEFAULT, out=logits)
    ref_l = ce(logits, t, vocab)  # logits now hold the reference gradient
    ref = logits.clone()

    for chunks in (2, 4, 8, 16):
        rows = n // chunks
        for sm in (0, 100, 112, 120, 124, 128):
            def ovl(rows=rows, sm=sm):
                main = torch.cuda.current_stream()
                res = []
                for i in range(0, n, rows):
                    L.lt_mm(x[i:i + rows], w, False, True, L._EPILOGUE_DEFAULT, out=logits[i:i + rows], sm_count=sm)
                    ev = torch.cuda.Event()
                    ev.record(main)
                    side.wait_event(ev)
                    with torch.cuda.stream(side):
                        res.append(ce(logits[i:i + rows], t[i:i + rows], vocab))
                main.wait_stream(side)
                return res
            name = "c%d_sm%d" % (chunks, sm)
            try:
                ms = graph_ms(ovl)
                got = torch.cat(ovl())
                torch.cuda.synchronize()
                out[name] = dict(ms=ms, grad_same=bool(torch.equal(logits, ref)),
                                 loss_err=(got - ref_l).abs().max().item())
            except Exception:  # noqa: BLE001
                out[name] = dict(error=traceback.format_exc()[-400:])
            print(name, out[name], flush=True)
    print("sequential", out["sequential"])
    json.dump(out, open(os.path.join(OUT, "exp7.json"), "w"), indent=1)


main()
