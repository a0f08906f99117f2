"""GPT-2, the reference: the whole model as plain PyTorch, shaped so its weights map 1:1 onto
llm.c's checkpoint layout. This file is the only statement of the math; the trainer's fast path
(`pipeline.gpt.fast`) computes the same function with fused kernels and is tested against it.

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
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v packed side by side
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.RESIDUAL_SCALE_INIT = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        # (B, T, C) -> (B, heads, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.c_attn(x).split(self.n_embd, dim=2))
        # softmax(q k^T / sqrt(head_dim)) v over the positions <= the query's
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.RESIDUAL_SCALE_INIT = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2's tanh GELU


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2 and llm.c
        self.apply(self._init_weights)

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
        """idx (B, T) token ids -> logits (B, T, vocab_size) (None with return_logits=False) and,
        given targets (B, T), the mean cross-entropy loss."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError("sequence of %d tokens exceeds block size %d" % (T, self.config.block_size))
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None if targets is None else self.loss(logits, targets)
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
