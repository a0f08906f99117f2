"""GPT-2 in one readable file, shaped so its weights map 1:1 onto llm.c's checkpoint layout.

Parameter names follow the usual GPT-2 convention (`transformer.wte`, `transformer.h.0.attn.c_attn`,
...). The token embedding has llm.c's padded vocabulary (50304 rows, a multiple of 128, for fast
matmuls); rows past 50257 are never the target of the loss and stay zero at init. The output head is
tied to the token embedding, as in GPT-2 and llm.c.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

GPT2_VOCAB = 50257
GPT2_PADDED_VOCAB = 50304

# llm.c's `dNN` descriptors: depth -> (channels, heads).
DEPTH_SHAPES = {6: (384, 6), 12: (768, 12), 24: (1024, 16), 36: (1280, 20), 48: (1600, 25),
                60: (1920, 30), 72: (2880, 30), 84: (3456, 36)}


@dataclass(frozen=True)
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = GPT2_VOCAB
    padded_vocab_size: int = GPT2_PADDED_VOCAB
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768

    @classmethod
    def from_descriptor(cls, descriptor: str, block_size: int = 1024) -> "GPTConfig":
        """`d12` -> GPT-2 124M, `d24` -> 350M, `d36` -> 774M, `d48` -> 1558M (llm.c's names)."""
        if not descriptor.startswith("d") or not descriptor[1:].isdigit():
            raise ValueError("model descriptor must look like d12, got %r" % descriptor)
        depth = int(descriptor[1:])
        if depth not in DEPTH_SHAPES:
            raise ValueError("unsupported depth %d; choose one of %s" % (depth, sorted(DEPTH_SHAPES)))
        channels, heads = DEPTH_SHAPES[depth]
        return cls(block_size=block_size, n_layer=depth, n_head=heads, n_embd=channels)

    def num_params(self) -> int:
        C, L, Vp, T = self.n_embd, self.n_layer, self.padded_vocab_size, self.block_size
        per_layer = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (4 * C * C + 4 * C) + (4 * C * C + C)
        return Vp * C + T * C + L * per_layer + 2 * C


def _bf16_training(x: torch.Tensor) -> bool:
    """Gradients on under bf16 autocast: where the cuBLASLt paths (set_cublaslt) apply."""
    return (torch.is_grad_enabled() and torch.is_autocast_enabled(x.device.type)
            and torch.get_autocast_dtype(x.device.type) == torch.bfloat16)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, attention: str = "flash"):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.attention = attention
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.RESIDUAL_SCALE_INIT = True
        mask = torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool))
        self.register_buffer("causal_mask", mask.view(1, 1, config.block_size, config.block_size),
                             persistent=False)
        # bf16 training through pipeline.gpt.cublaslt's tuned matmuls (GPT.set_cublaslt)
        self.tuned = False
        # "flash" bf16 training on CUDA through pipeline.gpt.cudnn_attention (GPT.set_cudnn_frontend)
        self.cudnn_frontend = False

    def forward(self, x: torch.Tensor, proj_bias: bool = True) -> torch.Tensor:
        """proj_bias=False: c_proj without its bias (GPT's fused residual path adds it)."""
        B, T, C = x.shape[0], x.shape[1], self.n_embd  # x may carry cublaslt's ones column
        tuned = self.tuned and _bf16_training(x)
        if tuned:
            from pipeline.gpt.cublaslt import tuned_linear
        qkv = tuned_linear(x, self.c_attn) if tuned else self.c_attn(x)
        if self.attention == "flash" and self.cudnn_frontend and _bf16_training(x):
            # cuDNN's kernels reading the packed q|k|v and writing one packed gradient
            from pipeline.gpt.cudnn_attention import attention
            y = attention(qkv, self.n_head)
        else:
            # (B, T, C) -> (B, heads, T, head_dim)
            q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                       for t in qkv.split(self.n_embd, dim=2))
            if self.attention == "flash":
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:  # "eager": the textbook formula, materialising the T x T attention matrix
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
                att = att.masked_fill(~self.causal_mask[:, :, :T, :T], float("-inf"))
                y = F.softmax(att.float(), dim=-1).to(q.dtype) @ v
            y = y.transpose(1, 2).contiguous().view(B, T, C)
        if tuned:
            return tuned_linear(y, self.c_proj, bias=proj_bias)
        return self.c_proj(y) if proj_bias else F.linear(y, self.c_proj.weight)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.RESIDUAL_SCALE_INIT = True
        # bf16 training through `pipeline.gpt.cublaslt.fused_mlp`, GELU inside the matmuls'
        # cuBLASLt epilogues (GPT.set_cublaslt)
        self.fused = False

    def forward(self, x: torch.Tensor, proj_bias: bool = True) -> torch.Tensor:
        """proj_bias=False: c_proj without its bias (GPT's fused residual path adds it)."""
        if self.fused and _bf16_training(x):
            from pipeline.gpt.cublaslt import fused_mlp
            return fused_mlp(x, self.c_fc, self.c_proj, proj_bias=proj_bias)
        h = F.gelu(self.c_fc(x), approximate="tanh")
        return self.c_proj(h) if proj_bias else F.linear(h, self.c_proj.weight)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, attention: str = "flash"):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config, attention)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)
        # cuBLASLt's ones column on the layernorm outputs (see _normed): None = under torch.compile
        # only, True = also eagerly (tests), False = never
        self.ones_column = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self._normed(self.ln_1, x, self.attn.tuned))
        return x + self.mlp(self._normed(self.ln_2, x, self.mlp.fused))

    def _normed(self, ln: nn.LayerNorm, x: torch.Tensor, lt_consumer: bool) -> torch.Tensor:
        h = ln(x)
        # Compiled cuBLASLt training: the layernorm output gets a column of ones, from which the
        # next matmul's weight gradient also yields the bias gradient (`cublaslt.with_ones`).
        # Only under torch.compile, which writes the wider buffer in the layernorm kernel itself;
        # eagerly the concatenation would be one more copy.
        wanted = torch.compiler.is_compiling() if self.ones_column is None else self.ones_column
        if wanted and lt_consumer and _bf16_training(x):
            from pipeline.gpt.cublaslt import with_ones
            h = with_ones(h)
        return h


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, attention: str = "flash", recompute: bool = False):
        super().__init__()
        if attention not in ("flash", "eager"):
            raise ValueError("attention must be 'flash' or 'eager', got %r" % attention)
        self.config = config
        self.recompute = recompute
        self.lowp_residual = True
        # Training loss through `linear_cross_entropy` (softmax gradient computed in the loss's
        # forward pass): None = on CUDA only, True = always (tests on CPU), False = never.
        self.fused_loss = None
        self.tuned_head = False  # classifier matmuls through cublaslt.mm (set_cublaslt)
        # Each residual add fused with the layernorm after it (`_blocks_fused_residual`), in
        # cuBLASLt bf16 training: None = under torch.compile only, True = also eagerly (tests),
        # False = never.
        self.fused_residual = None
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            h=nn.ModuleList([Block(config, attention) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2 and llm.c
        self.apply(self._init_weights)

    def set_cublaslt(self, enabled: bool) -> None:
        """bf16 training with every matmul through `pipeline.gpt.cublaslt`: GELU (forward and
        backward) inside the MLP's matmul epilogues, biases in the epilogues, and each matmul
        shape on the cuBLASLt algorithm timed fastest. Turn on only where
        `pipeline.gpt.cublaslt.available()` said yes; on CPU the same ops run as reference math."""
        self.tuned_head = bool(enabled)
        for block in self.transformer.h:
            block.mlp.fused = bool(enabled)
            block.attn.tuned = bool(enabled)

    def bf16_mirror_layers(self, compiled: bool):
        """(layers, bias_column_layers) for `adamw.AdamW.attach_bf16_mirrors`: the blocks' four
        matmul layers, whose weights the cuBLASLt path reads through `cublaslt.bf16_weight`, with
        c_attn and c_fc in the second list where their input carries the ones column
        (`Block._normed`: under torch.compile unless switched off, or forced on)."""
        plain, with_bias = [], []
        for b in self.transformer.h:
            ones = compiled if b.ones_column is None else b.ones_column
            (with_bias if ones else plain).extend([b.attn.c_attn, b.mlp.c_fc])
            plain.extend([b.attn.c_proj, b.mlp.c_proj])
        return plain, with_bias

    def set_cudnn_frontend(self, enabled: bool) -> None:
        """bf16 training with `--attention flash` through `pipeline.gpt.cudnn_attention` (cuDNN's
        attention from and to the packed q|k|v layout). Turn on only where
        `pipeline.gpt.cudnn_attention.available()` said yes; on CPU the op runs as reference math."""
        for block in self.transformer.h:
            block.attn.cudnn_frontend = bool(enabled)

    def set_attention(self, attention: str) -> None:
        for block in self.transformer.h:
            block.attn.attention = attention

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-2/llm.c init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer).
        if module is self.lm_head:
            return  # tied to wte, initialised (with zero padded rows) as the embedding
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "RESIDUAL_SCALE_INIT", False):
                std /= math.sqrt(2 * self.config.n_layer)
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.num_embeddings == self.config.padded_vocab_size:
                with torch.no_grad():
                    module.weight[self.config.vocab_size:].zero_()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor = None, return_logits: bool = True):
        """idx (B, T) token ids -> logits (B, T, vocab_size) and, given targets, the mean loss.

        The trainer passes `return_logits=False`: the (B, T, 50304) logits are then never an output,
        and with gradients on (and `fused_loss`) the loss goes through `linear_cross_entropy`, which
        computes the loss and its gradient in one kernel and keeps no logits for the backward.
        """
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError("sequence of %d tokens exceeds block size %d" % (T, self.config.block_size))
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        if self.lowp_residual and torch.is_autocast_enabled(x.device.type):
            # Keep the residual stream in the autocast dtype (bf16), as llm.c's bf16 build does:
            # half the bytes for every residual add and layernorm read, forward and backward.
            x = x.to(torch.get_autocast_dtype(x.device.type))
        if self._use_fused_residual(x):
            x = self._blocks_fused_residual(x)
        else:
            for block in self.transformer.h:
                if self.recompute and self.training:
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
            x = self.transformer.ln_f(x)
        fused = self.fused_loss if self.fused_loss is not None else x.is_cuda
        if targets is not None and not return_logits and fused and torch.is_grad_enabled():
            weight = self.lm_head.weight
            mirror = getattr(self.lm_head, "weight_bf16", None)  # adamw.AdamW's bf16 copy of it
            if mirror is not None and _bf16_training(x):
                weight = mirror
            return None, linear_cross_entropy(x, weight, targets, self.config.vocab_size,
                                              tuned=self.tuned_head)
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = self.loss(logits, targets)
        # The padded rows are not real tokens: callers only ever see the real vocabulary.
        return (logits[..., :self.config.vocab_size] if return_logits else None), loss

    def _use_fused_residual(self, x: torch.Tensor) -> bool:
        wanted = torch.compiler.is_compiling() if self.fused_residual is None else self.fused_residual
        return bool(wanted and self.tuned_head and not self.recompute and _bf16_training(x))

    def _blocks_fused_residual(self, x: torch.Tensor) -> torch.Tensor:
        """The blocks and ln_f as `Block.forward` computes them, regrouped the way llm.c's
        trainer runs them: each residual add and the layernorm that reads its result are one op
        (`residual_norm`), which also adds the branch projection's bias, so the layernorms'
        parameter gradients and those biases' gradients come out of one backward pass over the
        rows. The add after block i's MLP feeds block i+1's ln_1 (ln_f after the last block)."""
        from pipeline.gpt.cublaslt import ones_width
        from pipeline.gpt.residual_norm import residual_norm

        def width(block):  # cuBLASLt's ones-column layout for c_attn/c_fc unless switched off
            return None if block.ones_column is False else ones_width(self.config.n_embd)
        blocks = self.transformer.h
        h = blocks[0]._normed(blocks[0].ln_1, x, True)
        for i, block in enumerate(blocks):
            x, h = residual_norm(x, block.attn(h, proj_bias=False), block.attn.c_proj.bias,
                                 block.ln_2, width(block))
            last = i + 1 == len(blocks)
            next_ln = self.transformer.ln_f if last else blocks[i + 1].ln_1
            x, h = residual_norm(x, block.mlp(h, proj_bias=False), block.mlp.c_proj.bias,
                                 next_ln, None if last else width(blocks[i + 1]))
        return h

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the real vocabulary, computed on the full padded width.

        Padded columns get -inf (softmax weight 0, gradient 0), exactly like slicing them off as
        llm.c's classifier does, but the 50304-wide tensor keeps its aligned shape: no strided copy,
        and the float32 upcast fuses into the loss kernel under torch.compile.
        """
        V, Vp = self.config.vocab_size, logits.size(-1)
        logits = logits.float()
        if Vp > V:
            pad = torch.arange(Vp, device=logits.device) >= V
            logits = logits.masked_fill(pad, float("-inf"))
        return F.cross_entropy(logits.view(-1, Vp), targets.reshape(-1))


# ----------------------------------------------------------------------------- fused loss
# The classifier is the step's largest memory-bound piece: (B*T) x 50304 logits. Autograd's cross
# entropy reads them in the forward and again in the backward, where it writes the gradient. Like
# llm.c's fused classifier, `linear_cross_entropy` computes the loss and the softmax gradient in
# one kernel during the forward pass, writing the gradient over the logits (no second buffer): one
# read for the row's log-sum-exp, one read (mostly from L2) and one write for the gradient. The
# backward is then only the classifier's two matmuls.

def _cross_entropy_grad_reference(logits, targets, vocab_size):
    """Per-row loss (float32); overwrites logits with d(loss_row)/d(logits) = softmax - onehot.

    Columns >= vocab_size (llm.c's padding) get probability 0 and gradient 0. Reference version,
    used off CUDA; on CUDA the Triton kernel below does the same.
    """
    lf = logits.float()
    cols = torch.arange(lf.size(-1), device=lf.device)
    lf = lf.masked_fill(cols >= vocab_size, float("-inf"))
    lse = torch.logsumexp(lf, dim=-1)
    losses = lse - lf.gather(1, targets.view(-1, 1)).squeeze(1)
    logits.copy_(torch.exp(lf - lse[:, None]) - (cols == targets.view(-1, 1)).float())
    return losses


# An opaque op for torch.compile: inductor schedules the kernel as one unit, and since the logits
# are an intermediate nobody else reads, it lets the op overwrite them in place.
cross_entropy_grad_ = torch.library.custom_op(
    "gpt::cross_entropy_grad_", _cross_entropy_grad_reference, mutates_args=("logits",),
    schema="(Tensor(a!) logits, Tensor targets, int vocab_size) -> Tensor")


@cross_entropy_grad_.register_fake
def _(logits, targets, vocab_size):
    return logits.new_empty(logits.shape[:1], dtype=torch.float32)


# BLOCK columns per loop iteration; per_sm > 0: that many programs per SM, each looping over rows
# (fewer rows in flight, so the second read of a row hits L2); 0: one program per row.
CE_LAUNCH = dict(BLOCK=4096, num_warps=16, per_sm=0)  # fastest of bench_train.py --fused-check, H100


@cross_entropy_grad_.register_kernel("cuda")
def _(logits, targets, vocab_size):
    from pipeline.gpt import loss_kernel
    assert logits.is_contiguous() and logits.dim() == 2
    n, width = logits.shape
    losses = torch.empty(n, dtype=torch.float32, device=logits.device)
    targets = targets.contiguous()
    # Hopper: the one-read CUDA kernel (pipeline/gpt/loss_kernel.py); elsewhere Triton's two-pass
    if loss_kernel.launch(logits, targets, losses, vocab_size):
        return losses
    try:
        kernel = _triton_ce_kernel()
    except ImportError:  # no Triton: the reference math, still on the GPU
        return _cross_entropy_grad_reference(logits, targets, vocab_size)
    launch = dict(CE_LAUNCH)
    per_sm = launch.pop("per_sm")
    programs = n if per_sm <= 0 else min(n, per_sm * _sm_count(logits.device.index))
    kernel[(programs,)](logits, targets, losses, n, width, vocab_size, **launch)
    return losses


@functools.lru_cache(maxsize=None)
def _sm_count(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.lru_cache(maxsize=None)
def _triton_ce_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def ce_kernel(logits_ptr, targets_ptr, losses_ptr, n_rows, width, vocab, BLOCK: tl.constexpr):
        for row in range(tl.program_id(0), n_rows, tl.num_programs(0)):
            ptr = logits_ptr + row.to(tl.int64) * width
            # Pass 1: running max and rescaled sum of exp per lane (online softmax), so the row is
            # read once for its log-sum-exp. The finite start keeps lanes that see no data at 0.
            m = tl.full([BLOCK], -1e30, tl.float32)
            s = tl.zeros([BLOCK], tl.float32)
            for start in range(0, vocab, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                x = tl.load(ptr + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
                m_new = tl.maximum(m, x)
                s = s * tl.exp(m - m_new) + tl.exp(x - m_new)
                m = m_new
            row_max = tl.max(m, axis=0)
            lse = row_max + tl.log(tl.sum(s * tl.exp(m - row_max), axis=0))
            target = tl.load(targets_ptr + row)
            tl.store(losses_ptr + row, lse - tl.load(ptr + target).to(tl.float32))
            # Pass 2: softmax - onehot over the full padded width (padding gets exactly 0),
            # written over the logits block it was computed from.
            for start in range(0, width, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                x = tl.load(ptr + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
                g = tl.exp(x - lse) - (cols == target).to(tl.float32)
                tl.store(ptr + cols, g.to(logits_ptr.dtype.element_ty), mask=cols < width)

    return ce_kernel


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, targets, vocab_size, tuned):
        # The dtype autocast would give the classifier matmul (bf16 in training), explicitly:
        # backward runs outside autocast.
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) \
            else x.dtype
        xl = x.reshape(-1, x.size(-1)).to(dtype)
        wl = weight.to(dtype)
        if tuned:
            from pipeline.gpt.cublaslt import mm
        ctx.tuned = tuned
        # the logits, until the loss kernel overwrites them
        grad = mm(xl, wl, False, True) if tuned else torch.mm(xl, wl.t())
        losses = cross_entropy_grad_(grad, targets.reshape(-1), vocab_size)
        ctx.save_for_backward(xl, wl, grad)
        ctx.x_shape, ctx.x_dtype, ctx.w_dtype = x.shape, x.dtype, weight.dtype
        return losses.mean()

    @staticmethod
    def backward(ctx, grad_loss):
        xl, wl, grad = ctx.saved_tensors
        scale = grad_loss / grad.size(0)  # d(mean)/d(row loss), applied to the small outputs
        if ctx.tuned:
            from pipeline.gpt.cublaslt import mm
            dx, dw = mm(grad, wl, False, False), mm(grad, xl, True, False)
        else:
            dx, dw = torch.mm(grad, wl), torch.mm(grad.t(), xl)
        dx = (dx * scale).to(ctx.x_dtype).view(ctx.x_shape)
        dw = dw.to(ctx.w_dtype) * scale
        return dx, dw, None, None, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         vocab_size: int, tuned: bool = False) -> torch.Tensor:
    """Mean cross-entropy of (x @ weight.T)[..., :vocab_size] against targets, never keeping the
    logits: the same value and gradients as `GPT.loss(lm_head(x), targets)`, up to rounding.
    `tuned`: the three matmuls through `pipeline.gpt.cublaslt.mm`."""
    return _LinearCrossEntropy.apply(x, weight, targets, vocab_size, bool(tuned))


@functools.lru_cache(maxsize=None)
def register_inductor_fallbacks() -> None:
    """Give inductor an explicit fallback lowering for every `gpt::` custom op before compiling.

    Unregistered custom ops take inductor's implicit-fallback path, which logs the op's arguments.
    torch 2.11 formats that message eagerly, and with the fused residual each op's arguments print
    the chain of earlier ops through both of their outputs, so the text doubles with every layer:
    a d12 forward never finished compiling (the message's formatting ran for the whole 9-minute
    call). Registering the same fallback, with the same layout constraint the implicit path picks,
    skips the message and leaves the generated code unchanged."""
    import importlib
    for module in ("cublaslt", "cudnn_attention", "residual_norm"):  # importing defines their ops
        importlib.import_module("pipeline.gpt." + module)
    try:
        from torch._inductor.lowering import lowerings, make_fallback, tag_to_layout_constraint
        from torch._library.utils import get_layout_constraint_tag
    except ImportError:  # another torch layout: the implicit path still works, only slower
        return
    for name in dir(torch.ops.gpt):
        packet = getattr(torch.ops.gpt, name)
        if not isinstance(packet, torch._ops.OpOverloadPacket):
            continue
        for overload in packet.overloads():
            op = getattr(packet, overload)
            if op in lowerings:
                continue
            try:
                constraint = tag_to_layout_constraint(get_layout_constraint_tag(op, with_default=True))
                make_fallback(op, layout_constraint=constraint)
            except (TypeError, AttributeError, AssertionError):  # other torch internals: as above
                return


def compile_model(model: nn.Module, mode: str = "default") -> nn.Module:
    """`torch.compile(model, mode=mode)` after `register_inductor_fallbacks()`."""
    register_inductor_fallbacks()
    return torch.compile(model, mode=mode)
