"""`FastPlan`: every choice the fast path makes, fixed before the first step.

`resolve_plan` is the one place that turns a run's flags (`pipeline.gpt.train.TrainConfig`), its
device and the kernels' self-checks into a plan. Nothing later looks at flags, environment
variables or the GPU again: the model (`FastGPT`), the optimizer, the step and the CUDA-graph
replay read the plan, and the trainer prints and records it (`run_parameters.txt`).

Defaults per device (explicit flags win wherever they can run):
- H100/H200 (compute capability >= 9.0): cuDNN-frontend attention, cuBLASLt matmuls (GELU and
  biases in epilogues, the ones column under torch.compile), residual add + layernorm fused, the
  fused classifier loss on the Hopper CUDA kernel, the Triton AdamW with bf16 weight mirrors, CUDA
  graphs, torch.compile.
- Other CUDA GPUs (e.g. A10G, sm_86): PyTorch's SDPA and matmuls, the fused classifier loss on the
  Triton kernel, the Triton AdamW, CUDA graphs, torch.compile. (cuBLASLt and cuDNN attention were
  measured only on Hopper; `--cublaslt 1` / `--cudnn-attention 1` try them where they self-check.)
- CPU: the reference model itself (`--attention eager` or `-r 1` on CPU: the fast path with
  PyTorch's ops only).
- `--reference`: the reference model with PyTorch's AdamW and clip, on any device.
- A small model on a short CUDA run skips the set-up of compile, CUDA graphs, cuBLASLt and cuDNN
  attention (see SHORT_RUN_FLOPS), unless those flags are given.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

ATTENTIONS = ("cudnn", "sdpa", "eager")
MATMULS = ("cublaslt", "torch")
LOSS_KERNELS = ("cuda", "triton", "torch")
ADAMWS = ("triton", "torch-fused", "torch")


@dataclass(frozen=True)
class FastPlan:
    reference: bool = False      # run pipeline.gpt.model.GPT as it is; the fields below do not apply
    attention: str = "sdpa"      # cudnn: cuDNN frontend on packed q|k|v; sdpa: PyTorch; eager: T x T
    matmul: str = "torch"        # cublaslt: tuned algorithms, bias/GELU epilogues; torch: nn.Linear
    ones_column: bool = False    # cuBLASLt bias gradients from a ones column on the layernorm outputs
    fused_residual: bool = False  # residual add + bias + next layernorm as one op (residual_norm)
    bf16_residual: bool = True   # residual stream in the autocast dtype, as llm.c's bf16 build
    fused_loss: bool = False     # loss and softmax gradient in one kernel in the forward pass
    loss_kernel: str = "torch"   # for the fused loss on CUDA: cuda (Hopper), triton, torch
    adamw: str = "torch"         # triton: clip + update in one pass; torch-fused; torch (reference)
    bf16_mirrors: bool = False   # cuBLASLt matmuls read bf16 weight copies the update writes
    cuda_graphs: bool = False    # replay each step from CUDA graphs after warm-up steps
    compile: bool = False        # torch.compile the forward and backward
    compile_mode: str = "default"
    recompute: bool = False      # recompute each block in backward (activation checkpointing)
    cudnn_tune: bool = True      # time every cuDNN execution plan, keep the fastest

    def __post_init__(self):
        for name, allowed in (("attention", ATTENTIONS), ("matmul", MATMULS),
                              ("loss_kernel", LOSS_KERNELS), ("adamw", ADAMWS)):
            if getattr(self, name) not in allowed:
                raise ValueError("FastPlan.%s must be one of %s, got %r" % (name, allowed, getattr(self, name)))

    def describe(self) -> Dict[str, object]:
        """The plan as `name: value` rows for the banner and run_parameters.txt."""
        if self.reference:
            return {"plan": "reference (pipeline/gpt/model.py, PyTorch AdamW)"}
        return {"plan " + k: (int(v) if isinstance(v, bool) else v)
                for k, v in dataclasses.asdict(self).items() if k != "reference"}


REFERENCE = FastPlan(reference=True)


# ----------------------------------------------------------------------------- self-checks

def self_check(feature: str, device: torch.device, shape: Tuple[int, int, int, int] = (0, 0, 0, 0),
               cudnn_tune: bool = True) -> Optional[str]:
    """None if `feature`'s kernels run on `device` and match PyTorch's ops there, else why not.

    feature: "cublaslt" (the matmuls and fused MLP), "cudnn_attention" (at the training shape
    (B, T, heads, head_dim), building the graphs the steps will use), "cuda_loss" (the Hopper loss
    kernel), "triton", "residual_norm" (the fused residual add + layernorm), and the decode
    engine's own kernels "decode_attention" (shape = (fewest cache blocks per split, splits, 0,
    head_dim)) and "embed_norm". Each is checked once per device (and shape) and cached."""
    if device.type != "cuda":
        return "%s is not a CUDA device" % device
    index = device.index if device.index is not None else torch.cuda.current_device()
    if feature == "triton":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed"
        return None
    if feature == "cublaslt":
        from pipeline.gpt import cublaslt
        return None if cublaslt.available(device) else (cublaslt.unavailable_reason(index) or "self-check failed")
    if feature == "cudnn_attention":
        from pipeline.gpt import cudnn_attention
        if cudnn_attention.available(device, *shape, tune_plans=cudnn_tune):
            return None
        return cudnn_attention.unavailable_reason(index) or "self-check failed"
    if feature == "cuda_loss":
        from pipeline.gpt import loss_kernel
        return None if loss_kernel.available(device) else (loss_kernel.unavailable_reason(index) or "unavailable")
    if feature in ("residual_norm", "decode_attention", "embed_norm"):
        ok = _cached_check(feature, torch.device("cuda", index), shape)
        return None if ok else "self-check failed"
    raise ValueError("unknown feature %r" % feature)


@functools.lru_cache(maxsize=None)
def _cached_check(feature: str, device: torch.device, shape: Tuple[int, int, int, int]) -> bool:
    if feature == "residual_norm":
        from pipeline.gpt.residual_norm import kernel_matches
        return kernel_matches(device)
    from pipeline.gpt import decode_kernels
    if feature == "embed_norm":
        return decode_kernels.embed_norm_matches(device)
    min_blocks, splits, head_dim = max(shape[0], 1), max(shape[1], 1), shape[3]
    return decode_kernels.decode_attention_matches(device, head_dim, sorted({1, splits}), min_blocks)


# ----------------------------------------------------------------------------- resolution

# Fast-path set-up (torch.compile, CUDA-graph capture, cuBLASLt algorithm timing, cuDNN plan
# building) costs every process tens of seconds, and what it saves grows with the matmuls. For a
# small model (fewer transformer-block parameters than SMALL_MODEL_PARAMS) on a short run (less
# training work than SHORT_RUN_FLOPS = 6 x parameters x tokens, about 25 s of an H100 at the rate
# small models reach) it cannot pay back, so the fast paths' defaults turn off; explicit flags win.
# GPT-2 124M (85M block parameters) always keeps them. Measured: bench/bench_startup.py.
SMALL_MODEL_PARAMS = 10_000_000
SHORT_RUN_FLOPS = 1e16
FAST_SETUP_FLAGS = ("compile", "cuda_graphs", "cublaslt", "cudnn_attention")


def short_run(model_config, run_tokens: int) -> bool:
    """A small model on a short run: the fast paths' set-up would not pay back."""
    block_params = 12 * model_config.n_layer * model_config.n_embd ** 2
    return block_params < SMALL_MODEL_PARAMS and 6 * model_config.num_params() * run_tokens < SHORT_RUN_FLOPS


def resolve_plan(cfg, device: torch.device, model_config, accum: int, ddp: bool, run_tokens: int,
                 bf16: bool) -> Tuple[FastPlan, List[str]]:
    """The plan for a run of `cfg` (a TrainConfig) on `device`, and notes on what was turned off
    and why. `accum`: micro-batches per step; `ddp`: several processes; `run_tokens`: tokens this
    process will train on (the short-run rule); `bf16`: bf16 autocast."""
    notes: List[str] = []
    cuda = device.type == "cuda"
    if cfg.reference:
        return REFERENCE, notes
    explicit = {name: getattr(cfg, name) for name in FAST_SETUP_FLAGS}
    if cuda and short_run(model_config, run_tokens):
        skipped = [n for n, v in explicit.items() if v is None]
        explicit.update({n: 0 for n in skipped})
        if skipped:
            notes.append("small model, short run (%.1e FLOPs): skipping the set-up of %s (pass 1 to force)"
                         % (6 * model_config.num_params() * run_tokens,
                            ", ".join("--" + n.replace("_", "-") for n in skipped)))
    recompute = bool(cfg.r)
    compile_ = bool(explicit["compile"] if explicit["compile"] is not None else cuda)
    if not cuda and cfg.attention == "flash" and not recompute and not bf16 and not compile_:
        return REFERENCE, notes  # CPU: the reference model is the fast path's math, op for op
    hopper = cuda and torch.cuda.get_device_capability(device)[0] >= 9
    bf16_training = cuda and bf16

    # Matmuls. Default on Hopper (where measured; llm.c also enables its GELU epilogues only there),
    # off with -r 1: torch.compile's recompute keeps the outputs of opaque ops (the MLP's 4C-wide
    # activations) instead of recomputing them, which undoes most of the memory -r 1 is for.
    matmul = "torch"
    want = explicit["cublaslt"]
    if want is None:
        want = int(hopper and not recompute)
    if want and bf16_training:
        why = self_check("cublaslt", device)
        if why is None:
            matmul = "cublaslt"
        else:
            notes.append("cuBLASLt matmuls off: %s" % why)
    elif explicit["cublaslt"]:
        notes.append("--cublaslt 1 ignored: it needs a CUDA device with bf16 autocast")

    # Attention kernel.
    attention = "eager" if cfg.attention == "eager" else "sdpa"
    want = explicit["cudnn_attention"]
    if want is None:
        want = int(cfg.sdpa == "auto" and hopper)
    if want and cfg.attention == "flash" and bf16_training:
        head_dim = model_config.n_embd // model_config.n_head
        why = self_check("cudnn_attention", device, (cfg.b, cfg.t, model_config.n_head, head_dim),
                         cudnn_tune=bool(cfg.cudnn_tune))
        if why is None:
            attention = "cudnn"
        else:
            notes.append("cuDNN frontend attention off (PyTorch SDPA instead): %s" % why)
    elif explicit["cudnn_attention"]:
        notes.append("--cudnn-attention 1 ignored: it needs --attention flash on a CUDA device with "
                     "bf16 autocast")

    # Loss: fused on CUDA, on the best kernel that runs here.
    fused_loss = bool(cfg.fused_loss if cfg.fused_loss is not None else cuda)
    loss_kernel = cfg.loss_kernel
    if loss_kernel == "auto":
        loss_kernel = "torch"
        if cuda and self_check("triton", device) is None:
            loss_kernel = "cuda" if hopper and self_check("cuda_loss", device) is None else "triton"

    # Optimizer.
    triton_ok = cuda and self_check("triton", device) is None
    want = cfg.triton_adamw if cfg.triton_adamw is not None else 1
    adamw = "triton" if (want and triton_ok) else ("torch-fused" if cuda else "torch")
    zero = cfg.z >= 1 and ddp
    if zero:
        adamw = "torch-fused" if cuda else "torch"
    mirrors = False
    want = cfg.bf16_mirrors if cfg.bf16_mirrors is not None else int(cuda)
    if want:
        why = None
        if matmul != "cublaslt":
            why = "the cuBLASLt matmuls (--cublaslt) that read them are off"
        elif accum != 1:
            why = "gradient accumulation (-d > -b x -t x GPUs) would add gradients up in bf16"
        elif ddp:
            why = "DDP all-reduces parameter gradients, not a mirror's"
        elif zero:
            why = "the optimizer is not the trainer's AdamW"
        mirrors = why is None
        if why and cfg.bf16_mirrors:
            notes.append("--bf16-mirrors 1 ignored: %s" % why)

    # CUDA graphs.
    graphs = explicit["cuda_graphs"]
    if graphs is None:
        graphs = int(cuda and not ddp and not recompute)
    if graphs and not cuda:
        raise SystemExit("--cuda-graphs 1 needs a CUDA device")
    if graphs and (ddp or recompute):
        raise SystemExit("--cuda-graphs 1 works on one GPU without -r 1 (recompute); use --cuda-graphs 0")

    lt_compiled = matmul == "cublaslt" and compile_
    plan = FastPlan(attention=attention, matmul=matmul, ones_column=lt_compiled,
                    fused_residual=lt_compiled and not recompute, bf16_residual=True,
                    fused_loss=fused_loss, loss_kernel=loss_kernel, adamw=adamw, bf16_mirrors=mirrors,
                    cuda_graphs=bool(graphs), compile=compile_, compile_mode=cfg.compile_mode,
                    recompute=recompute, cudnn_tune=bool(cfg.cudnn_tune))
    return plan, notes


def inference_plan(device: torch.device, dtype: torch.dtype, fuse: bool = True) -> FastPlan:
    """The plan the decode engine runs `FastGPT` under (no gradients, no autocast, the model in
    `dtype` on `device`): cuBLASLt matmuls with GELU in the epilogue for a bf16 model, the fused
    residual add + layernorm on CUDA, PyTorch's ops for the rest; `fuse=False` or a CPU: all
    PyTorch's ops. Each kernel only after its self-check passed here."""
    if not fuse or device.type != "cuda":
        return FastPlan()
    matmul = "cublaslt" if dtype == torch.bfloat16 and self_check("cublaslt", device) is None else "torch"
    return FastPlan(matmul=matmul, fused_residual=self_check("residual_norm", device) is None)
