"""`TrainConfig`: one `pipeline train` run, as the frozen result of its llm.c-style flags.

`parse_args` builds it from the command line (train_gpt2cu's flags, `--preset`, then the PyTorch
flags); `pipeline.gpt.fast.plan.resolve_plan` turns it, the device and the kernels' self-checks into
the run's `FastPlan`. The trainer saves it as `train_config.json` in the log dir.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from typing import List, Optional

from pipeline.gpt import estimate as est
from pipeline.gpt.schedule import SCHEDULERS

# train_gpt2cu's defaults (one deliberate difference: -r 0, see the -r help).
DEFAULTS = dict(i=None, j=None, ih=None, e="d12", o=None, n=0, nk=0, y=0, b=4, t=1024, d=-1, x=-1,
                es=-1, ss=0, k="cosine", l=3e-4, u=0, q=1.0, c=0.0, v=20, m=20, s=20, g=64, h=0,
                r=0, z=0, a=0, f=1, w=1, ld=None, lc=None, lh=None)
# The course's GPT-2 124M recipe (10 x 524288 x 4725 ~ 2.5B tokens at 6e-4, 10% warmup, wd 0.1).
PRESETS = {
    "course": dict(e="d12", b=64, t=1024, d=524288, x=4725, u=470, l=6e-4, q=0.0, c=0.1, k="cosine",
                   v=250, m=20, s=1000, g=64, h=1, n=500),
}
# bf16 dense tensor-core peak (TFLOP/s) for the MFU column.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "A10G": 70.0, "L4": 121.0}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pipeline train", add_help=False, allow_abbrev=False,
                                description="Pretrain GPT-2 on llm.c token shards (train_gpt2cu flags).")
    a = p.add_argument
    a("--help", action="help", help="show this help and exit")
    a("--preset", choices=sorted(PRESETS), help="start from a named set of flags (explicit flags win)")
    g = p.add_argument_group("data and files")
    g.add_argument("-i", "-id", dest="i", help="train shard glob (llm.c .bin)")
    g.add_argument("-j", "-iv", dest="j", help="val shard glob (no val loss without it)")
    g.add_argument("-ih", dest="ih", help="HellaSwag eval file (llm.c hellaswag_val.bin)")
    g.add_argument("-e", dest="e", help="init: llm.c model .bin, or a descriptor dN for a fresh model (d12)")
    g.add_argument("-o", dest="o", help="log/checkpoint dir (main.log, model_*.bin, state_*.bin)")
    g.add_argument("-n", dest="n", type=int, help="checkpoint every N steps (0 = never)")
    g.add_argument("-nk", dest="nk", type=int, help="keep only the last N checkpoints (0 = all)")
    g.add_argument("-y", dest="y", type=int, help="1 = resume from the latest checkpoint in -o")
    g.add_argument("--sync-to", help="s3://bucket/prefix: upload main.log and each checkpoint there "
                   "while training (pipeline/gpt/sync.py)")
    g = p.add_argument_group("batch and schedule")
    g.add_argument("-b", dest="b", type=int, help="micro-batch size per GPU (default 4)")
    g.add_argument("-t", dest="t", type=int, help="sequence length (default 1024)")
    g.add_argument("-d", dest="d", type=int, help="total batch in tokens; grad accum = d/(b*t*gpus)")
    g.add_argument("-x", dest="x", type=int, help="max steps (-1 = one epoch of the train shards)")
    g.add_argument("-es", dest="es", type=int, help="stop early at this step; the LR schedule still "
                   "spans -x steps (-1 = off)")
    g.add_argument("-ss", dest="ss", type=int, help="schedule start step: begin counting (LR schedule, "
                   "logs) at this step, e.g. to continue from a model_*.bin given with -e (default 0)")
    g.add_argument("-k", dest="k", choices=SCHEDULERS, help="LR scheduler (default cosine)")
    g.add_argument("-l", dest="l", type=float, help="peak learning rate (default 3e-4)")
    g.add_argument("-u", dest="u", type=int, help="warmup steps (default 0)")
    g.add_argument("-q", dest="q", type=float, help="final LR as a fraction of -l (default 1.0)")
    g.add_argument("-c", dest="c", type=float, help="weight decay (default 0.0)")
    g = p.add_argument_group("evaluation")
    g.add_argument("-v", dest="v", type=int, help="val loss every N steps (default 20)")
    g.add_argument("-m", dest="m", type=int, help="val batches per evaluation (-1 = whole split)")
    g.add_argument("-s", dest="s", type=int, help="print a sample every N steps (0 = never)")
    g.add_argument("-g", dest="g", type=int, help="sample length in tokens (genT, default 64)")
    g.add_argument("-h", dest="h", type=int, help="1 = HellaSwag accuracy every -v steps (needs -ih)")
    g = p.add_argument_group("model and memory")
    for short, long_, what in (("-1d", "-ld", "layers"), ("-1c", "-lc", "channels"),
                               ("-1h", "-lh", "heads")):
        g.add_argument(short, long_, dest=long_[1:], type=int, help="model %s (fresh model; must "
                       "match a checkpoint)" % what)
    g.add_argument("-r", dest="r", type=int, help="1 = recompute each block in backward (activation "
                   "checkpointing: far less memory, ~1/3 more compute). Default 0")
    g.add_argument("-z", dest="z", type=int, help="ZeRO stage (accepted; 1 shards AdamW state under DDP)")
    g.add_argument("-a", dest="a", type=int, help="1 = overfit a single batch (debugging)")
    g.add_argument("-f", dest="f", type=int, help="TF32 matmuls for fp32 work (default 1)")
    g.add_argument("-w", dest="w", type=int, help="fp32 master weights (accepted; always on)")
    g = p.add_argument_group("PyTorch (the fast path's plan: pipeline/gpt/fast/plan.py)")
    g.add_argument("--reference", action="store_true",
                   help="run the plain PyTorch reference model (pipeline/gpt/model.py) with PyTorch's "
                   "AdamW and clip, on any device: no compile, no CUDA graphs, no custom kernels")
    g.add_argument("--attention", choices=["flash", "eager"], default="flash",
                   help="flash = fused SDPA kernel (default); eager = explicit T x T matrix")
    g.add_argument("--compile", type=int, nargs="?", const=1, default=None,
                   help="torch.compile the model (default: 1 on CUDA, 0 on CPU)")
    g.add_argument("--cuda-graphs", type=int, default=None,
                   help="1 = replay each step from CUDA graphs after 3 warm-up steps (default: 1 on "
                   "one CUDA GPU without -r; 0 elsewhere)")
    g.add_argument("--cublaslt", type=int, default=None,
                   help="1 = bf16 matmuls through cuBLASLt: GELU in the MLP matmuls' epilogues, "
                   "each shape on its fastest algorithm (default: 1 on compute capability >= 9.0 "
                   "(H100) when its self-check passes, 0 with -r 1 or on older GPUs)")
    g.add_argument("--cudnn-attention", type=int, default=None,
                   help="1 = --attention flash through the cuDNN frontend (nvidia-cudnn-frontend "
                   "package): q/k/v read from and gradients written to c_attn's packed layout "
                   "(default: 1 on compute capability >= 9.0 with --sdpa auto when the package is "
                   "installed and its self-check passes)")
    g.add_argument("--bf16-mirrors", type=int, default=None,
                   help="1 = the cuBLASLt matmuls read bf16 copies of their weights that the AdamW "
                   "update writes, and leave bf16 weight gradients for it (no casts either way; exact "
                   "with one micro-batch per step; the tied classifier too where -b x -t is a power "
                   "of two). Default: 1 with --cublaslt on one CUDA GPU when -d equals -b x -t; 0 "
                   "with gradient accumulation")
    g.add_argument("--cudnn-tune", type=int, default=1,
                   help="1 = time every execution plan cuDNN offers for the attention shape and keep "
                   "the fastest (default); 0 = cuDNN's heuristic first choice")
    g.add_argument("--fused-loss", type=int, default=None,
                   help="1 = the classifier's loss and softmax gradient in one kernel during the forward "
                   "pass, keeping no logits (default: 1 on CUDA, 0 elsewhere)")
    g.add_argument("--loss-kernel", choices=["auto", "cuda", "triton", "torch"], default="auto",
                   help="kernel of the fused loss on CUDA: cuda (Hopper's one-read kernel), triton, torch "
                   "(reference math); auto = the first of these that runs here")
    g.add_argument("--triton-adamw", type=int, default=None,
                   help="1 = gradient clip and AdamW update in one Triton pass (default on CUDA when "
                   "Triton is installed); 0 = PyTorch's fused AdamW")
    g.add_argument("--compile-mode", default="default",
                   help="torch.compile mode (default, max-autotune-no-cudagraphs, ...)")
    g.add_argument("--sdpa", choices=["auto", "flash", "cudnn", "efficient"], default="auto",
                   help="kernel behind --attention flash (auto = PyTorch's choice)")
    g.add_argument("--dtype", choices=["bf16", "fp32"], default=None,
                   help="autocast dtype (default bf16 on CUDA, fp32 on CPU)")
    g.add_argument("--save-dtype", choices=["bf16", "fp32"], default="bf16",
                   help="model_*.bin precision: bf16 (v5, for llm.c's default build) or fp32 (v3)")
    g.add_argument("--memory-limit-gb", type=float, help="cap this process's GPU memory (emulate a "
                   "24 GB A10G on a bigger GPU)")
    g.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    g.add_argument("--seed", type=int, default=42, help="seed for a fresh model's init (default 42)")
    g.add_argument("--peak-tflops", type=float, help="GPU bf16 peak for the MFU column")
    g = p.add_argument_group("cost estimate")
    g.add_argument("--estimate", action="store_true", help="time %d steps and project hours and "
                   "dollars for the whole run (-x steps), then exit" % est.ESTIMATE_STEPS)
    g.add_argument("--price-per-hour", type=float, default=est.G5_XLARGE_PRICE,
                   help="instance price for --estimate (default %.3f, g5.xlarge on-demand)"
                   % est.G5_XLARGE_PRICE)
    g.add_argument("--quiet", action="store_true", help="print only evaluations and a summary")
    return p


def _join_values(parser: argparse.ArgumentParser, argv: List[str]) -> List[str]:
    """`-x -1` -> `-x=-1`: with options like -1d, argparse would read a value `-1` as an option."""
    takes_value = {s for a in parser._actions if a.nargs is None and a.option_strings
                   for s in a.option_strings}
    out, i = [], 0
    while i < len(argv):
        if argv[i] in takes_value and i + 1 < len(argv):
            out.append("%s=%s" % (argv[i], argv[i + 1]))
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def parse_args(argv: Optional[List[str]] = None) -> "TrainConfig":
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_join_values(parser, argv))
    merged = dict(DEFAULTS)
    if args.preset:
        merged.update(PRESETS[args.preset])
    for key in DEFAULTS:
        if getattr(args, key) is None:
            setattr(args, key, merged[key])
    if args.i is None:
        parser.error("-i (train shard glob) is required")
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})



@dataclass(frozen=True)
class TrainConfig:
    """Every flag of `pipeline train` (`pipeline train --help` says what each does)."""
    # data and files
    i: str
    j: Optional[str] = None
    ih: Optional[str] = None
    e: str = "d12"
    o: Optional[str] = None
    n: int = 0
    nk: int = 0
    y: int = 0
    sync_to: Optional[str] = None
    # batch and schedule
    b: int = 4
    t: int = 1024
    d: int = -1
    x: int = -1
    es: int = -1
    ss: int = 0
    k: str = "cosine"
    l: float = 3e-4  # noqa: E741 - llm.c's flag name
    u: int = 0
    q: float = 1.0
    c: float = 0.0
    # evaluation
    v: int = 20
    m: int = 20
    s: int = 20
    g: int = 64
    h: int = 0
    # model and memory
    ld: Optional[int] = None
    lc: Optional[int] = None
    lh: Optional[int] = None
    r: int = 0
    z: int = 0
    a: int = 0
    f: int = 1
    w: int = 1
    # PyTorch and the fast path's plan (None: the plan's default for the device)
    reference: bool = False
    attention: str = "flash"
    compile: Optional[int] = None
    cuda_graphs: Optional[int] = None
    cublaslt: Optional[int] = None
    cudnn_attention: Optional[int] = None
    cudnn_tune: int = 1
    fused_loss: Optional[int] = None
    loss_kernel: str = "auto"
    triton_adamw: Optional[int] = None
    bf16_mirrors: Optional[int] = None
    compile_mode: str = "default"
    sdpa: str = "auto"
    dtype: Optional[str] = None
    save_dtype: str = "bf16"
    memory_limit_gb: Optional[float] = None
    device: Optional[str] = None
    seed: int = 42
    peak_tflops: Optional[float] = None
    # cost estimate and output
    estimate: bool = False
    price_per_hour: float = est.G5_XLARGE_PRICE
    quiet: bool = False
    preset: Optional[str] = None

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, log_dir: str) -> str:
        """Write train_config.json into log_dir; returns its path."""
        os.makedirs(log_dir, exist_ok=True)
        path = os.path.join(log_dir, "train_config.json")
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
        return path
