"""Fast text generation for `pipeline.gpt.model.GPT`: a pre-allocated KV cache and CUDA graphs.

The transformer the engine runs is the fast path's forward, `FastGPT.hidden` (pipeline/gpt/fast/
model.py), on the model's own parameters under `fast.plan.inference_plan`: the same projections,
GELU epilogue and fused residual add + layernorm as training. The engine only supplies what
decoding adds: attention over its KV cache and, for the one-token decode step, a fused embedding.

- KV cache: one tensor (n_layer, max_batch, max_seq_len, 2 * n_embd), allocated once: per slot, the
  key and value halves of c_attn's output as they come out of it, so one copy writes both; attention
  reads them as (batch, head, slot, head_dim) views.
- Prefill: the whole (left-padded) prompt batch in one forward pass, writing cache slots [0, T).
- Decode: one token per sequence per step, written into slot `cur`, attending to slots [0, cur].
- Batches of different prompt lengths are LEFT-padded so that every sequence writes the same cache
  slot at each step; a padded sequence gets position ids that start at 0 at its first real token and
  a mask that hides its pad slots, so it computes exactly what it would compute alone.
- On CUDA the decode step is captured into a CUDA graph and replayed: a d12 step is ~100-160 small
  kernels, and launching them from Python one by one costs more than running them. At batch 1 the
  step is still bound by kernel count, so fused kernels cut it (each used only after a numerical
  self-check against the plain PyTorch ops, else the engine falls back to those): from the plan,
  bias+GELU in cuBLASLt's matmul epilogue (bf16 models) and residual add + bias + the next
  LayerNorm in one Triton kernel (`residual_norm`); the engine's own (`decode_kernels`), position
  ids + both embeddings + the first LayerNorm in one, and a split-K decode-attention kernel that
  writes the new key/value and attends over exactly the slots in use (bounds read from device
  memory, so one graph serves every step). Without it, attention reads a power-of-two window of
  slots, one graph per window.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from pipeline.gpt.decode_kernels import decode_attention, embed_norm, split_count
from pipeline.gpt.fast.model import FastGPT
from pipeline.gpt.fast.plan import inference_plan, self_check

EOT_TOKEN = 50256
MIN_WINDOW = 64
STEP_PREFILL_MAX = 4  # unpadded prompts up to this long are prefilled by replaying the decode graph
# SDPA backends for attention over the cache. Not cuDNN's: it builds a plan for every new shape (~3 ms
# on an H100), and an eager decode step reads one more cache slot than the step before.
CACHE_ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


# ----------------------------------------------------------------------------------------------
# sampling

def filter_logits(logits: torch.Tensor, top_k: Optional[int] = None,
                  top_p: Optional[float] = None) -> torch.Tensor:
    """Logits (..., V) with everything outside the top-k and outside the top-p nucleus set to -inf.

    top-k keeps the k largest logits (ties with the k-th are kept too). top-p keeps the smallest set of
    most likely tokens whose probability reaches p; the most likely token always survives.
    """
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        # A token goes when the tokens ranked above it already hold >= top_p of the mass.
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                top_p: Optional[float] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One next token per row of logits (B, V): argmax when temperature == 0, else a sample."""
    if temperature <= 0:
        return torch.argmax(logits, dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ----------------------------------------------------------------------------------------------
# reference decoder

@torch.no_grad()
def reference_generate(model, prompt: Sequence[int], max_new_tokens: int,
                       stop_token: Optional[int] = EOT_TOKEN) -> List[int]:
    """Greedy decoding the naive way: recompute the full forward pass for every new token (no cache).

    Slow (quadratic work) but obviously right; the engine is tested against it, and the benchmark
    plots it as the "no KV cache" baseline.
    """
    device = next(model.parameters()).device
    idx = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    out: List[int] = []
    for _ in range(max_new_tokens):
        logits, _ = model(idx)
        nxt = int(torch.argmax(logits[0, -1]))
        if stop_token is not None and nxt == stop_token:
            break
        out.append(nxt)
        idx = torch.cat([idx, idx.new_tensor([[nxt]])], dim=1)
    return out


# ----------------------------------------------------------------------------------------------
# the engine

class Engine:
    """Batched KV-cache generation for a GPT. Build once, call `generate` many times.

    The engine runs in the model's device and dtype (convert the model first, e.g. `.to("cuda",
    torch.bfloat16)`). `max_batch_size` and `max_seq_len` size the cache; `cuda_graphs=None` means
    "on when the model is on CUDA". `attn_splits`: programs per (sequence, head) in the decode-
    attention kernel, a power of two; None picks it per batch size from the GPU's SM count (see
    `split_count`), 1 walks each head's whole cache in one program.
    """

    def __init__(self, model, max_batch_size: int = 1, max_seq_len: Optional[int] = None,
                 cuda_graphs: Optional[bool] = None, fuse: bool = True, attn_splits: Optional[int] = None):
        self.model = model.eval()
        cfg = model.config
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.n_layer, self.n_head, self.n_embd = cfg.n_layer, cfg.n_head, cfg.n_embd
        self.head_dim = cfg.n_embd // cfg.n_head
        self.vocab_size = cfg.vocab_size
        self.max_batch_size = int(max_batch_size)
        self.max_seq_len = min(int(max_seq_len or cfg.block_size), cfg.block_size)
        shape = (self.n_layer, self.max_batch_size, self.max_seq_len, 2 * self.n_embd)
        self.kv_cache = torch.zeros(shape, device=self.device, dtype=self.dtype)
        # The transformer is the fast path's forward (`FastGPT.hidden`) under an inference plan;
        # the engine adds attention over its cache and, when decoding, two kernels of its own. Each
        # fused kernel is used only after its self-check reproduced PyTorch's ops on this device.
        self.plan = inference_plan(self.device, self.dtype, fuse)
        self.fast = FastGPT(model, self.plan).eval()
        self.fuse_embed = self.plan.fused_residual and self_check("embed_norm", self.device) is None
        if attn_splits is not None and (attn_splits < 1 or attn_splits & (attn_splits - 1)):
            raise ValueError("attn_splits must be a power of two, got %r" % (attn_splits,))
        self.attn_splits = attn_splits
        self._sm_count = (torch.cuda.get_device_properties(self.device).multi_processor_count
                          if self.device.type == "cuda" else 1)
        self._attn_min_blocks = 1          # fewest 64-slot blocks a split takes (bench knob)
        self._attn_reduce_in_kernel = True  # False: merge the splits in a second launch (bench knob)
        most = max(self._splits(b) for b in range(1, self.max_batch_size + 1))
        self.fuse_attn = fuse and self_check("decode_attention", self.device, (
            self._attn_min_blocks, self._splits(1), 0, self.head_dim)) is None
        # Split partials (acc, max, sum) and per-head arrival counters of the decode attention.
        self._attn_work = torch.empty(self.max_batch_size * self.n_head * most * (self.head_dim + 2),
                                      dtype=torch.float32, device=self.device)
        self._attn_count = torch.zeros(self.max_batch_size * self.n_head, dtype=torch.int32,
                                       device=self.device)
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda"
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.cuda_graphs = bool(cuda_graphs)
        # Static inputs of the decode step: captured graphs read these exact buffers.
        self._tok = torch.zeros(self.max_batch_size, dtype=torch.long, device=self.device)
        self._pad = torch.zeros(self.max_batch_size, dtype=torch.long, device=self.device)
        self._cur = torch.zeros(1, dtype=torch.long, device=self.device)
        self._graphs: Dict[Tuple[int, int], Tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None
        if self.device.type == "cuda":
            self._host_tok = torch.zeros(self.max_batch_size, dtype=torch.long, pin_memory=True)

    @property
    def fused(self) -> Dict[str, bool]:
        """Which fused kernels run (after their self-checks on this device)."""
        return {"gelu_epilogue": self.plan.matmul == "cublaslt", "residual_norm": self.plan.fused_residual,
                "embed_norm": self.fuse_embed, "decode_attention": self.fuse_attn}

    # -- the transformer, with cached attention -------------------------------------------------

    def _forward(self, idx: torch.Tensor, pos: Optional[torch.Tensor], slots: torch.Tensor,
                 mask: Optional[torch.Tensor], window: int, fused_decode: bool = False) -> torch.Tensor:
        """Run tokens idx (B, T) at positions pos (B, T), writing their keys/values into cache slots
        `slots` (T,), attending over cache slots [0, window) under `mask` (B, 1, T, window; None means
        plain causal). `fused_decode`: T == 1 and the attention kernel takes slots and mask from the
        static `_cur`/`_pad` buffers instead (as does the embedding kernel: pos may then be None).
        Returns the logits of the last position, (B, vocab_size)."""
        tr = self.model.transformer
        B = idx.size(0)
        h = None
        if fused_decode and self.fuse_embed:  # pos is None: the kernel derives it from _cur/_pad
            C = self.n_embd
            x = torch.empty(B, 1, C, dtype=self.dtype, device=self.device)
            h = torch.empty_like(x)
            embed_norm(idx, self._cur, self._pad, tr.wte.weight, tr.wpe.weight, tr.h[0].ln_1, x, h)
        else:
            x = tr.wte(idx) + tr.wpe(pos)
        if fused_decode:
            attend = self._decode_attention
        else:
            def attend(layer: int, qkv: torch.Tensor) -> torch.Tensor:
                return self._cached_attention(layer, qkv, slots, mask, window)
        h = self.fast.hidden(x, attend, h)
        return self.model.lm_head(h[:, -1])[:, :self.vocab_size]

    def _cached_attention(self, layer: int, qkv: torch.Tensor, slots: torch.Tensor,
                          mask: Optional[torch.Tensor], window: int) -> torch.Tensor:
        """qkv (B, T, 3C): write k|v into cache slots `slots`, attend over slots [0, window) (SDPA)."""
        B, T = qkv.shape[:2]
        H, D, C = self.n_head, self.head_dim, self.n_embd
        cache = self.kv_cache[layer, :B]                            # (B, S, 2C)
        cache.index_copy_(1, slots, qkv[..., C:])
        q = qkv[..., :C].view(B, T, H, D).transpose(1, 2)
        k = cache[:, :window, :C].view(B, window, H, D).transpose(1, 2)
        v = cache[:, :window, C:].view(B, window, H, D).transpose(1, 2)
        with sdpa_kernel(CACHE_ATTENTION_BACKENDS):
            if mask is None:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return y.transpose(1, 2).reshape(B, T, C)

    def _decode_attention(self, layer: int, qkv: torch.Tensor) -> torch.Tensor:
        """qkv (B, 1, 3C) of the new tokens: the decode-attention kernel (writes k|v into slot _cur)."""
        B, C = qkv.size(0), self.n_embd
        return decode_attention(qkv.view(B, 3 * C), self.kv_cache[layer, :B], self._cur, self._pad[:B], self.n_head,
                            self._attn_work, self._attn_count, self._splits(B), self._attn_min_blocks,
                            self._attn_reduce_in_kernel).view(B, 1, C)

    def _splits(self, B: int) -> int:
        if self.attn_splits is not None:
            return min(self.attn_splits, split_count(1, 1, self.max_seq_len, 10 ** 6))
        return split_count(B, self.n_head, self.max_seq_len, self._sm_count)

    def _prefill(self, idx: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        padded = int(pad.max()) > 0
        if T <= STEP_PREFILL_MAX and not padded and self.cuda_graphs and self.fuse_attn:
            # A short unpadded prompt goes through the captured decode step token by token: a few
            # graph replays (~0.45 ms each for d12) beat one eager forward (~100 launches, ~4 ms).
            for t in range(T):
                self._tok[:B].copy_(idx[:, t])
                logits = self._step(B, t)
            return logits
        steps = torch.arange(T, device=self.device)
        pos = (steps[None, :] - pad[:, None]).clamp(min=0)
        if not padded:
            mask = None  # no padding: the flash kernel's causal mode
        else:
            causal = steps[None, :] <= steps[:, None]                     # (T, T): key <= query
            real_key = steps[None, None, :] >= pad[:, None, None]         # (B, 1, T)
            # Pad queries see only themselves: fully masked rows would give NaNs that leak into
            # the cache of later layers (0 * NaN is NaN).
            keep = (causal[None] & real_key) | torch.eye(T, dtype=torch.bool, device=self.device)[None]
            mask = self._additive(keep[:, None])
        return self._forward(idx, pos, steps, mask, T)

    def _additive(self, keep: torch.Tensor) -> torch.Tensor:
        # Built once per step in the compute dtype, so SDPA does not convert a bool mask in every layer.
        zeros = torch.zeros(keep.shape, dtype=self.dtype, device=self.device)
        return zeros.masked_fill(~keep, float("-inf"))

    def _decode_step(self, B: int, window: int) -> torch.Tensor:
        """One decode step for the first B sequences, reading static buffers only (graph-safe)."""
        tok, pad, cur = self._tok[:B], self._pad[:B], self._cur
        # with the embedding kernel, position ids come from _cur/_pad inside it
        pos = None if self.fuse_attn and self.fuse_embed else (cur - pad).clamp(min=0)[:, None]
        if self.fuse_attn:
            return self._forward(tok[:, None], pos, cur, None, window, fused_decode=True)
        slot = torch.arange(window, device=self.device)
        keep = (slot[None, :] <= cur) & (slot[None, :] >= pad[:, None])  # (B, window)
        return self._forward(tok[:, None], pos, cur, self._additive(keep[:, None, None, :]), window)

    def _window(self, cur: int) -> int:
        """Cache slots the step at `cur` reads: a power of two (>= MIN_WINDOW) covering cur."""
        if self.fuse_attn:
            return self.max_seq_len  # the kernel reads only the slots that exist: one graph fits all
        if not self.cuda_graphs:
            return cur + 1  # eager: read exactly what exists
        w = MIN_WINDOW
        while w < cur + 1:
            w *= 2
        return min(w, self.max_seq_len)

    def _decode(self, B: int, cur: int) -> torch.Tensor:
        """Logits of the step that reads _tok[:B] at cache slot `cur`: the steps `generate` samples
        from (a short prompt's prefill replays the same step through `_step` without sampling)."""
        return self._step(B, cur)

    def _step(self, B: int, cur: int) -> torch.Tensor:
        """One decode step (a graph replay on CUDA)."""
        self._cur.fill_(cur)
        window = self._window(cur)
        if not self.cuda_graphs:
            return self._decode_step(B, window)
        key = (B, window)
        if key not in self._graphs:
            self._graphs[key] = self._capture(B, window)
        graph, logits = self._graphs[key]
        graph.replay()
        return logits

    def _capture(self, B: int, window: int):
        # Warm up on a side stream (as torch.cuda.graphs requires). The warm-up step writes the same
        # cache slot with the same inputs as the real step will, so it changes nothing.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._decode_step(B, window)
        torch.cuda.current_stream().wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self._decode_step(B, window)
        return graph, logits

    # -- public API -----------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
                 stop_token: Optional[int] = EOT_TOKEN,
                 on_token: Optional[Callable[[int, int], None]] = None) -> List[List[int]]:
        """Continue each prompt (a list of token ids) by up to `max_new_tokens` tokens.

        Returns the new tokens of each prompt, without the stop token. `temperature=0` is greedy.
        `on_token(i, token)` is called as each token of sequence i is produced (for streaming).
        """
        B = len(prompts)
        if not 1 <= B <= self.max_batch_size:
            raise ValueError("got %d prompts; this engine takes 1 to %d" % (B, self.max_batch_size))
        lengths = [len(p) for p in prompts]
        if min(lengths) < 1:
            raise ValueError("every prompt needs at least one token (e.g. <|endoftext|>)")
        T = max(lengths)
        if max_new_tokens < 1:
            return [[] for _ in prompts]
        if T + max_new_tokens - 1 > self.max_seq_len:
            raise ValueError("prompt of %d tokens + %d new tokens exceeds the engine's %d positions"
                             % (T, max_new_tokens, self.max_seq_len))
        pad = torch.tensor([T - n for n in lengths], dtype=torch.long, device=self.device)
        idx = torch.tensor([[EOT_TOKEN] * (T - len(p)) + list(p) for p in prompts],
                           dtype=torch.long, device=self.device)
        self._pad[:B].copy_(pad)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)

        outputs: List[List[int]] = [[] for _ in prompts]
        done = [False] * B
        logits = self._prefill(idx, pad)
        for step in range(max_new_tokens):
            tok = sample_next(logits, temperature, top_k, top_p, generator)
            if self.device.type == "cuda":
                # Start the copy to the host, then queue the next step before waiting for it: the
                # GPU computes step t+1 while Python hands token t to the caller.
                host = self._host_tok[:B]
                host.copy_(tok, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record()
            else:
                host = tok
            last = step == max_new_tokens - 1
            if not last:
                self._tok[:B].copy_(tok)
                logits = self._decode(B, T + step)
            if self.device.type == "cuda":
                ready.synchronize()
            for i, t in enumerate(host.tolist()):
                if done[i]:
                    continue
                if stop_token is not None and t == stop_token:
                    done[i] = True
                    continue
                outputs[i].append(t)
                if on_token is not None:
                    on_token(i, t)
            if all(done):
                break
        return outputs
