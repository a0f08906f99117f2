"""`pipeline train`: GPT-2 pretraining on llm.c shards with train_gpt2cu's flags, files and logs.

    pipeline train --preset course -i "out/shards/*_train_*.bin" -j "out/shards/*_val_*.bin" -o log124M
    torchrun --nproc_per_node=4 -m pipeline.gpt.train ...        (multi-GPU: DDP, rank 0 logs/writes)

The loop follows train_gpt2cu step for step: at the top of step s it evaluates (val loss every -v,
HellaSwag every -v when -h 1, a sample every -s), writes a checkpoint every -n (model_%08d.bin in
llm.c's format, state_%08d_%05d.bin, DONE_%08d), then does one optimizer step of -d tokens (grad
accumulation over -b x -t micro-batches), AdamW(0.9, 0.95, eps 1e-8, decay on 2-D weights only),
global grad-norm clip 1.0, and the -k schedule. Run `pipeline train --help` for every flag.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import math
import os
import re
import sys
import time
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.gpt import checkpoint as ckpt
from pipeline.gpt import estimate as est
from pipeline.gpt import hellaswag
from pipeline.gpt.adamw import AdamW
from pipeline.gpt.data import DataLoader
from pipeline.gpt.logs import Logger, write_run_parameters
from pipeline.gpt.model import DEPTH_SHAPES, GPT, GPTConfig, compile_model
from pipeline.gpt.schedule import SCHEDULERS, LRScheduler
from pipeline.gpt.step import train_step

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
    g = p.add_argument_group("PyTorch")
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


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
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
    return args


# ----------------------------------------------------------------------------- setup

class Run:
    """Device, distributed and precision settings of this process."""

    def __init__(self, args: argparse.Namespace):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.ddp = self.world > 1
        if args.device:
            self.device = torch.device(args.device)
        elif torch.cuda.is_available():
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        self.cuda = self.device.type == "cuda"
        if self.ddp:
            import torch.distributed as dist
            if self.cuda:
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend="nccl" if self.cuda else "gloo")
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = bool(args.f)
            torch.backends.cudnn.allow_tf32 = bool(args.f)
            if args.sdpa != "auto":  # leave only the chosen fused kernel (math stays as fallback)
                torch.backends.cuda.enable_flash_sdp(args.sdpa == "flash")
                torch.backends.cuda.enable_cudnn_sdp(args.sdpa == "cudnn")
                torch.backends.cuda.enable_mem_efficient_sdp(args.sdpa == "efficient")
            if args.memory_limit_gb:
                total = torch.cuda.get_device_properties(self.device).total_memory
                # decimal GB, as GPUs are sold: "24 GB" A10G = 24e9 bytes = 22.4 GiB
                frac = min(1.0, args.memory_limit_gb * 1e9 / total)
                torch.cuda.set_per_process_memory_fraction(frac, self.device)
        dtype = args.dtype or ("bf16" if self.cuda else "fp32")
        self.amp_dtype = torch.bfloat16 if dtype == "bf16" else None
        self.compile = bool(args.compile if args.compile is not None else self.cuda)
        self.master = self.rank == 0

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def print(self, *a) -> None:
        if self.master:
            print(*a, flush=True)

    def all_mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.ddp:
            import torch.distributed as dist
            dist.all_reduce(value, op=dist.ReduceOp.AVG)
        return value

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.ddp:
            import torch.distributed as dist
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def barrier(self) -> None:
        if self.ddp:
            import torch.distributed as dist
            dist.barrier()


def latest_checkpoint(log_dir: Optional[str]) -> int:
    """Highest step with a DONE_%08d marker in log_dir (llm.c's find_max_step), or -1."""
    if not log_dir:
        return -1
    steps = [int(m.group(1)) for f in glob.glob(os.path.join(log_dir, "DONE_*"))
             for m in [re.search(r"DONE_(\d{8})$", f)] if m]
    return max(steps, default=-1)


def fresh_config(args: argparse.Namespace) -> GPTConfig:
    block = max(1024, args.t)
    if args.e.startswith("d") and args.e[1:].isdigit():
        depth = args.ld or int(args.e[1:])
    else:
        depth = args.ld
    channels, heads = DEPTH_SHAPES.get(depth, (None, None))
    channels, heads = args.lc or channels, args.lh or heads
    if not channels or not heads:
        raise SystemExit("model shape: depth %d has no default width; pass -1c CHANNELS and -1h HEADS"
                         % depth)
    if channels % heads:
        raise SystemExit("model shape: channels (%d) must be divisible by heads (%d)" % (channels, heads))
    return GPTConfig(block_size=block, n_layer=depth, n_head=heads, n_embd=channels)


def build_model(args, run: Run, resume_step: int) -> GPT:
    attention = args.attention
    if resume_step >= 0:
        path = os.path.join(args.o, "model_%08d.bin" % resume_step)
        model = ckpt.load_model(path, attention=attention, recompute=bool(args.r))
    elif re.fullmatch(r"d\d+", args.e):
        torch.manual_seed(args.seed)
        model = GPT(fresh_config(args), attention=attention, recompute=bool(args.r))
    else:
        config, _ = ckpt.read_model_header(args.e)
        ckpt.check_shape(config, args.e, args.ld, args.lh, args.lc)
        model = ckpt.load_model(args.e, attention=attention, recompute=bool(args.r))
    if args.t > model.config.block_size:
        raise SystemExit("-t %d is longer than the model's context (maxT=%d)"
                         % (args.t, model.config.block_size))
    return model.to(run.device)


def make_optimizer(model: GPT, args, run: Run) -> torch.optim.Optimizer:
    """llm.c's AdamW (betas 0.9/0.95, eps 1e-8, decay on 2-D tensors): `pipeline.gpt.adamw.AdamW`
    (PyTorch's, with the clip and update in one Triton pass on CUDA); ZeRO-1 with -z 1 under DDP."""
    # llm.c decays the 2-D tensors (embeddings and matmul weights), never biases or layernorms.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.c}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = dict(lr=args.l, betas=(0.9, 0.95), eps=1e-8)
    if run.cuda:
        kwargs["fused"] = True  # where Triton is missing: one kernel for the update, not one per tensor
    if args.z >= 1 and run.ddp:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, **kwargs)
    return AdamW(groups, **kwargs)


def to_device(batch, run: Run):
    x, y = (torch.from_numpy(a) for a in batch)
    if run.cuda:  # pinned host memory lets the copy overlap with the previous step's kernels
        x, y = x.pin_memory(), y.pin_memory()
    return x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)


def oom_message(args, run: Run) -> str:
    peak = torch.cuda.max_memory_allocated(run.device) / 2 ** 30 if run.cuda else 0.0
    hints = ["lower -b (the micro-batch; -d stays the same through gradient accumulation)"]
    if not args.r:
        hints.append("enable -r 1 (recompute activations in backward)")
    if args.attention == "eager":
        hints.append("use --attention flash (no T x T attention matrix)")
    return ("CUDA out of memory at -b %d -t %d (peak %.1f GiB allocated%s). Try: %s."
            % (args.b, args.t, peak, ", limit %.0f GB" % args.memory_limit_gb
               if args.memory_limit_gb else "", "; or ".join(hints)))


class BatchSource:
    """Endless (x, y) device batches from a DataLoader; with overfit (-a 1) the first batch forever.

    `prefetch()` reads and uploads the next batch ahead of time: the trainer calls it right after
    queueing a step on the GPU and before waiting for the step's loss, so that the host work
    (reading the shard, pinning, the copy) overlaps the GPU's instead of leaving it idle between
    steps. `state_dict()` is the loader's position before any prefetched batch, which is what a
    checkpoint must hold for an exact resume.
    """

    def __init__(self, loader: DataLoader, run: Run, overfit: bool = False):
        self.loader, self.run, self.overfit = loader, run, overfit
        self.first = None
        self.pending = None
        self.pending_state = None

    def __iter__(self):
        return self

    def _fetch(self):
        if self.overfit and self.first is not None:
            return self.first
        batch = to_device(self.loader.next_batch(), self.run)
        if self.overfit:
            self.first = batch
        return batch

    def __next__(self):
        if self.pending is not None:
            batch, self.pending, self.pending_state = self.pending, None, None
            return batch
        return self._fetch()

    def prefetch(self) -> None:
        if self.pending is None:
            self.pending_state = self.loader.state_dict()
            self.pending = self._fetch()

    def state_dict(self) -> dict:
        return self.pending_state if self.pending is not None else self.loader.state_dict()


def batch_source(loader: DataLoader, run: Run, overfit: bool = False) -> BatchSource:
    return BatchSource(loader, run, overfit)


def choose_bf16_mirrors(args, run: Run, raw: GPT, optimizer, accum: int) -> int:
    """`--bf16-mirrors`: attach the optimizer's bf16 weight mirrors where they apply (cuBLASLt
    matmuls, one micro-batch per step, one process, the trainer's AdamW); returns how many. The
    default stays quiet where they do not apply; an explicit 1 says why."""
    wanted = args.bf16_mirrors
    if wanted is None:
        wanted = int(run.cuda)
    if not wanted:
        return 0
    why = None
    if not raw.tuned_head:
        why = "the cuBLASLt matmuls (--cublaslt) that read them are off"
    elif accum != 1:
        why = "gradient accumulation (-d > -b x -t x GPUs) would add gradients up in bf16"
    elif run.ddp:
        why = "DDP all-reduces parameter gradients, not a mirror's"
    elif not isinstance(optimizer, AdamW):
        why = "the optimizer is not the trainer's AdamW"
    if why is not None:
        if args.bf16_mirrors:
            run.print("--bf16-mirrors 1 ignored: %s" % why)
        return 0
    # The classifier's weight gradient is scaled by 1/(B*T) after its matmul: exact in bf16 only
    # for a power of two, so only then does the tied embedding get a mirror too.
    rows = args.b * args.t
    tied = [raw.lm_head] if raw.fused_loss is not False and rows & (rows - 1) == 0 else []
    return optimizer.attach_bf16_mirrors(*raw.bf16_mirror_layers(compiled=run.compile), tied_modules=tied)


def make_step_fn(args, run: Run, model, raw: GPT, optimizer, accum: int):
    """step_fn(batches, lr) -> (loss, norm): the ordinary step, or its CUDA-graph replay (after
    attaching bf16 weight mirrors where they apply: `choose_bf16_mirrors`)."""
    choose_bf16_mirrors(args, run, raw, optimizer, accum)
    graphs = args.cuda_graphs
    if graphs is None:
        graphs = int(run.cuda and not run.ddp and not args.r)
    if graphs and not run.cuda:
        raise SystemExit("--cuda-graphs 1 needs a CUDA device")
    if graphs and (run.ddp or args.r):
        raise SystemExit("--cuda-graphs 1 works on one GPU without -r 1 (recompute); use --cuda-graphs 0")
    if graphs:
        from pipeline.gpt.graphed import GraphedTrainStep
        return GraphedTrainStep(model, raw, optimizer, run, accum, (args.b, args.t))
    return lambda batches, lr: train_step(model, raw, optimizer, batches, accum, run, lr)


class StepReadback:
    """Reads each step's loss and norm one step late, so that the GPU never waits for Python.

    Reading a step's loss right after queueing it leaves the GPU idle from the moment the step
    ends until the host has logged it and queued the next one (about 0.5 ms per step for GPT-2
    124M on an H100). Instead the (loss, norm) pair is copied to pinned host memory behind the
    step, and `push` returns the *previous* step's values once the next step is already queued.
    `drain` reads the last queued step (before evaluation, checkpoints and the end of the run,
    so logs keep llm.c's order).

    Step times come from CUDA events, not from when the host happens to look: a step lasts from
    the end of the step queued before it (or, for the first step after a drain, from its own
    start) to its own end, in GPU time. Host clocks would misreport whenever the host is held up
    while queueing, e.g. replaying one CUDA graph several times in a row (gradient accumulation)
    waits for the previous replay. Off CUDA, steps run synchronously: host time.

    Use: `begin()`, queue the step, `push(...)`; `drain()` when the queue must be empty.
    """

    def __init__(self, run: Run):
        self.run = run
        self.pending = None
        self.previous_end = None  # end event of the last pushed step, while steps run back to back
        self.start = None
        self.buffers = [torch.empty(2, pin_memory=run.cuda) for _ in range(2)]
        self.count = 0

    def _event(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def begin(self) -> None:
        """Call right before queueing a step."""
        self.start = self._event() if self.run.cuda else time.perf_counter()

    def push(self, step: int, lr: float, loss: torch.Tensor, norm: torch.Tensor):
        """Queue this step's read-back; returns the previous step's (step, lr, loss, norm,
        seconds), or None."""
        stats = torch.stack([loss.float(), norm.float()])
        host = self.buffers[self.count % 2]
        self.count += 1
        if self.run.cuda:
            host.copy_(stats, non_blocking=True)
            end = self._event()
            since = self.previous_end if self.previous_end is not None else self.start
            self.previous_end = end
            entry = (step, lr, host, since, end)
        else:
            host.copy_(stats)
            entry = (step, lr, host, None, time.perf_counter() - self.start)
        previous = self._read()
        self.pending = entry
        return previous

    def drain(self):
        """(step, lr, loss, norm, seconds) of the queued step, or None; the next step's time
        then counts from its own start."""
        self.previous_end = None
        return self._read()

    def _read(self):
        if self.pending is None:
            return None
        step, lr, host, since, end = self.pending
        self.pending = None
        if since is not None:
            end.synchronize()
            seconds = since.elapsed_time(end) / 1000.0
        else:
            seconds = end
        loss, norm = host.tolist()
        return step, lr, loss, norm, seconds


# ----------------------------------------------------------------------------- evaluation

def val_loss(model, loader: DataLoader, batches: int, run: Run) -> float:
    model.eval()
    loader.reset()
    total = torch.zeros((), device=run.device)
    with torch.no_grad():
        for _ in range(batches):
            x, y = to_device(loader.next_batch(), run)
            with run.autocast():
                _, loss = model(x, y, return_logits=False)
            total += loss.float()
    model.train()
    return run.all_mean(total / batches).item()


def sample(model: GPT, genT: int, run: Run) -> str:
    """llm.c-style sanity sample: genT tokens from <|endoftext|>, fixed seed 1337, full softmax."""
    gen = torch.Generator(device=run.device).manual_seed(1337)
    tokens = torch.full((1, 1), 50256, dtype=torch.long, device=run.device)
    model.eval()
    with torch.no_grad():
        for _ in range(genT - 1):
            with run.autocast():
                logits, _ = model(tokens[:, -model.config.block_size:])
            probs = F.softmax(logits[:, -1].float(), dim=-1)
            tokens = torch.cat([tokens, torch.multinomial(probs, 1, generator=gen)], dim=1)
    model.train()
    ids = tokens[0, 1:].tolist()
    try:
        from pipeline.bpe import get_encoding
        return get_encoding().decode(ids)
    except Exception:  # BPE ranks missing from a stripped install: show ids, as llm.c does without its tokenizer
        return " ".join(map(str, ids))


# ----------------------------------------------------------------------------- main loop

def enable_cudnn_attention(raw: GPT, run: "Run", batch: int, seq_len: int) -> bool:
    """Route `raw`'s bf16 training attention through the cuDNN frontend if it builds and passes its
    self-check at this micro-batch shape; otherwise keep SDPA and say why."""
    from pipeline.gpt import cudnn_attention
    cfg = raw.config
    ok = cudnn_attention.available(run.device, batch, seq_len, cfg.n_head, cfg.n_embd // cfg.n_head)
    if not ok:
        run.print("cuDNN frontend attention off (PyTorch SDPA instead): %s"
                  % cudnn_attention.unavailable_reason(run.device.index))
    raw.set_cudnn_frontend(ok)
    return ok


def choose_cudnn_attention(args, run: "Run", raw: GPT) -> bool:
    """`--cudnn-attention`: its default (on for compute capability >= 9 with --sdpa auto), its
    preconditions, then `enable_cudnn_attention`. An explicit 1 that this run cannot honour says why."""
    wanted = args.cudnn_attention
    if wanted is None:
        wanted = int(args.sdpa == "auto" and run.cuda and torch.cuda.get_device_capability(run.device)[0] >= 9)
    if not wanted:
        return False
    if not (args.attention == "flash" and run.cuda and run.amp_dtype == torch.bfloat16):
        if args.cudnn_attention:
            run.print("--cudnn-attention 1 ignored: it needs --attention flash on a CUDA device with bf16 "
                      "autocast")
        return False
    return enable_cudnn_attention(raw, run, args.b, args.t)


# Fast-path set-up (torch.compile, CUDA-graph capture, cuBLASLt algorithm timing, cuDNN plan
# building) costs every process tens of seconds, and what it saves grows with the matmuls. For a
# small model (fewer transformer-block parameters than SMALL_MODEL_PARAMS) on a short run (less
# training work than SHORT_RUN_FLOPS = 6 x parameters x tokens, about 25 s of an H100 at the rate
# small models reach) it cannot pay back, so the fast paths' defaults turn off; explicit flags win.
# GPT-2 124M (85M block parameters) always keeps them. Measured: bench/bench_startup.py.
SMALL_MODEL_PARAMS = 10_000_000
SHORT_RUN_FLOPS = 1e16
FAST_SETUP_FLAGS = ("compile", "cuda_graphs", "cublaslt", "cudnn_attention")


def skip_fast_setup(args: argparse.Namespace, run: Run, config: GPTConfig, tokens: int) -> bool:
    """Turn off the fast paths' defaults for a small model's short CUDA run (see SHORT_RUN_FLOPS)."""
    block_params = 12 * config.n_layer * config.n_embd ** 2
    flops = 6 * config.num_params() * tokens
    if not run.cuda or block_params >= SMALL_MODEL_PARAMS or flops >= SHORT_RUN_FLOPS:
        return False
    skipped = [name for name in FAST_SETUP_FLAGS if getattr(args, name) is None]
    for name in skipped:
        setattr(args, name, 0)
    if args.compile == 0:
        run.compile = False
    if skipped:
        run.print("small model, short run (%.1e FLOPs): skipping the set-up of %s (pass 1 to force)"
                  % (flops, ", ".join("--" + n.replace("_", "-") for n in skipped)))
    return bool(skipped)


def train(args: argparse.Namespace) -> int:
    run = Run(args)
    if args.y and not args.o:
        raise SystemExit("-y 1 needs -o")
    tokens_per_micro = args.b * args.t * run.world
    total_batch = args.d if args.d > 0 else tokens_per_micro
    if total_batch % tokens_per_micro:
        raise SystemExit("-d %d is not a multiple of -b x -t x GPUs = %d" % (total_batch, tokens_per_micro))
    accum = total_batch // tokens_per_micro

    resume_step = latest_checkpoint(args.o) if args.y == 1 else -1
    model = build_model(args, run, resume_step)
    train_pattern = args.j if args.a and args.j else args.i  # llm.c overfits a val batch with -a 1
    train_loader = DataLoader(train_pattern, args.b, args.t, run.rank, run.world, shuffle=True)
    val_loader = DataLoader(args.j, args.b, args.t, run.rank, run.world, shuffle=False,
                            what="val") if args.j else None
    steps = args.x if args.x > 0 else train_loader.num_tokens // total_batch
    val_batches = args.m if args.m > 0 else (val_loader.num_tokens // tokens_per_micro if val_loader
                                             else 0)
    eval_examples = None
    if args.h and not args.estimate:
        if not args.ih:
            run.print("HellaSwag: -h 1 but no eval file; pass -ih hellaswag_val.bin (skipping)")
        else:
            eval_examples = hellaswag.read_eval_file(args.ih)

    optimizer = make_optimizer(model, args, run)
    schedule = LRScheduler(args.k, args.l, args.u, steps, args.q)
    step = args.ss
    if resume_step >= 0:
        state_path = os.path.join(args.o, "state_%08d_%05d.bin" % (resume_step, run.rank))
        extra = ckpt.load_state(state_path, model, optimizer)
        train_loader.load_state_dict(extra["loader"])
        step = extra["step"]
        run.print("resuming from %s at step %d" % (state_path, step))

    raw = model
    run_steps = (steps if args.estimate or args.es < 0 else min(args.es, steps)) - step
    skip_fast_setup(args, run, raw.config, total_batch * max(0, run_steps))
    # Default: on for Hopper-class GPUs (compute capability >= 9, where it was measured; llm.c also
    # enables its GELU epilogues only there), off with -r 1: torch.compile's recompute keeps the
    # outputs of opaque ops (the MLP's 4C-wide activations) instead of recomputing them, which
    # undoes most of the memory -r 1 is for. `--cublaslt 1` turns it on anywhere it self-checks.
    use_lt = args.cublaslt
    if use_lt is None:
        use_lt = int(not args.r and run.cuda and torch.cuda.get_device_capability(run.device)[0] >= 9)
    if use_lt and run.cuda and run.amp_dtype == torch.bfloat16:
        from pipeline.gpt import cublaslt
        ok = cublaslt.available(run.device)
        if not ok:
            run.print("cuBLASLt matmuls off: %s" % (cublaslt.unavailable_reason(run.device.index)
                                                   or "self-check failed"))
        raw.set_cublaslt(ok)
    choose_cudnn_attention(args, run, raw)
    if run.compile:
        model = compile_model(model, mode=args.compile_mode)
    if run.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[run.device.index] if run.cuda else None)
    step_fn = make_step_fn(args, run, model, raw, optimizer, accum)

    n_params = raw.config.num_params()
    flops_per_step = (6 * n_params + 6 * raw.config.n_layer * raw.config.n_embd * args.t) * total_batch
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items()
                                     if run.cuda and k in torch.cuda.get_device_name(run.device)), None)
    params = {"train data pattern": args.i, "val data pattern": args.j, "output log dir": args.o,
              "init": "resume step %d" % resume_step if resume_step >= 0 else args.e,
              "micro batch size B": args.b, "sequence length T": args.t, "total batch size": total_batch,
              "grad_accum_steps": accum, "num_processes": run.world, "LR scheduler": args.k,
              "learning rate": args.l, "warmup iterations": args.u, "final LR fraction": args.q,
              "weight decay": args.c, "max_steps": steps, "early stop step": args.es,
              "schedule start step": args.ss, "val_loss_every": args.v, "val_max_steps": val_batches,
              "sample_every": args.s, "genT": args.g, "hellaswag": int(eval_examples is not None),
              "checkpoint_every": args.n, "recompute": args.r, "attention": args.attention,
              "compile": int(run.compile), "autocast": str(run.amp_dtype), "device": str(run.device),
              "cuda graphs": int(hasattr(step_fn, "graphs")),
              "cublaslt": int(any(b.mlp.fused for b in raw.transformer.h)),
              "cudnn frontend attention": int(any(b.attn.cudnn_frontend for b in raw.transformer.h)),
              "bf16 weight mirrors": optimizer.num_mirrors() if isinstance(optimizer, AdamW) else 0,
              "num_layers L": raw.config.n_layer, "num_heads NH": raw.config.n_head,
              "channels C": raw.config.n_embd, "max_seq_len": raw.config.block_size,
              "num_parameters": n_params, "train tokens": train_loader.num_tokens, "preset": args.preset}
    if run.master:
        run.print("\n".join("| %-22s | %s" % kv for kv in params.items()))
        if args.o and not args.estimate:
            write_run_parameters(args.o, params)
    logger = Logger(None if args.estimate else args.o, run.rank, resume=resume_step >= 0)

    if args.estimate:
        return estimate_run(args, run, step_fn, optimizer, schedule, train_loader, accum, steps,
                            total_batch)
    last = steps if args.es < 0 else min(args.es, steps)
    resuming = resume_step >= 0
    step_times = []
    batches = batch_source(train_loader, run, overfit=bool(args.a))

    def report(done) -> bool:
        if done is None:
            return True
        s, lr, loss_val, norm_val, dt = done
        step_times.append(dt)
        logger.log_train(s, loss_val, lr, norm_val)
        if not args.quiet:
            mfu = " | %.1f%% MFU" % (100 * flops_per_step / dt / (peak * 1e12)) if peak else ""
            run.print("step %4d/%d | loss %.6f | norm %.4f | lr %.2e | %.2f ms%s | %.0f tok/s"
                      % (s + 1, steps, loss_val, norm_val, lr, dt * 1000, mfu, total_batch / dt))
        if not math.isfinite(loss_val):
            run.print("loss is %s at step %d: stopping (lower -l, or check the data)" % (loss_val, s))
            return False
        return True

    readback = StepReadback(run)
    try:
        while True:
            last_step = step >= last
            every_v = args.v > 0 and step % args.v == 0  # -v 0: evaluate only at the end
            do_val = bool(val_loader and val_batches and (every_v or last_step))
            do_eval = eval_examples is not None and ((step > 0 and every_v) or last_step)
            do_sample = run.master and args.s > 0 and ((step > 0 and step % args.s == 0) or last_step)
            do_ckpt = (args.n > 0 and bool(args.o) and not resuming and
                       ((step > 0 and step % args.n == 0) or last_step))
            if (do_val or do_eval or do_sample or do_ckpt or last_step) and not report(readback.drain()):
                return 4
            if do_val:
                vl = val_loss(model, val_loader, val_batches, run)
                run.print("s:%d val loss %.6f" % (step, vl))
                logger.log_val(step, vl)
            if do_eval:
                r = hellaswag.evaluate(raw, eval_examples, args.b, args.t, run.device, run.rank,
                                       run.world, run.autocast)
                correct = run.all_sum(torch.tensor(float(r["correct"]), device=run.device)).item()
                acc = correct / len(eval_examples)
                run.print("HellaSwag: %d/%d = %f" % (correct, len(eval_examples), acc))
                logger.log_eval(step, acc)
            if do_sample:
                run.print("generating:\n---\n%s\n---" % sample(raw, args.g, run))
            if do_ckpt:
                write_checkpoint(args, run, raw, optimizer, batches, step)
            resuming = False
            if last_step:
                break

            lr = schedule(step)
            readback.begin()
            loss_sum, norm = step_fn(batches, lr)
            previous = readback.push(step, lr, run.all_mean(loss_sum), norm)
            batches.prefetch()  # host work for the next step while the GPU runs this one
            if not report(previous):  # the step before this one: this one is queued already
                return 4
            step += 1
    except torch.cuda.OutOfMemoryError:
        print(oom_message(args, run), file=sys.stderr)
        return 3
    if len(step_times) > 1:
        run.print("total average iteration time: %f ms" % (1000 * np.mean(step_times[1:])))
    if run.ddp:
        import torch.distributed as dist
        dist.destroy_process_group()
    return 0


def write_checkpoint(args, run: Run, model: GPT, optimizer, loader, step: int) -> None:
    """model_%08d.bin (rank 0), state_%08d_%05d.bin (every rank), then DONE_%08d: llm.c's trio."""
    if run.master:
        ckpt.save_model(model, os.path.join(args.o, "model_%08d.bin" % step), dtype=args.save_dtype)
    extra = {"loader": loader.state_dict(), "shuffle": True}
    if hasattr(optimizer, "consolidate_state_dict"):
        raise SystemExit("checkpointing with -z 1 is not supported yet; use -z 0")
    ckpt.save_state(os.path.join(args.o, "state_%08d_%05d.bin" % (step, run.rank)), model, optimizer,
                    step, extra, run.rank, run.world)
    run.barrier()
    if run.master:
        open(os.path.join(args.o, "DONE_%08d" % step), "w").close()
        run.print("wrote checkpoint at step %d" % step)
        if args.nk > 0 and args.n > 0:
            old = step - args.nk * args.n
            if old > 0:
                for name in ("model_%08d.bin" % old, "DONE_%08d" % old):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(args.o, name))
    if args.nk > 0 and args.n > 0 and step - args.nk * args.n > 0:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(args.o, "state_%08d_%05d.bin" % (step - args.nk * args.n, run.rank)))


def estimate_run(args, run: Run, step_fn, optimizer, schedule, loader, accum, steps,
                 total_batch) -> int:
    """Time ESTIMATE_STEPS real optimizer steps and project the full run."""
    times = []
    if run.cuda:
        torch.cuda.reset_peak_memory_stats(run.device)
    batches = batch_source(loader, run)
    readback = StepReadback(run)  # as in training: each step timed to its completion

    def record(done):
        if done is not None:
            times.append(done[4])
            run.print("estimate step %2d: %.1f ms" % (done[0], done[4] * 1000))
    try:
        for step in range(est.ESTIMATE_STEPS):
            lr = schedule(step)
            readback.begin()
            loss, norm = step_fn(batches, lr)
            previous = readback.push(step, lr, loss, norm)
            batches.prefetch()
            record(previous)
        record(readback.drain())
    except torch.cuda.OutOfMemoryError:
        print(oom_message(args, run), file=sys.stderr)
        return 3
    peak_gb = torch.cuda.max_memory_allocated(run.device) / 2 ** 30 if run.cuda else 0.0
    e = est.estimate(times, steps, args.price_per_hour, total_batch, peak_gb)
    run.print(est.format_estimate(e))
    if run.master and args.o:
        os.makedirs(args.o, exist_ok=True)
        with open(os.path.join(args.o, "estimate.json"), "w") as f:
            json.dump(dict(e, step_seconds=times), f, indent=2)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        if args.sync_to and int(os.environ.get("RANK", "0")) == 0:  # rank 0 writes the logs
            from pipeline.gpt.sync import RunSync
            if not args.o:
                raise ValueError("--sync-to needs -o (the directory to upload)")
            with RunSync(args.o, args.sync_to):
                return train(args)
        return train(args)
    except (ckpt.CheckpointError, FileNotFoundError, ValueError) as e:
        print("pipeline train: error: %s" % e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
