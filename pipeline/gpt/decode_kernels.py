"""The decode engine's own GPU kernels (Triton): what a one-token decode step adds to the fast forward.

- `embed_norm`: position ids (from the step's static cache cursor and each sequence's left padding),
  both embedding lookups, their add and the first block's LayerNorm in one kernel.
- `decode_attention`: attention of one new token per sequence over the KV cache, split-K
  ("flash-decoding"): at batch 1 a plain one-program-per-head kernel keeps 12 of the GPU's SMs busy
  and walks up to 1024 slots serially, so each head's cache is dealt out to several programs (a
  fixed number per batch size, `split_count`, graph-safe; splits past the slots in use exit at
  once) whose partial softmaxes are merged by whichever program finishes last. It also writes the
  new key/value into the cache; bounds come from device memory, so one CUDA graph serves every step.

`embed_norm_matches` and `decode_attention_matches` are their numerical self-checks against
PyTorch's ops (run through `pipeline.gpt.fast.plan.self_check`); the engine uses PyTorch's ops
where a check fails or Triton is missing.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

try:  # Triton ships with CUDA builds of PyTorch; without it the engine uses PyTorch's ops.
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


def decode_attention(qkv: torch.Tensor, cache: torch.Tensor, cur: torch.Tensor, pad: torch.Tensor,
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


def decode_attention_matches(device: torch.device, head_dim: int, splits: Sequence[int] = (1,),
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
                got = decode_attention(qkv, cache, cur_t, pad, H, work, counters, n, min_blocks)
                if not (torch.allclose(got, want, rtol=1e-4, atol=1e-4) and torch.equal(cache, want_cache)
                        and int(counters.abs().sum()) == 0):
                    return False
        return True
    except Exception:  # any compile/launch failure: fall back to SDPA
        return False


def embed_norm_matches(device: torch.device) -> bool:
    """Whether the fused embedding+LayerNorm kernel runs here and matches PyTorch's ops."""
    if triton is None or device.type != "cuda":
        return False
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        V, P, C = 50, 16, 96  # C not a power of two: exercises the masked tail
        wte, wpe, lw, lb = (torch.randn(shape, generator=g).to(device)
                            for shape in ((V, C), (P, C), (C,), (C,)))
        ln = torch.nn.LayerNorm(C, device=device)
        with torch.no_grad():
            ln.weight.copy_(lw)
            ln.bias.copy_(lb)
        tok = torch.tensor([3, 49, 0], device=device)
        pad = torch.tensor([0, 5, 12], device=device)
        cur = torch.tensor([11], device=device)
        want_x = F.embedding(tok, wte) + F.embedding((cur - pad).clamp(min=0), wpe)
        want_h = F.layer_norm(want_x, (C,), lw, lb, ln.eps)
        got_x, got_h = torch.empty_like(want_x), torch.empty_like(want_x)
        embed_norm(tok, cur, pad, wte, wpe, ln, got_x, got_h)
        return bool(torch.allclose(got_x, want_x, rtol=1e-5, atol=1e-5)
                    and torch.allclose(got_h, want_h, rtol=1e-4, atol=1e-4))
    except Exception:  # any compile/launch failure: fall back to the unfused ops
        return False


def embed_norm(idx: torch.Tensor, cur: torch.Tensor, pad: torch.Tensor, wte: torch.Tensor,
               wpe: torch.Tensor, ln: torch.nn.LayerNorm, x: torch.Tensor, h: torch.Tensor) -> None:
    """x[b] = wte[idx[b]] + wpe[max(cur - pad[b], 0)], h[b] = ln(x[b]), written into x and h (B, 1, C)."""
    C = x.size(-1)
    _embed_ln_kernel[(x.size(0),)](idx, cur, pad, wte, wpe, ln.weight, ln.bias, x, h, C, ln.eps,
                                   BLOCK=triton.next_power_of_2(C))
