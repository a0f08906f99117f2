"""Fast text generation for `pipeline.gpt.model.GPT`: a pre-allocated KV cache and CUDA graphs.

The engine borrows the model's own modules (embeddings, LayerNorms, Linears, MLPs) and only replaces
the attention with a cached one, so whatever weights the model holds are the weights that generate.

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
  self-check against the plain PyTorch ops, else the engine falls back to those): bias+GELU in
  cuBLASLt's matmul epilogue; residual add + bias + the next LayerNorm in one Triton kernel (the
  trainer's `residual_norm` forward);
  position ids + both embeddings + the first LayerNorm in one; and a Triton decode-attention
  kernel that writes the new key/value and attends over exactly the slots in use (bounds read from
  device memory, so one graph serves every step). Without it, attention reads a power-of-two
  window of slots, one graph per window.
- Decode attention is split-K ("flash-decoding"): at batch 1 a plain one-program-per-head kernel
  keeps 12 of the GPU's SMs busy and walks up to 1024 slots serially, so each head's cache is dealt
  out to several programs (a fixed number per batch size, graph-safe; splits past the slots in use
  exit at once) whose partial softmaxes are merged by whichever program finishes last.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

EOT_TOKEN = 50256
MIN_WINDOW = 64
STEP_PREFILL_MAX = 4  # unpadded prompts up to this long are prefilled by replaying the decode graph


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


def _gelu_epilogue_works(device: torch.device) -> bool:
    """Whether torch._addmm_activation(use_gelu=True) computes bias + tanh-GELU here.

    On CUDA it maps to cuBLASLt's GELU epilogue (the tanh approximation GPT-2 uses); elsewhere it may
    be exact GELU or missing. Checked numerically once, so the fused path is only ever a speed-up.
    """
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        x, w, b = (torch.randn(s, generator=g).to(device) for s in ((8, 64), (128, 64), (128,)))
        fused = torch._addmm_activation(b, x, w.t(), use_gelu=True)
        want = F.gelu(F.linear(x, w, b), approximate="tanh")
        return bool(torch.allclose(fused, want, rtol=1e-5, atol=1e-5))
    except (RuntimeError, AttributeError, TypeError):
        return False


try:  # Triton ships with CUDA builds of PyTorch; without it the engine uses plain PyTorch ops.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

if triton is not None:
    @triton.jit
    def _layer_norm_row(s, cols, m, W, LB, H, C, eps):
        """Store LN(s) of one row (s: float32, masked lanes zero) to H."""
        mean = tl.sum(s, axis=0) / C
        d = tl.where(m, s - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / C + eps)
        w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
        lb = tl.load(LB + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(H + cols, (d * rstd * w + lb).to(H.dtype.element_ty), mask=m)


    @triton.jit
    def _embed_ln_kernel(TOK, CUR, PAD, WTE, WPE, W, LB, XO, H, C, eps, BLOCK: tl.constexpr):
        """Decode input of sequence b: xo = wte[tok] + wpe[max(cur - pad, 0)] (rounded to the dtype,
        as the unfused add would), h = LN(xo): position ids, two lookups, add and ln_1 in one."""
        b = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        m = cols < C
        tok = tl.load(TOK + b)
        pos = tl.maximum(tl.load(CUR) - tl.load(PAD + b), 0)
        e = tl.load(WTE + tok * C + cols, mask=m, other=0.0).to(tl.float32)
        p = tl.load(WPE + pos * C + cols, mask=m, other=0.0).to(tl.float32)
        s = (e + p).to(XO.dtype.element_ty)
        tl.store(XO + b * C + cols, s, mask=m)
        _layer_norm_row(s.to(tl.float32), cols, m, W, LB, H + b * C, C, eps)


    @triton.jit
    def _split_plan(cur, pad, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, min_blocks):
        """How the cached slots [pad, cur) of one sequence are dealt out: the first BLOCK_N-slot block
        that holds a real slot, the blocks per split (at least `min_blocks`), the splits in use."""
        first = pad // BLOCK_N
        n_blocks = tl.cdiv(cur, BLOCK_N) - first  # 0 at cur == 0 (a prompt's first token)
        per = tl.maximum(tl.cdiv(n_blocks, SPLITS), min_blocks)
        return first, per, tl.maximum(tl.cdiv(n_blocks, per), 1)


    @triton.jit
    def _combine_splits(WS, OUT, pid, n_active, d, D: tl.constexpr, SPLITS: tl.constexpr):
        """Merge the partial softmaxes (acc, max, sum) of the first n_active splits of one (sequence,
        head) into its attention output. Loads skip L1 (.cg): other programs wrote these rows."""
        sp = tl.arange(0, SPLITS)
        live = sp < n_active
        rows = WS + (pid * SPLITS + sp) * (D + 2)
        m = tl.load(rows + D, mask=live, other=-1e30, cache_modifier=".cg")
        l = tl.load(rows + D + 1, mask=live, other=0.0, cache_modifier=".cg")
        acc = tl.load(rows[:, None] + d[None, :], mask=live[:, None], other=0.0, cache_modifier=".cg")
        w = tl.exp(m - tl.max(m, axis=0))  # split 0 holds the new token's finite score: max is finite
        out = tl.sum(w[:, None] * acc, axis=0) / tl.sum(w * l, axis=0)
        tl.store(OUT + d, out.to(OUT.dtype.element_ty))


    @triton.jit
    def _decode_attn_kernel(QKV, CACHE, CUR, PAD, OUT, WS, CNT, stride_q, stride_cb, stride_cs, C, H,
                            scale, min_blocks, D: tl.constexpr, BLOCK_N: tl.constexpr,
                            SPLITS: tl.constexpr, REDUCE: tl.constexpr):
        """Attention of one new token per sequence (flash-decoding): program (i, s) handles split s of
        the cache of (sequence, head) i = b * H + h.

        Split 0 writes the token's key/value into cache slot `cur` and starts its running softmax at
        that token (from registers, so nothing reads what was just stored). Each split walks its
        share of the cached slots [pad, cur) block by block with an online softmax. One split in use
        (short contexts, or SPLITS == 1): it writes the output itself. Otherwise each split stores
        (acc, max, sum) in the workspace WS and, with REDUCE, bumps the counter CNT[i]; the program
        that bumps it last merges the partials and resets the counter, so no second kernel is
        launched (without REDUCE, `_combine_kernel` merges them). Bounds come from device memory, so
        one CUDA graph serves every step and reads only the slots that exist.
        """
        pid = tl.program_id(0)
        split = tl.program_id(1)
        b = pid // H
        h = pid % H
        cur = tl.load(CUR)
        pad = tl.load(PAD + b)
        first, per, n_active = _split_plan(cur, pad, BLOCK_N, SPLITS, min_blocks)
        d = tl.arange(0, D)
        row = QKV + b * stride_q + h * D + d
        q = tl.load(row).to(tl.float32)
        k_new = tl.load(row + C)
        v_new = tl.load(row + 2 * C)
        base = CACHE + b * stride_cb + h * D
        is_first = split == 0
        if split == 0:
            tl.store(base + cur * stride_cs + d, k_new)
            tl.store(base + cur * stride_cs + C + d, v_new)
        # -1e30, not -inf, for the other splits: exp(m_old - m_new) stays 0/1, never NaN
        m_i = tl.where(is_first, tl.sum(q * k_new.to(tl.float32), axis=0) * scale, -1e30)
        l_i = tl.where(is_first, 1.0, 0.0)
        acc = tl.where(is_first, v_new.to(tl.float32), 0.0)
        lo = (first + split * per) * BLOCK_N
        hi = tl.minimum(lo + per * BLOCK_N, cur)
        for start in range(lo, hi, BLOCK_N):  # empty for splits past the last one in use
            offs = start + tl.arange(0, BLOCK_N)
            valid = (offs < cur) & (offs >= pad)
            ptrs = base + offs[:, None] * stride_cs + d[None, :]
            k = tl.load(ptrs, mask=valid[:, None], other=0.0).to(tl.float32)
            s = tl.sum(k * q[None, :], axis=1) * scale
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=0))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new)
            v = tl.load(ptrs + C, mask=valid[:, None], other=0.0).to(tl.float32)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
            m_i = m_new
        out = OUT + b * C + h * D
        if n_active == 1:
            if split == 0:
                tl.store(out + d, (acc / l_i).to(OUT.dtype.element_ty))
        elif split < n_active:
            ws = WS + (pid * SPLITS + split) * (D + 2)
            tl.store(ws + d, acc)
            tl.store(ws + D, m_i)
            tl.store(ws + D + 1, l_i)
            if REDUCE:
                # Every thread's stores are done (barrier) before one thread's acq_rel atomic
                # publishes them GPU-wide; the program that sees n_active - 1 comes last.
                tl.debug_barrier()
                ticket = tl.atomic_add(CNT + pid, 1, sem="acq_rel", scope="gpu")
                if ticket == n_active - 1:
                    tl.store(CNT + pid, 0)  # ready for the next launch
                    _combine_splits(WS, out, pid, n_active, d, D, SPLITS)


    @triton.jit
    def _combine_kernel(CUR, PAD, OUT, WS, C, H, min_blocks, D: tl.constexpr, BLOCK_N: tl.constexpr,
                        SPLITS: tl.constexpr):
        """The merge as a second launch (REDUCE=False): one program per (sequence, head)."""
        pid = tl.program_id(0)
        b = pid // H
        _, _, n_active = _split_plan(tl.load(CUR), tl.load(PAD + b), BLOCK_N, SPLITS, min_blocks)
        if n_active > 1:
            _combine_splits(WS, OUT + b * C + (pid % H) * D, pid, n_active, tl.arange(0, D), D, SPLITS)


ATTN_BLOCK = 64  # cache slots per step of the decode-attention loop


def split_count(batch: int, n_head: int, max_seq_len: int, sm_count: int) -> int:
    """How many programs share the cache of one (sequence, head) in decode attention: enough for
    about two programs per SM over the whole batch, a power of two, at most one per 64-slot block.
    Batch 1 on a 132-SM H100 with 12 heads: 16; batch 64: 1 (768 programs already fill the GPU)."""
    want = -(-2 * sm_count // (batch * n_head))
    cap = min(want, -(-max_seq_len // ATTN_BLOCK))
    splits = 1
    while splits * 2 <= cap:
        splits *= 2
    return splits


def _decode_attn(qkv: torch.Tensor, cache: torch.Tensor, cur: torch.Tensor, pad: torch.Tensor,
                 n_head: int, work: Optional[torch.Tensor] = None, counters: Optional[torch.Tensor] = None,
                 splits: int = 1, min_blocks: int = 1, reduce_in_kernel: bool = True) -> torch.Tensor:
    """qkv (B, 3C) of the new tokens, cache (B, S, 2C) -> attention output (B, C); see the kernel.

    With splits > 1, `work` (float32, >= B * n_head * splits * (head_dim + 2) elements) holds the
    partial results and `counters` (int32, >= B * n_head, zero) the per-head arrival counts."""
    B, C = qkv.size(0), qkv.size(1) // 3
    D = C // n_head
    out = torch.empty(B, C, dtype=qkv.dtype, device=qkv.device)
    if work is None or counters is None:  # a direct call with one split never touches them
        if splits > 1:
            raise ValueError("splits > 1 needs the work and counters buffers")
        work = torch.empty(1, dtype=torch.float32, device=qkv.device)
        counters = torch.zeros(1, dtype=torch.int32, device=qkv.device)
    # one split: no partials, so leave the atomic and the merge out of the compiled kernel
    _decode_attn_kernel[(B * n_head, splits)](
        qkv, cache, cur, pad, out, work, counters, qkv.stride(0), cache.stride(0), cache.stride(1), C,
        n_head, D ** -0.5, min_blocks, D=D, BLOCK_N=ATTN_BLOCK, SPLITS=splits,
        REDUCE=reduce_in_kernel and splits > 1)
    if splits > 1 and not reduce_in_kernel:
        _combine_kernel[(B * n_head,)](cur, pad, out, work, C, n_head, min_blocks, D=D, BLOCK_N=ATTN_BLOCK,
                                       SPLITS=splits)
    return out


def _decode_attn_works(device: torch.device, head_dim: int, splits: Sequence[int] = (1,),
                       min_blocks: int = 1) -> bool:
    """Whether the decode-attention kernel runs here, matches SDPA and writes the cache, for each
    split count in `splits` (twice each: the arrival counters must come back to zero)."""
    if triton is None or device.type != "cuda" or head_dim & (head_dim - 1):
        return False
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        # cur spans many blocks so every split gets work; pad 70 skips a block and masks part of one
        B, H, D, S, cur = 2, 3, head_dim, 1100, 1030
        C = H * D
        qkv = torch.randn(B, 3 * C, generator=g).to(device)
        cache0 = torch.randn(B, S, 2 * C, generator=g).to(device)
        pad = torch.tensor([0, 70], device=device)
        want_cache = cache0.clone()
        want_cache[:, cur] = qkv[:, C:]
        q = qkv[:, :C].view(B, H, 1, D)
        k = want_cache[:, :cur + 1, :C].view(B, cur + 1, H, D).transpose(1, 2)
        v = want_cache[:, :cur + 1, C:].view(B, cur + 1, H, D).transpose(1, 2)
        keep = (torch.arange(cur + 1, device=device)[None, :] >= pad[:, None])[:, None, None, :]
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).reshape(B, C)
        cur_t = torch.tensor([cur], device=device)
        for n in splits:
            work = torch.empty(B * H * n * (D + 2), dtype=torch.float32, device=device)
            counters = torch.zeros(B * H, dtype=torch.int32, device=device)
            for _ in range(2):
                cache = cache0.clone()
                got = _decode_attn(qkv, cache, cur_t, pad, H, work, counters, n, min_blocks)
                if not (torch.allclose(got, want, rtol=1e-4, atol=1e-4) and torch.equal(cache, want_cache)
                        and int(counters.abs().sum()) == 0):
                    return False
        return True
    except Exception:  # any compile/launch failure: fall back to SDPA
        return False


def _add_ln_works(device: torch.device) -> bool:
    """Whether `residual_norm`'s forward kernel (the trainer's fused residual add + LayerNorm)
    runs here and matches PyTorch's ops."""
    if triton is None or device.type != "cuda":
        return False
    try:
        from pipeline.gpt.residual_norm import residual_norm_forward
        g = torch.Generator(device="cpu").manual_seed(0)
        C = 96  # not a power of two: exercises the masked tail
        x, y, w, b, lw, lb = (torch.randn(shape, generator=g).to(device)
                              for shape in ((5, C), (5, C), (C, C), (C,), (C,), (C,)))
        want_x = x + F.linear(y, w, b)
        want_h = F.layer_norm(want_x, (C,), lw, lb, 1e-5)
        got_x, got_h, _, _ = residual_norm_forward(x, F.linear(y, w), b, lw, lb, C, 1e-5)
        return bool(torch.allclose(got_x, want_x, rtol=1e-5, atol=1e-5)
                    and torch.allclose(got_h, want_h, rtol=1e-4, atol=1e-4))
    except Exception:  # any compile/launch failure: fall back to the unfused ops
        return False


def _embed_ln_works(device: torch.device) -> bool:
    """Whether the fused embedding+LayerNorm kernel runs here and matches PyTorch's ops."""
    if triton is None or device.type != "cuda":
        return False
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        V, P, C = 50, 16, 96  # C not a power of two: exercises the masked tail
        wte, wpe, lw, lb = (torch.randn(shape, generator=g).to(device)
                            for shape in ((V, C), (P, C), (C,), (C,)))
        tok = torch.tensor([3, 49, 0], device=device)
        pad = torch.tensor([0, 5, 12], device=device)
        cur = torch.tensor([11], device=device)
        want_x = F.embedding(tok, wte) + F.embedding((cur - pad).clamp(min=0), wpe)
        want_h = F.layer_norm(want_x, (C,), lw, lb, 1e-5)
        got_x, got_h = torch.empty_like(want_x), torch.empty_like(want_x)
        _embed_ln_kernel[(3,)](tok, cur, pad, wte, wpe, lw, lb, got_x, got_h, C, 1e-5,
                               BLOCK=triton.next_power_of_2(C))
        return bool(torch.allclose(got_x, want_x, rtol=1e-5, atol=1e-5)
                    and torch.allclose(got_h, want_h, rtol=1e-4, atol=1e-4))
    except Exception:  # any compile/launch failure: fall back to the unfused ops
        return False


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
        # Fused kernels (CUDA only), each used only after it reproduced the unfused ops numerically.
        self.fuse_gelu = fuse and _gelu_epilogue_works(self.device)
        self.fuse_ln = fuse and _add_ln_works(self.device)
        self.fuse_embed = fuse and _embed_ln_works(self.device)
        if attn_splits is not None and (attn_splits < 1 or attn_splits & (attn_splits - 1)):
            raise ValueError("attn_splits must be a power of two, got %r" % (attn_splits,))
        self.attn_splits = attn_splits
        self._sm_count = (torch.cuda.get_device_properties(self.device).multi_processor_count
                          if self.device.type == "cuda" else 1)
        self._attn_min_blocks = 1          # fewest 64-slot blocks a split takes (bench knob)
        self._attn_reduce_in_kernel = True  # False: merge the splits in a second launch (bench knob)
        most = max(self._splits(b) for b in range(1, self.max_batch_size + 1))
        self.fuse_attn = fuse and self.device.type == "cuda" and _decode_attn_works(
            self.device, self.head_dim, sorted({1, self._splits(1)}), self._attn_min_blocks)
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

    # -- the transformer, with cached attention -------------------------------------------------

    def _forward(self, idx: torch.Tensor, pos: Optional[torch.Tensor], slots: torch.Tensor,
                 mask: Optional[torch.Tensor], window: int, fused_decode: bool = False) -> torch.Tensor:
        """Run tokens idx (B, T) at positions pos (B, T), writing their keys/values into cache slots
        `slots` (T,), attending over cache slots [0, window) under `mask` (B, 1, T, window; None means
        plain causal). `fused_decode`: T == 1 and the attention kernel takes slots and mask from the
        static `_cur`/`_pad` buffers instead (as does the embedding kernel: pos may then be None).
        Returns the logits of the last position, (B, vocab_size)."""
        tr = self.model.transformer
        B, T = idx.shape
        H, D, C = self.n_head, self.head_dim, self.n_embd
        blocks = tr.h
        if fused_decode and self.fuse_embed:  # pos is None: the kernel derives it from _cur/_pad
            x = torch.empty(B, 1, C, dtype=self.dtype, device=self.device)
            h = torch.empty_like(x)
            ln = blocks[0].ln_1
            _embed_ln_kernel[(B,)](idx, self._cur, self._pad, tr.wte.weight, tr.wpe.weight, ln.weight,
                                   ln.bias, x, h, C, ln.eps, BLOCK=triton.next_power_of_2(C))
        else:
            x = tr.wte(idx) + tr.wpe(pos)
            h = blocks[0].ln_1(x)
        for layer, block in enumerate(blocks):
            qkv = block.attn.c_attn(h)                                  # (B, T, 3C)
            cache = self.kv_cache[layer, :B]                            # (B, S, 2C)
            if fused_decode:
                y = _decode_attn(qkv.view(B, 3 * C), cache, self._cur, self._pad[:B], H, self._attn_work,
                                 self._attn_count, self._splits(B), self._attn_min_blocks,
                                 self._attn_reduce_in_kernel).view(B, 1, C)
                x, h = self._residual_ln(x, y, block.attn.c_proj, block.ln_2)
                x, h = self._mlp(x, h, layer)
                continue
            cache.index_copy_(1, slots, qkv[..., C:])
            q = qkv[..., :C].view(B, T, H, D).transpose(1, 2)
            k = cache[:, :window, :C].view(B, window, H, D).transpose(1, 2)
            v = cache[:, :window, C:].view(B, window, H, D).transpose(1, 2)
            if mask is None:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            y = y.transpose(1, 2).reshape(B, T, C)
            x, h = self._residual_ln(x, y, block.attn.c_proj, block.ln_2)
            x, h = self._mlp(x, h, layer)
        return self.model.lm_head(h[:, -1])[:, :self.vocab_size]

    def _splits(self, B: int) -> int:
        if self.attn_splits is not None:
            return min(self.attn_splits, split_count(1, 1, self.max_seq_len, 10 ** 6))
        return split_count(B, self.n_head, self.max_seq_len, self._sm_count)

    def _mlp(self, x: torch.Tensor, h: torch.Tensor, layer: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The MLP of `layer` on h = ln_2(x); returns the new residual x and the next LayerNorm of it."""
        tr = self.model.transformer
        block = tr.h[layer]
        fc = block.mlp.c_fc
        if self.fuse_gelu:  # bias + tanh-GELU in the matmul's epilogue (cuBLASLt), one kernel
            f = torch._addmm_activation(fc.bias, h.reshape(-1, self.n_embd), fc.weight.t(),
                                        use_gelu=True).view(*h.shape[:-1], -1)
        else:
            f = F.gelu(fc(h), approximate="tanh")
        next_ln = tr.h[layer + 1].ln_1 if layer + 1 < len(tr.h) else tr.ln_f
        return self._residual_ln(x, f, block.mlp.c_proj, next_ln)

    def _residual_ln(self, x: torch.Tensor, inp: torch.Tensor, proj, ln) -> Tuple[torch.Tensor, torch.Tensor]:
        """x + proj(inp), and the LayerNorm of that: the residual add of one sub-layer and the
        normalisation opening the next. On CUDA the trainer's fused op (`residual_norm`) does the
        bias add, the residual add and the LayerNorm in one kernel (three launches of a few
        microseconds each at batch 1, otherwise)."""
        if not self.fuse_ln:
            x = x + proj(inp)
            return x, ln(x)
        from pipeline.gpt.residual_norm import residual_norm_forward
        C = x.size(-1)
        out = F.linear(inp, proj.weight)
        new_x, h, _, _ = residual_norm_forward(x.reshape(-1, C), out.reshape(-1, C), proj.bias, ln.weight,
                                               ln.bias, C, ln.eps)
        return new_x.view(x.shape), h.view(x.shape)

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
        if self.fuse_attn and self.fuse_embed:
            return self._forward(tok[:, None], None, cur, None, window, fused_decode=True)
        pos = (cur - pad).clamp(min=0)[:, None]
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
        """Logits of the step that reads _tok[:B] at cache slot `cur`."""
        return self._step(B, cur)

    def _step(self, B: int, cur: int) -> torch.Tensor:
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
