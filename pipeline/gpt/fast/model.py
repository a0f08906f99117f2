"""The fast path: `FastGPT` computes what `pipeline.gpt.model.GPT` computes, on the same parameters,
with the kernels a `FastPlan` (pipeline/gpt/fast/plan.py) names. It is the only other forward
pass of the module: the trainer runs it (usually under torch.compile) and the reference model
stays untouched, so checkpoints, HellaSwag and samples read the same weights.

What the plan can change, each a choice of kernel for the same math:
- attention: "cudnn" (cuDNN frontend reading the packed q|k|v, `pipeline.gpt.cudnn_attention`),
  "sdpa" (PyTorch's fused kernels) or "eager" (the textbook T x T matrix);
- matmul: "cublaslt" (`pipeline.gpt.cublaslt`: bias and GELU in the matmul epilogues, each shape on
  its fastest algorithm) or "torch"; with `ones_column` the layernorm outputs get a column of ones
  so that one weight-gradient matmul also yields the bias gradient;
- fused_residual: each residual add, the bias of the branch projection and the following
  layernorm as one op (`pipeline.gpt.residual_norm`), the way llm.c's trainer groups them;
- bf16_residual: the residual stream kept in bf16 under autocast, as llm.c's bf16 build does;
- fused_loss: the classifier's loss and softmax gradient in one kernel (`pipeline.gpt.fast.loss`);
- recompute: each block recomputed in backward (activation checkpointing).
The cuBLASLt and fused-residual choices apply to bf16 training (gradients on under bf16 autocast)
and to inference (gradients off, no autocast: the decode engine, `pipeline.gpt.engine`, runs the
model in its own dtype under a plan resolved for it, `fast.plan.inference_plan`); cuDNN attention
to bf16 training only. Evaluation inside training (no gradients, under autocast) runs the same
function through PyTorch's ops.

Attention is the one step the caller can swap (`hidden(x, attend)`): causal self-attention over
the sequence by default, attention over the engine's KV cache when decoding. Everything else the
engine runs -- projections, GELU, residual adds, layernorms -- is this forward.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from pipeline.gpt.fast.loss import linear_cross_entropy
from pipeline.gpt.fast.plan import FastPlan
from pipeline.gpt.model import GPT


def _bf16_training(x: torch.Tensor) -> bool:
    """Gradients on under bf16 autocast: where the cuBLASLt, cuDNN and fused-residual kernels apply."""
    return (torch.is_grad_enabled() and torch.is_autocast_enabled(x.device.type)
            and torch.get_autocast_dtype(x.device.type) == torch.bfloat16)


def _kernels_apply(x: torch.Tensor) -> bool:
    """Where the plan's cuBLASLt and fused-residual kernels run: bf16 training, and inference
    (no gradients, no autocast), whose plan was resolved for the model's own dtype."""
    if torch.is_grad_enabled():
        return _bf16_training(x)
    return not torch.is_autocast_enabled(x.device.type)


# attend(layer, qkv) -> y: the attention of layer `layer` given its packed q|k|v (B, T, 3C), as (B, T, C)
Attend = Callable[[int, torch.Tensor], torch.Tensor]


class FastGPT(nn.Module):
    """`model` (the reference GPT, whose parameters this module shares) run as `plan` says."""

    def __init__(self, model: GPT, plan: FastPlan):
        super().__init__()
        self.model = model
        self.plan = plan
        self.config = model.config

    # -- one block ----------------------------------------------------------------------------

    def _lt(self, x: torch.Tensor) -> bool:
        # cuBLASLt computes in bf16: in inference only on a bf16 model, never as a silent downcast
        return (self.plan.matmul == "cublaslt" and _kernels_apply(x)
                and (torch.is_grad_enabled() or x.dtype == torch.bfloat16))

    def _normed(self, ln: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        h = ln(x)
        if self.plan.ones_column and self._lt(x):
            # the next matmul's weight gradient also yields its bias gradient (`cublaslt.with_ones`);
            # under torch.compile the layernorm kernel writes the wider buffer itself
            from pipeline.gpt.cublaslt import with_ones
            h = with_ones(h)
        return h

    def _attention(self, attn, x: torch.Tensor, layer: int, attend: Attend,
                   proj_bias: bool = True) -> torch.Tensor:
        """c_proj(attend(c_attn(x))); proj_bias=False: c_proj without its bias (the fused residual
        op adds it)."""
        lt = self._lt(x)
        if lt:
            from pipeline.gpt.cublaslt import tuned_linear
        y = attend(layer, tuned_linear(x, attn.c_attn) if lt else attn.c_attn(x))
        if lt:
            return tuned_linear(y, attn.c_proj, bias=proj_bias)
        return attn.c_proj(y) if proj_bias else F.linear(y, attn.c_proj.weight)

    def causal_attention(self, layer: int, qkv: torch.Tensor) -> torch.Tensor:
        """Causal self-attention over the sequence (training, evaluation) on the plan's kernel."""
        attn = self.model.transformer.h[layer].attn
        B, T, C = qkv.shape[0], qkv.shape[1], attn.n_embd
        if self.plan.attention == "cudnn" and _bf16_training(qkv):
            # cuDNN's kernels reading the packed q|k|v and writing one packed gradient
            from pipeline.gpt.cudnn_attention import attention
            return attention(qkv, attn.n_head)
        q, k, v = (t.view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2)
                   for t in qkv.split(attn.n_embd, dim=2))
        if self.plan.attention == "eager":  # materialising the T x T attention matrix
            att = (q @ k.transpose(-2, -1)) * (1.0 / (k.size(-1) ** 0.5))
            future = torch.ones(T, T, dtype=torch.bool, device=qkv.device).triu(1)
            att = att.masked_fill(future, float("-inf"))
            y = F.softmax(att.float(), dim=-1).to(q.dtype) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return y.transpose(1, 2).contiguous().view(B, T, C)

    def _mlp(self, mlp, x: torch.Tensor, proj_bias: bool = True) -> torch.Tensor:
        """proj_bias=False: c_proj without its bias (the fused residual op adds it)."""
        if self._lt(x):  # GELU (forward and backward) inside the matmuls' cuBLASLt epilogues
            from pipeline.gpt.cublaslt import fused_mlp
            return fused_mlp(x, mlp.c_fc, mlp.c_proj, proj_bias=proj_bias)
        h = F.gelu(mlp.c_fc(x), approximate="tanh")
        return mlp.c_proj(h) if proj_bias else F.linear(h, mlp.c_proj.weight)

    def _block(self, block, x: torch.Tensor, layer: int, attend: Attend) -> torch.Tensor:
        x = x + self._attention(block.attn, self._normed(block.ln_1, x), layer, attend)
        return x + self._mlp(block.mlp, self._normed(block.ln_2, x))

    def _blocks_fused_residual(self, x: torch.Tensor, attend: Attend,
                               h: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The blocks and ln_f as `_block` computes them, regrouped the way llm.c's trainer runs
        them: each residual add and the layernorm that reads its result are one op
        (`residual_norm`), which also adds the branch projection's bias, so the layernorms'
        parameter gradients and those biases' gradients come out of one backward pass over the
        rows. The add after block i's MLP feeds block i+1's ln_1 (ln_f after the last block)."""
        from pipeline.gpt.cublaslt import ones_width
        from pipeline.gpt.residual_norm import residual_norm
        width = ones_width(self.config.n_embd) if self.plan.ones_column and self._lt(x) else None
        tr = self.model.transformer
        blocks = tr.h
        if h is None:
            h = self._normed(blocks[0].ln_1, x)
        for i, block in enumerate(blocks):
            x, h = residual_norm(x, self._attention(block.attn, h, i, attend, proj_bias=False),
                                 block.attn.c_proj.bias, block.ln_2, width)
            last = i + 1 == len(blocks)
            x, h = residual_norm(x, self._mlp(block.mlp, h, proj_bias=False), block.mlp.c_proj.bias,
                                 tr.ln_f if last else blocks[i + 1].ln_1, None if last else width)
        return h

    def hidden(self, x: torch.Tensor, attend: Optional[Attend] = None,
               h: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The transformer blocks and ln_f on the embedded input x (B, T, C).

        attend: the attention step (default `causal_attention`; the decode engine passes attention
        over its KV cache). h: ln_1 of the first block applied to x, when the caller computed it
        with x (the engine's fused embedding kernel); used only where the residual is fused."""
        plan = self.plan
        attend = attend or self.causal_attention
        if plan.fused_residual and _kernels_apply(x) and not plan.recompute:
            return self._blocks_fused_residual(x, attend, h)
        for i, block in enumerate(self.model.transformer.h):
            if plan.recompute and self.training:
                x = checkpoint(self._block, block, x, i, attend, use_reentrant=False)
            else:
                x = self._block(block, x, i, attend)
        return self.model.transformer.ln_f(x)

    # -- the model ----------------------------------------------------------------------------

    def forward(self, idx: torch.Tensor, targets: torch.Tensor = None, return_logits: bool = True):
        """As `GPT.forward`. The trainer passes `return_logits=False`: with gradients on and the
        plan's fused loss, the loss then goes through `linear_cross_entropy`, which keeps no logits."""
        model, plan = self.model, self.plan
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError("sequence of %d tokens exceeds block size %d" % (T, self.config.block_size))
        tr = model.transformer
        x = tr.wte(idx) + tr.wpe(torch.arange(T, device=idx.device))
        if plan.bf16_residual and torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        x = self.hidden(x)
        if targets is not None and not return_logits and plan.fused_loss and torch.is_grad_enabled():
            weight = model.lm_head.weight
            mirror = getattr(model.lm_head, "weight_bf16", None)  # adamw.AdamW's bf16 copy of it
            if mirror is not None and _bf16_training(x):
                weight = mirror
            return None, linear_cross_entropy(x, weight, targets, self.config.vocab_size,
                                              tuned=plan.matmul == "cublaslt", kernel=plan.loss_kernel)
        logits = model.lm_head(x)
        loss = None if targets is None else model.loss(logits, targets)
        return (logits[..., :self.config.vocab_size] if return_logits else None), loss

    def bf16_mirror_layers(self):
        """(layers, bias_column_layers) for `adamw.AdamW.attach_bf16_mirrors`: the blocks' four
        matmul layers, whose weights the cuBLASLt path reads through `cublaslt.bf16_weight`, with
        c_attn and c_fc in the second list where their input carries the ones column."""
        plain, with_bias = [], []
        for b in self.model.transformer.h:
            (with_bias if self.plan.ones_column else plain).extend([b.attn.c_attn, b.mlp.c_fc])
            plain.extend([b.attn.c_proj, b.mlp.c_proj])
        return plain, with_bias


# ----------------------------------------------------------------------------- torch.compile

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
    for module in ("cublaslt", "cudnn_attention", "residual_norm", "fast.loss"):  # importing defines their ops
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
