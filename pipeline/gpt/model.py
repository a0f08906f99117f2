"""GPT-2 in one readable file, shaped so its weights map 1:1 onto llm.c's checkpoint layout.

Parameter names follow the usual GPT-2 convention (`transformer.wte`, `transformer.h.0.attn.c_attn`,
...). The token embedding has llm.c's padded vocabulary (50304 rows, a multiple of 128, for fast
matmuls); rows past 50257 are never the target of the loss and stay zero at init. The output head is
tied to the token embedding, as in GPT-2 and llm.c.
"""
from __future__ import annotations

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, heads, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.attention == "flash":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # "eager": the textbook formula, materialising the T x T attention matrix
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(~self.causal_mask[:, :, :T, :T], float("-inf"))
            y = F.softmax(att.float(), dim=-1).to(q.dtype) @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.RESIDUAL_SCALE_INIT = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, attention: str = "flash"):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config, attention)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, attention: str = "flash", recompute: bool = False):
        super().__init__()
        if attention not in ("flash", "eager"):
            raise ValueError("attention must be 'flash' or 'eager', got %r" % attention)
        self.config = config
        self.recompute = recompute
        self.lowp_residual = True
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            h=nn.ModuleList([Block(config, attention) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2 and llm.c
        self.apply(self._init_weights)

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

        The trainer passes `return_logits=False`: under torch.compile the (B, T, 50304) logits then
        never have to be written out as an output, only consumed by the fused loss kernel.
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
        for block in self.transformer.h:
            if self.recompute and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = self.loss(logits, targets)
        # The padded rows are not real tokens: callers only ever see the real vocabulary.
        return (logits[..., :self.config.vocab_size] if return_logits else None), loss

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
