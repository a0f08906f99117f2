"""The trainer's optimizer: PyTorch's AdamW, with llm.c's gradient clip folded into one Triton
update per tensor kind and, optionally, bf16 mirrors of the matmul weights.

**Clip and update.** `clip_and_step()` computes the global gradient norm and applies AdamW to
gradients divided by max((norm + 1e-6) / max_norm, 1), which is `clip_grad_norm_` followed by
`step()`. PyTorch's fused AdamW can take that divisor as `grad_scale`, but then also writes the
divided gradients back (4 bytes per parameter more); here one Triton launch per (parameter group,
gradient dtype) reads every tensor through a table of (tensor, offset) chunks, reads the divisor from
device memory and writes only the parameter and both moments: 1.35 ms against 1.54 ms on an H100
for GPT-2 124M. The norm is one more launch over the same tables.

**bf16 mirrors** (`attach_bf16_mirrors`). Under bf16 autocast every matmul weight is cast from its
float32 master copy in every forward (read 4 bytes, write 2), and its bf16 weight gradient is cast
back to float32 in backward (read 2, write 4). A mirror is a bf16 leaf tensor that the model's
cuBLASLt path reads instead of casting (`cublaslt.bf16_weight`); autograd leaves the weight
gradient on it in bf16, the update reads that gradient directly and writes the new bf16 copy next
to the float32 parameter. With one micro-batch per step this is exact: the cast gradient was the
bf16 gradient's exact float32 value, and the mirror is the same round-to-nearest-even cast the
forward did. With gradient accumulation the micro-batches' gradients would add up in bf16 (as
llm.c's do), so the trainer attaches mirrors only without it (`-d` = `-b` x `-t`) and otherwise
keeps accumulating in float32.

The layers whose input carries cuBLASLt's ones column (c_attn, c_fc: `cublaslt.with_ones`) get
their weight gradient and bias gradient from one matmul, as the block [dW | db | 0...]. Their
mirror holds [W | b | 0...] in rows as wide as that input's (`ones_width(K)`), and the matmul writes
the block into a gradient of the mirror's shape, so it is the mirror's gradient as it comes out:
slicing dW out of it would leave a strided gradient that autograd copies before handing it over.
The update reads each parameter's gradient and writes its bf16 value through a strided view of
the mirror (row length, row stride, offset: `MirrorView`). The tied classifier's mirror is read by
the loss only (the embedding lookup keeps reading float32 rows); its gradient adds to the
embedding's in the update.

The state (`step`, `exp_avg`, `exp_avg_sq` per parameter) and `state_dict()` are PyTorch's, so
checkpoints move between this and `torch.optim.AdamW`. Off CUDA, without Triton, or with
`triton=False` (the plan's `adamw="torch"`), the same step runs through PyTorch's AdamW (its fused
kernel on CUDA).
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

# Launch shapes timed on an H100 over GPT-2 124M's tensors: the update at 2048 elements x 16
# warps per program (1.348 ms; 4096 x 4 warps 1.54, larger blocks spill registers), the norm at
# 16384 x 8 (0.169 ms against PyTorch's 0.213).
UPDATE_BLOCK, UPDATE_WARPS = 2048, 16
NORM_BLOCK, NORM_WARPS = 16384, 8

if triton is not None:
    @triton.jit
    def _mirror_offsets(idx, views, t, ROW: tl.constexpr):
        """Element idx of tensor t inside its gradient / mirror: itself (ROW 0), or through the
        view (row length ROW; row stride and offset from `views`) of a weight or bias inside a
        [W | b | 0...] mirror. ROW is a compile-time constant so that the division is a multiply and shift."""
        if ROW > 0:
            idx = (idx // ROW) * tl.load(views + 2 * t) + idx % ROW + tl.load(views + 2 * t + 1)
        return idx

    @triton.jit
    def _load_grad(g_ptrs, g2_ptrs, t, offsets, mask, GRAD_BF16: tl.constexpr, ADD_MIRROR_GRAD: tl.constexpr):
        """Tensor t's gradient at offsets, in float32; with ADD_MIRROR_GRAD (a tied weight) its
        own float32 gradient plus its mirror's bf16 one."""
        if GRAD_BF16:
            g_ptr = tl.load(g_ptrs + t).to(tl.pointer_type(tl.bfloat16))
        else:
            g_ptr = tl.load(g_ptrs + t).to(tl.pointer_type(tl.float32))
        g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        if ADD_MIRROR_GRAD:
            g2_ptr = tl.load(g2_ptrs + t).to(tl.pointer_type(tl.bfloat16))
            g += tl.load(g2_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        return g

    @triton.jit
    def _sum_squares(chunk_tensor, chunk_start, numels, g_ptrs, g2_ptrs, views, partials, partial_offset,
                     GRAD_BF16: tl.constexpr, ADD_MIRROR_GRAD: tl.constexpr, ROW: tl.constexpr,
                     BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        t = tl.load(chunk_tensor + pid)
        start = tl.load(chunk_start + pid)
        n = tl.load(numels + t)
        idx = start + tl.arange(0, BLOCK)
        g = _load_grad(g_ptrs, g2_ptrs, t, _mirror_offsets(idx, views, t, ROW), idx < n, GRAD_BF16,
                       ADD_MIRROR_GRAD)
        tl.store(partials + partial_offset + pid, tl.sum(g * g, axis=0))

    @triton.jit
    def _clip_divisor(partials, n_partials, norm_ptr, divisor_ptr, max_norm, BLOCK: tl.constexpr):
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for start in range(0, n_partials, BLOCK):
            idx = start + tl.arange(0, BLOCK)
            acc += tl.load(partials + idx, mask=idx < n_partials, other=0.0)
        norm = tl.sqrt(tl.sum(acc, axis=0))
        tl.store(norm_ptr, norm)
        tl.store(divisor_ptr, tl.maximum((norm + 1e-6) / max_norm, 1.0))

    @triton.jit
    def _adamw_update(chunk_tensor, chunk_start, numels, p_ptrs, g_ptrs, g2_ptrs, m_ptrs, v_ptrs, mirror_ptrs,
                      views, step_ptr, lr_ptr, divisor_ptr, beta1, beta2, eps, weight_decay,
                      GRAD_BF16: tl.constexpr, ADD_MIRROR_GRAD: tl.constexpr, MIRROR: tl.constexpr,
                      ROW: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        t = tl.load(chunk_tensor + pid)
        start = tl.load(chunk_start + pid)
        n = tl.load(numels + t)
        p_ptr = tl.load(p_ptrs + t).to(tl.pointer_type(tl.float32))
        m_ptr = tl.load(m_ptrs + t).to(tl.pointer_type(tl.float32))
        v_ptr = tl.load(v_ptrs + t).to(tl.pointer_type(tl.float32))
        step = tl.load(step_ptr)
        lr = tl.load(lr_ptr)
        divisor = tl.load(divisor_ptr)
        idx = start + tl.arange(0, BLOCK)
        mask = idx < n
        mirror_idx = _mirror_offsets(idx, views, t, ROW)  # the gradient lives on the mirror
        p = tl.load(p_ptr + idx, mask=mask)
        g = _load_grad(g_ptrs, g2_ptrs, t, mirror_idx, mask, GRAD_BF16, ADD_MIRROR_GRAD) / divisor
        m = tl.load(m_ptr + idx, mask=mask)
        v = tl.load(v_ptr + idx, mask=mask)
        # PyTorch's AdamW, in its order: decoupled decay, moments, bias-corrected step
        p = p * (1.0 - lr * weight_decay)
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * g * g
        bias_correction1 = 1.0 - tl.exp2(step * tl.log2(beta1))
        bias_correction2_sqrt = tl.sqrt(1.0 - tl.exp2(step * tl.log2(beta2)))
        p = p - (lr / bias_correction1) * m / (tl.sqrt(v) / bias_correction2_sqrt + eps)
        tl.store(p_ptr + idx, p, mask=mask)
        tl.store(m_ptr + idx, m, mask=mask)
        tl.store(v_ptr + idx, v, mask=mask)
        if MIRROR:
            w_ptr = tl.load(mirror_ptrs + t).to(tl.pointer_type(tl.bfloat16))
            # rounded to nearest even, as PyTorch's .to(torch.bfloat16) in the forward it replaces
            tl.store(w_ptr + mirror_idx, p.to(tl.bfloat16, fp_downcast_rounding="rtne"), mask=mask)


def _device_array(values, dtype, device) -> torch.Tensor:
    # through pinned memory, so that the upload never waits for the GPU's queued work
    return torch.tensor(values, dtype=dtype).pin_memory().to(device, non_blocking=True)


class _Launch:
    """One kernel launch's worth of tensors (one kind: same group, gradient dtype, tied or not,
    mirrored or not, same mirror row length): the chunk tables and device arrays of the tensors'
    addresses (and, in a [W | b] mirror, their row strides and offsets). Gradients may move between
    steps without CUDA graphs (`set_grads` re-uploads only their addresses); the rest stay put."""

    def __init__(self, group, params, exp_avgs, exp_avg_sqs, mirrors, views, grad_bf16, add_mirror_grad):
        device = params[0].device

        def chunks(block):
            pairs = [(i, s) for i, p in enumerate(params) for s in range(0, p.numel(), block)]
            return (_device_array([c[0] for c in pairs], torch.int32, device),
                    _device_array([c[1] for c in pairs], torch.int32, device))
        self.group, self.grad_bf16, self.has_mirrors = group, grad_bf16, bool(mirrors)
        self.add_mirror_grad = add_mirror_grad
        self.numels = _device_array([p.numel() for p in params], torch.int32, device)
        self.strided = any(v is not None and v.strided for v in views)
        self.row = views[0].row if self.strided else 0  # one row length per launch (its kind)
        self.views = _device_array([x for v in views for x in (v.row_stride, v.offset)], torch.int32,
                                   device) if self.strided else self.numels
        self.update_chunks = chunks(UPDATE_BLOCK)
        self.norm_chunks = chunks(NORM_BLOCK)
        self.p_ptrs = _device_array([t.data_ptr() for t in params], torch.int64, device)
        self.m_ptrs = _device_array([t.data_ptr() for t in exp_avgs], torch.int64, device)
        self.v_ptrs = _device_array([t.data_ptr() for t in exp_avg_sqs], torch.int64, device)
        self.mirror_ptrs = (_device_array([t.data_ptr() for t in mirrors], torch.int64, device)
                            if mirrors else self.p_ptrs)
        self.grad_addresses = None
        self.g_ptrs = self.g2_ptrs = None

    def set_grads(self, grads) -> None:
        """grads: per tensor (gradient, the mirror's gradient that adds to it or None)."""
        addresses = [(g.data_ptr(), g2.data_ptr() if g2 is not None else 0) for g, g2 in grads]
        if addresses != self.grad_addresses:
            if torch.cuda.is_current_stream_capturing():
                raise RuntimeError("AdamW gradient addresses must be uploaded before CUDA-graph "
                                   "capture (prepare())")
            self.g_ptrs = _device_array([a for a, _ in addresses], torch.int64, self.p_ptrs.device)
            self.g2_ptrs = (_device_array([b for _, b in addresses], torch.int64, self.p_ptrs.device)
                            if self.add_mirror_grad else self.g_ptrs)
            self.grad_addresses = addresses


class MirrorView(NamedTuple):
    """Where a parameter's values sit in its mirror (and its gradient in the mirror's gradient):
    element i at (i // row) * row_stride + i % row + offset."""
    mirror: torch.Tensor
    row: int
    row_stride: int
    offset: int
    adds: bool = False  # the mirror's gradient adds to the parameter's own (a tied weight)

    @property
    def strided(self) -> bool:
        return self.row_stride != self.row or self.offset != 0

    def of(self, tensor: torch.Tensor, shape) -> torch.Tensor:
        """The parameter-shaped view of `tensor` (the mirror or its gradient)."""
        if not self.strided:
            return tensor.view(shape)
        rows = int(torch.Size(shape).numel()) // self.row
        return tensor.as_strided((rows, self.row), (self.row_stride, 1),
                                 tensor.storage_offset() + self.offset).view(shape)


def clip_and_torch_step(optimizer: torch.optim.Optimizer, max_norm: float = 1.0,
                        params=None) -> torch.Tensor:
    """llm.c's global-norm clip over `params` (default: the optimizer's), then a PyTorch
    optimizer's step; returns the norm before clipping. PyTorch's fused AdamW takes the clip as its
    divisor (`grad_scale`, every gradient divided by max((norm + 1e-6) / max_norm, 1), exactly
    clip_grad_norm_'s factor) instead of a pass that rescales the gradients in memory; any other
    optimizer gets clip_grad_norm_."""
    if params is None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
    params = [p for p in params if p.grad is not None]
    if isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults.get("fused"):
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        optimizer.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)
        try:
            optimizer.step()
        finally:
            optimizer.grad_scale = None
        return norm
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()
    return norm


class AdamW(torch.optim.AdamW):
    """`torch.optim.AdamW` plus `clip_and_step()` (Triton on CUDA unless `triton=False`) and bf16
    weight mirrors."""

    def __init__(self, params, triton: bool = True, **kwargs):
        super().__init__(params, **kwargs)
        self.use_triton = bool(triton)
        self.mirrors: Dict[torch.Tensor, MirrorView] = {}  # float32 parameter -> its place in a bf16 leaf
        self._launches: Optional[List[_Launch]] = None
        self._launch_key = None
        self._lr_tensor: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------------------ mirrors

    def attach_bf16_mirrors(self, modules, bias_column_modules=(), tied_modules=()) -> int:
        """Give each module (nn.Linear, parameters of this optimizer) a bf16 mirror, registered on
        it as the non-persistent buffer `weight_bf16`; returns how many modules.

        - `modules`: the weight's (N, K) copy, whose gradient replaces the weight's;
        - `bias_column_modules` (layers fed cuBLASLt's ones column): one (N, ones_width(K)) leaf
          [W | b | 0...] holding the weight and the bias, whose gradient is the ones-column
          matmul's [dW | db | 0...] (written into that width; the pad is never read);
        - `tied_modules` (the classifier, whose weight the embedding also reads in float32): the
          mirror's gradient adds to the weight's own.

        Use only where one micro-batch makes a step (see above)."""
        from pipeline.gpt.cublaslt import ones_width
        mine = {id(p) for g in self.param_groups for p in g["params"]}
        count = 0
        kinds = ([(m, "plain") for m in modules] + [(m, "bias") for m in bias_column_modules]
                 + [(m, "tied") for m in tied_modules])
        for module, kind in kinds:
            with_bias = kind == "bias"
            weight = module.weight
            params = [weight] + ([module.bias] if with_bias else [])
            if any(id(p) not in mine for p in params):
                raise ValueError("a mirrored weight or bias must be one of the optimizer's parameters")
            n, k = weight.shape
            if with_bias:  # as wide as the ones-column input (128-byte rows, which the matmuls want)
                width = ones_width(k)
                mirror = torch.zeros((n, width), dtype=torch.bfloat16, device=weight.device)
                self.mirrors[weight] = MirrorView(mirror, k, width, 0)
                self.mirrors[module.bias] = MirrorView(mirror, 1, width, k)
            else:
                mirror = torch.empty((n, k), dtype=torch.bfloat16, device=weight.device)
                self.mirrors[weight] = MirrorView(mirror, weight.numel(), weight.numel(), 0, kind == "tied")
            with torch.no_grad():
                for p in params:
                    self.mirrors[p].of(mirror, p.shape).copy_(p)
            module.register_buffer("weight_bf16", mirror.requires_grad_(), persistent=False)
            count += 1
        self._launches = None
        return count

    def num_mirrors(self) -> int:
        return len({id(view.mirror) for view in self.mirrors.values()})

    def gradient_leaves(self) -> List[torch.Tensor]:
        """The tensors whose `.grad` a backward pass fills: each parameter, or its mirror, or both
        for a tied weight (a mirror holding a weight and its bias appears twice)."""
        leaves = []
        for p in (p for g in self.param_groups for p in g["params"]):
            view = self.mirrors.get(p)
            leaves += [p] if view is None else [p, view.mirror] if view.adds else [view.mirror]
        return leaves

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=set_to_none)
        for view in self.mirrors.values():
            if view.mirror.grad is not None:
                if set_to_none:
                    view.mirror.grad = None
                else:
                    view.mirror.grad.zero_()

    def _grads(self, p: torch.Tensor):
        """(gradient, gradient to add or None) of p: its own; or the whole gradient of its mirror
        (read through the view); or, for a tied weight, its own plus its mirror's."""
        view = self.mirrors.get(p)
        if view is None or view.mirror.grad is None:
            return p.grad, None
        if p.grad is None:
            return view.mirror.grad, None
        if not view.adds:
            raise RuntimeError("a mirrored parameter got gradients both in float32 and on its mirror")
        return p.grad, view.mirror.grad

    # ------------------------------------------------------------------------------ the step

    def clip_and_step(self, max_norm: float = 1.0) -> torch.Tensor:
        """Global-norm clip at max_norm, then the AdamW update; returns the norm before clipping
        (a device tensor)."""
        launches = self._tables() if self._triton_ready() else None
        if launches is not None:
            return self._triton_step(launches, max_norm)
        return self._torch_step(max_norm)

    def _triton_ready(self) -> bool:
        params = [p for g in self.param_groups for p in g["params"]]
        return (triton is not None and self.use_triton
                and all(p.is_cuda and p.dtype == torch.float32 for p in params)
                and not self.defaults.get("amsgrad") and not self.defaults.get("maximize"))

    def _torch_step(self, max_norm: float) -> torch.Tensor:
        """PyTorch's AdamW on float32 gradients (a mirror's, upcast), then the mirrors refreshed."""
        for p, view in self.mirrors.items():
            if view.mirror.grad is not None:
                own = p.grad
                p.grad = view.of(view.mirror.grad, p.shape).float()
                if own is not None:  # a tied weight: its own gradient plus the mirror's
                    p.grad = own + p.grad
        norm = clip_and_torch_step(self, max_norm)
        with torch.no_grad():
            for p, view in self.mirrors.items():
                view.of(view.mirror, p.shape).copy_(p)
                if view.mirror.grad is not None:
                    p.grad = None
        return norm

    def _init_state(self, p: torch.Tensor) -> dict:
        """PyTorch's fused AdamW's state for p, created as its first step would."""
        state = self.state[p]
        if len(state) == 0:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        elif state["step"].device != p.device:  # a CPU step count from a non-fused checkpoint
            state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
        return state

    def prepare(self) -> None:
        """Build the launch tables for the current gradients now (outside any CUDA-graph capture,
        which cannot upload them)."""
        if self._triton_ready():
            self._tables()

    def _tables(self) -> Optional[List[_Launch]]:
        """The launches for the current gradients: rebuilt when a parameter's state or mirror
        moved or the set of gradients changed, gradient addresses refreshed when they moved;
        None where a gradient is not a plain contiguous tensor (the PyTorch step handles that)."""
        entries = []  # (kind, parameter, (gradient, gradient to add), state, mirror or None)
        for gi, group in enumerate(self.param_groups):
            for p in group["params"]:
                grad, extra = self._grads(p)
                if grad is None:
                    continue
                if any(g is not None and (g.is_sparse or not g.is_contiguous()) for g in (grad, extra)):
                    return None
                view = self.mirrors.get(p)
                kind = (gi, grad.dtype == torch.bfloat16, extra is not None, view is not None,
                        view.row if view is not None and view.strided else 0)
                entries.append((kind, p, (grad, extra), self._init_state(p), view))
        if not entries:
            return None
        entries.sort(key=lambda e: e[0])  # stable: parameter order within each launch
        key = tuple((kind, id(s["step"])) + tuple(t.data_ptr() for t in (p, s["exp_avg"], s["exp_avg_sq"]))
                    + ((m.mirror.data_ptr(),) if m is not None else ()) for kind, p, _, s, m in entries)
        if self._launches is None or key != self._launch_key:
            if torch.cuda.is_current_stream_capturing():
                raise RuntimeError("AdamW launch tables must be built before CUDA-graph capture (prepare())")
            kinds: Dict[tuple, list] = {}
            for kind, p, _, state, view in entries:
                kinds.setdefault(kind, []).append((p, state, view))
            self._launches = [_Launch(gi, [p for p, _, _ in items], [s["exp_avg"] for _, s, _ in items],
                                      [s["exp_avg_sq"] for _, s, _ in items],
                                      [v.mirror for _, _, v in items] if mirrored else [],
                                      [v for _, _, v in items], bf16, adds)
                              for (gi, bf16, adds, mirrored, _), items in kinds.items()]
            device = entries[0][1].device
            self._steps = [s["step"] for _, _, _, s, _ in entries]
            self._partials = torch.empty(sum(L.norm_chunks[0].numel() for L in self._launches), device=device)
            self._norm = torch.zeros((), device=device)
            self._divisor = torch.ones((), device=device)
            self._lr_tensor = torch.zeros((), device=device)
            self._launch_key = key
        grads_by_kind: Dict[tuple, list] = {}
        for kind, _, grad, _, _ in entries:
            grads_by_kind.setdefault(kind, []).append(grad)
        for L, grads in zip(self._launches, grads_by_kind.values()):
            L.set_grads(grads)
        return self._launches

    def _triton_step(self, launches: List[_Launch], max_norm: float) -> torch.Tensor:
        offset = 0
        for L in launches:
            n = L.norm_chunks[0].numel()
            _sum_squares[(n,)](L.norm_chunks[0], L.norm_chunks[1], L.numels, L.g_ptrs, L.g2_ptrs, L.views,
                               self._partials, offset, GRAD_BF16=L.grad_bf16,
                               ADD_MIRROR_GRAD=L.add_mirror_grad, ROW=L.row, BLOCK=NORM_BLOCK,
                               num_warps=NORM_WARPS)
            offset += n
        _clip_divisor[(1,)](self._partials, offset, self._norm, self._divisor, float(max_norm),
                            BLOCK=1024, num_warps=4)
        # every parameter's step count, as PyTorch keeps them (all equal: one update for all)
        torch._foreach_add_(self._steps, 1.0)
        for L in launches:
            group = self.param_groups[L.group]
            lr = group["lr"]
            if not torch.is_tensor(lr):  # a Python float: through a device scalar, as graphs need
                self._lr_tensor.fill_(lr)
                lr = self._lr_tensor
            beta1, beta2 = group["betas"]
            n = L.update_chunks[0].numel()
            _adamw_update[(n,)](L.update_chunks[0], L.update_chunks[1], L.numels, L.p_ptrs, L.g_ptrs,
                                L.g2_ptrs, L.m_ptrs, L.v_ptrs, L.mirror_ptrs, L.views, self._steps[0], lr,
                                self._divisor, float(beta1), float(beta2), float(group["eps"]),
                                float(group["weight_decay"]), GRAD_BF16=L.grad_bf16,
                                ADD_MIRROR_GRAD=L.add_mirror_grad, MIRROR=L.has_mirrors, ROW=L.row,
                                BLOCK=UPDATE_BLOCK, num_warps=UPDATE_WARPS)
        return self._norm
