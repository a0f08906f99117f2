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

from pipeline.gpt import checkpoint as ckpt
from pipeline.gpt import estimate as est
from pipeline.gpt import hellaswag
from pipeline.gpt.adamw import AdamW
from pipeline.gpt.data import DataLoader
from pipeline.gpt.fast.model import FastGPT, compile_model
from pipeline.gpt.fast.plan import FastPlan, resolve_plan
from pipeline.gpt.logs import Logger, write_run_parameters
from pipeline.gpt.model import DEPTH_SHAPES, GPT, GPTConfig
from pipeline.gpt.schedule import LRScheduler
from pipeline.gpt.step import train_step
from pipeline.gpt.train_config import DEFAULTS, PRESETS, TrainConfig, build_parser, parse_args  # noqa: F401

# bf16 dense tensor-core peak (TFLOP/s) for the MFU column.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "A10G": 70.0, "L4": 121.0}

# ----------------------------------------------------------------------------- setup

class Run:
    """Device, distributed and precision settings of this process."""

    def __init__(self, args: TrainConfig):
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


def fresh_config(args: TrainConfig) -> GPTConfig:
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


def build_model(args: TrainConfig, run: Run, resume_step: int) -> GPT:
    """The reference model (pipeline/gpt/model.py): fresh, from -e, or from the checkpoint to resume."""
    if resume_step >= 0:
        model = ckpt.load_model(os.path.join(args.o, "model_%08d.bin" % resume_step))
    elif re.fullmatch(r"d\d+", args.e):
        torch.manual_seed(args.seed)
        model = GPT(fresh_config(args))
    else:
        config, _ = ckpt.read_model_header(args.e)
        ckpt.check_shape(config, args.e, args.ld, args.lh, args.lc)
        model = ckpt.load_model(args.e)
    if args.t > model.config.block_size:
        raise SystemExit("-t %d is longer than the model's context (maxT=%d)"
                         % (args.t, model.config.block_size))
    return model.to(run.device)


def make_optimizer(model: GPT, args: TrainConfig, run: Run, plan: FastPlan) -> torch.optim.Optimizer:
    """llm.c's AdamW (betas 0.9/0.95, eps 1e-8, decay on 2-D tensors): `pipeline.gpt.adamw.AdamW`
    (PyTorch's, with the clip and update in one Triton pass where the plan says "triton"); ZeRO-1
    with -z 1 under DDP."""
    # llm.c decays the 2-D tensors (embeddings and matmul weights), never biases or layernorms.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.c}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = dict(lr=args.l, betas=(0.9, 0.95), eps=1e-8)
    if plan.adamw in ("triton", "torch-fused"):  # PyTorch's fused kernel wherever Triton's does not run
        kwargs["fused"] = True
    if args.z >= 1 and run.ddp:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, **kwargs)
    return AdamW(groups, triton=plan.adamw == "triton", **kwargs)


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


def attach_bf16_mirrors(args: TrainConfig, fast: FastGPT, optimizer) -> int:
    """The optimizer's bf16 weight mirrors of the cuBLASLt matmuls' weights (plan.bf16_mirrors);
    returns how many modules got one."""
    if not fast.plan.bf16_mirrors or not isinstance(optimizer, AdamW):
        return 0
    # The classifier's weight gradient is scaled by 1/(B*T) after its matmul: exact in bf16 only
    # for a power of two, so only then does the tied embedding get a mirror too.
    rows = args.b * args.t
    tied = [fast.model.lm_head] if fast.plan.fused_loss and rows & (rows - 1) == 0 else []
    return optimizer.attach_bf16_mirrors(*fast.bf16_mirror_layers(), tied_modules=tied)


def make_step_fn(args: TrainConfig, run: Run, model, raw: GPT, optimizer, accum: int, plan: FastPlan):
    """step_fn(batches, lr) -> (loss, norm): the ordinary step, or its CUDA-graph replay (plan)."""
    if plan.cuda_graphs:
        from pipeline.gpt.graphed import GraphedTrainStep
        return GraphedTrainStep(model, raw, optimizer, run, accum, (args.b, args.t))
    return lambda batches, lr: train_step(model, raw, optimizer, batches, accum, run, lr)


def build_trainer(args: TrainConfig, run: Run, raw: GPT, accum: int, run_tokens: int, restore=None):
    """Resolve the plan and apply it to the reference model `raw`: (plan, notes, model to call,
    optimizer, step_fn). Shared by `train` and bench/bench_train.py. `restore(optimizer)`, if
    given, loads a checkpoint's state before the plan is applied (bf16 mirrors copy the weights)."""
    plan, notes = resolve_plan(args, run.device, raw.config, accum, run.ddp, run_tokens,
                               bf16=run.amp_dtype == torch.bfloat16)
    optimizer = make_optimizer(raw, args, run, plan)
    if restore is not None:
        restore(optimizer)
    model = raw
    if not plan.reference:
        model = FastGPT(raw, plan)
        attach_bf16_mirrors(args, model, optimizer)
        if plan.compile:
            model = compile_model(model, mode=plan.compile_mode)
    if run.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[run.device.index] if run.cuda else None)
    return plan, notes, model, optimizer, make_step_fn(args, run, model, raw, optimizer, accum, plan)


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
    """llm.c-style sanity sample: genT tokens from <|endoftext|>, fixed seed 1337, full softmax,
    through the decode engine's sampling loop (KV cache; plain PyTorch ops, no graph capture
    in the middle of training)."""
    from pipeline.gpt.engine import EOT_TOKEN, Engine
    engine = Engine(model, max_seq_len=genT, cuda_graphs=False, fuse=False)
    try:
        ids = engine.generate([[EOT_TOKEN]], genT - 1, temperature=1.0, seed=1337, stop_token=None)[0]
    finally:
        del engine
        model.train()
    try:
        from pipeline.bpe import get_encoding
        return get_encoding().decode(ids)
    except Exception:  # BPE ranks missing from a stripped install: show ids, as llm.c does without its tokenizer
        return " ".join(map(str, ids))


# ----------------------------------------------------------------------------- main loop

def train(args: TrainConfig) -> int:
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

    raw = model
    first_step = resume_step if resume_step >= 0 else args.ss
    run_steps = (steps if args.estimate or args.es < 0 else min(args.es, steps)) - first_step
    step = args.ss
    resumed = {}

    def restore(optimizer):
        state_path = os.path.join(args.o, "state_%08d_%05d.bin" % (resume_step, run.rank))
        extra = ckpt.load_state(state_path, raw, optimizer)
        train_loader.load_state_dict(extra["loader"])
        resumed.update(step=extra["step"], path=state_path)
    plan, notes, model, optimizer, step_fn = build_trainer(args, run, raw, accum,
                                                           total_batch * max(0, run_steps),
                                                           restore if resume_step >= 0 else None)
    for note in notes:
        run.print(note)
    if resumed:
        step = resumed["step"]
        run.print("resuming from %s at step %d" % (resumed["path"], step))
    schedule = LRScheduler(args.k, args.l, args.u, steps, args.q)

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
              "compile": int(plan.compile), "autocast": str(run.amp_dtype), "device": str(run.device),
              "cuda graphs": int(plan.cuda_graphs), "cublaslt": int(plan.matmul == "cublaslt"),
              "cudnn frontend attention": int(plan.attention == "cudnn"),
              "bf16 weight mirrors": optimizer.num_mirrors() if isinstance(optimizer, AdamW) else 0,
              "num_layers L": raw.config.n_layer, "num_heads NH": raw.config.n_head,
              "channels C": raw.config.n_embd, "max_seq_len": raw.config.block_size,
              "num_parameters": n_params, "train tokens": train_loader.num_tokens, "preset": args.preset}
    params.update(plan.describe())  # the whole resolved plan ...
    params.update(("flag " + k, v) for k, v in args.to_dict().items())  # ... and the whole config
    if run.master:
        run.print("\n".join("| %-22s | %s" % kv for kv in params.items()))
        if args.o and not args.estimate:
            write_run_parameters(args.o, params)
            args.save(args.o)
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
