"""llm.c model files (`gpt2_124M.bin`, `model_00005000.bin`) and the trainer's state files.

Model file (llm.c `train_gpt2.py:write_model`, `train_gpt2.cu:gpt2_write_to_checkpoint`): a header of
256 little-endian int32 `[20240326, version, maxT, V, L, NH, C, Vp, 0, ...]` with version 3 = fp32
parameters or 5 = bf16 parameters, then every parameter tensor back to back in this order:

    wte (Vp,C) wpe (maxT,C) ln1w (L,C) ln1b (L,C) qkvw (L,3C,C) qkvb (L,3C) attprojw (L,C,C)
    attprojb (L,C) ln2w (L,C) ln2b (L,C) fcw (L,4C,C) fcb (L,4C) fcprojw (L,C,4C) fcprojb (L,C)
    lnfw (C) lnfb (C)

Each `(L, ...)` block is the per-layer tensors stacked by layer. PyTorch's `nn.Linear.weight` is
(out, in), which is exactly llm.c's row-major layout, so no transposes are needed. The head is tied
to wte and is not stored. llm.c's bf16 build (the default) only loads version 5 files and its fp32
build only version 3, so `save_model(..., dtype=)` picks which llm.c build can read the file.

State file (`state_%08d_%05d.bin`, step and rank, as llm.c names them): llm.c's 256-int32 state
header (magic 20240527) with the step at [10], then AdamW's m, v and the fp32 master weights, each
flattened in the order above, then a length-prefixed JSON blob with what this trainer needs to resume
exactly (data-loader position, RNG states, schedule position). llm.c's own loader would not parse the
tail: the state file is for resuming *this* trainer; the model file is the interchange format.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterator, List, Tuple

import numpy as np
import torch

from pipeline.gpt.model import GPT, GPTConfig

MODEL_MAGIC = 20240326
VERSION_FP32 = 3
VERSION_BF16 = 5
STATE_MAGIC = 20240527
STATE_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4

# llm.c's tensor order: (llm.c name, PyTorch name pattern, per-layer?)
LLMC_TENSORS: List[Tuple[str, str, bool]] = [
    ("wte", "transformer.wte.weight", False),
    ("wpe", "transformer.wpe.weight", False),
    ("ln1w", "transformer.h.{}.ln_1.weight", True),
    ("ln1b", "transformer.h.{}.ln_1.bias", True),
    ("qkvw", "transformer.h.{}.attn.c_attn.weight", True),
    ("qkvb", "transformer.h.{}.attn.c_attn.bias", True),
    ("attprojw", "transformer.h.{}.attn.c_proj.weight", True),
    ("attprojb", "transformer.h.{}.attn.c_proj.bias", True),
    ("ln2w", "transformer.h.{}.ln_2.weight", True),
    ("ln2b", "transformer.h.{}.ln_2.bias", True),
    ("fcw", "transformer.h.{}.mlp.c_fc.weight", True),
    ("fcb", "transformer.h.{}.mlp.c_fc.bias", True),
    ("fcprojw", "transformer.h.{}.mlp.c_proj.weight", True),
    ("fcprojb", "transformer.h.{}.mlp.c_proj.bias", True),
    ("lnfw", "transformer.ln_f.weight", False),
    ("lnfb", "transformer.ln_f.bias", False),
]


class CheckpointError(ValueError):
    """A model or state file that cannot be used; the message names the file and the problem."""


def unwrap(model: torch.nn.Module) -> GPT:
    """The plain GPT inside DDP and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        else:
            return model


def llmc_names(n_layer: int) -> List[str]:
    """PyTorch parameter names in llm.c file order (per-layer tensors layer by layer)."""
    names = []
    for _, pattern, per_layer in LLMC_TENSORS:
        names.extend([pattern.format(i) for i in range(n_layer)] if per_layer else [pattern])
    return names


def iter_llmc(tensors: Dict[str, torch.Tensor], n_layer: int) -> Iterator[torch.Tensor]:
    """Yield `tensors` (keyed by PyTorch parameter name) in llm.c's order."""
    for name in llmc_names(n_layer):
        yield tensors[name]


def _to_bytes(t: torch.Tensor, dtype: str) -> bytes:
    t = t.detach().to("cpu").contiguous()
    if dtype == "fp32":
        return t.float().numpy().astype("<f4", copy=False).tobytes()
    # bf16: round to nearest even (torch's conversion), then write the raw 16-bit pattern.
    return t.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2", copy=False).tobytes()


def model_header(config: GPTConfig, dtype: str = "fp32") -> np.ndarray:
    if dtype not in ("fp32", "bf16"):
        raise ValueError("dtype must be 'fp32' or 'bf16', got %r" % dtype)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:8] = [MODEL_MAGIC, VERSION_FP32 if dtype == "fp32" else VERSION_BF16, config.block_size,
                  config.vocab_size, config.n_layer, config.n_head, config.n_embd,
                  config.padded_vocab_size]
    return header


def _atomic_write(path: str, chunks) -> None:
    """Write to a temp file then rename, so a crash mid-write never leaves a truncated checkpoint."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
    os.replace(tmp, path)


def save_model(model: torch.nn.Module, path: str, dtype: str = "fp32") -> None:
    """Write `model` as an llm.c model file (version 3 for fp32, 5 for bf16)."""
    model = unwrap(model)
    header = model_header(model.config, dtype)
    params = dict(model.named_parameters())
    params.setdefault("transformer.wte.weight", model.transformer.wte.weight)
    _atomic_write(path, [header.tobytes()] +
                  [_to_bytes(t, dtype) for t in iter_llmc(params, model.config.n_layer)])


def read_model_header(path: str) -> Tuple[GPTConfig, str]:
    """Validate an llm.c model file's header and size; return its config and 'fp32'/'bf16'."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as e:
        raise CheckpointError("%s: cannot open model file: %s" % (path, e.strerror or e))
    if len(raw) < HEADER_BYTES:
        raise CheckpointError("%s: too short for an llm.c model header (%d bytes)" % (path, len(raw)))
    h = np.frombuffer(raw, dtype="<i4")
    if h[0] != MODEL_MAGIC:
        raise CheckpointError("%s: bad magic %d (expected %d): not an llm.c model file"
                              % (path, h[0], MODEL_MAGIC))
    if h[1] not in (VERSION_FP32, VERSION_BF16):
        raise CheckpointError("%s: unsupported version %d (3 = fp32, 5 = bf16 are supported)"
                              % (path, h[1]))
    dtype = "fp32" if h[1] == VERSION_FP32 else "bf16"
    maxT, V, L, NH, C, Vp = (int(x) for x in h[2:8])
    if min(maxT, V, L, NH, C, Vp) <= 0 or C % NH or Vp < V:
        raise CheckpointError("%s: inconsistent shape in header (maxT=%d V=%d L=%d NH=%d C=%d Vp=%d)"
                              % (path, maxT, V, L, NH, C, Vp))
    config = GPTConfig(block_size=maxT, vocab_size=V, padded_vocab_size=Vp, n_layer=L, n_head=NH,
                       n_embd=C)
    expected = HEADER_BYTES + config.num_params() * (4 if dtype == "fp32" else 2)
    size = os.path.getsize(path)
    if size != expected:
        raise CheckpointError("%s: file is %d bytes but a %s %s model needs %d (truncated or corrupt?)"
                              % (path, size, dtype, describe(config), expected))
    return config, dtype


def describe(config: GPTConfig) -> str:
    return "L=%d NH=%d C=%d maxT=%d Vp=%d" % (config.n_layer, config.n_head, config.n_embd,
                                            config.block_size, config.padded_vocab_size)


def read_params(path: str, config: GPTConfig, dtype: str) -> np.ndarray:
    """All parameters of a validated model file as one flat float32 array (llm.c order)."""
    if dtype == "fp32":
        return np.fromfile(path, dtype="<f4", offset=HEADER_BYTES)
    raw = np.fromfile(path, dtype="<u2", offset=HEADER_BYTES)
    # bf16 is the top half of an fp32: widening is exact.
    return (raw.astype(np.uint32) << 16).view(np.float32)


def load_flat_into(model: GPT, flat: np.ndarray, path: str = "<flat>") -> None:
    """Copy a flat llm.c-ordered float32 vector into the model's parameters (shapes must match)."""
    params = dict(model.named_parameters())
    params.setdefault("transformer.wte.weight", model.transformer.wte.weight)
    names = llmc_names(model.config.n_layer)
    total = sum(params[n].numel() for n in names)
    if flat.size != total:
        raise CheckpointError("%s: has %d parameters, the model needs %d" % (path, flat.size, total))
    offset = 0
    with torch.no_grad():
        for name in names:
            p = params[name]
            n = p.numel()
            p.copy_(torch.from_numpy(np.ascontiguousarray(flat[offset:offset + n])).view_as(p))
            offset += n


def load_model(path: str, device: str = "cpu") -> GPT:
    """Build a GPT from an llm.c model file (fp32 or bf16); parameters are fp32 on `device`."""
    config, dtype = read_model_header(path)
    flat = read_params(path, config, dtype)
    with torch.device("meta"):
        model = GPT(config)
    # Materialise on the target device without paying for a random init we'd overwrite anyway.
    model = model.to_empty(device="cpu")
    model.lm_head.weight = model.transformer.wte.weight  # re-tie after to_empty
    load_flat_into(model, flat, path)
    return model.to(device)


def check_shape(config: GPTConfig, path: str, n_layer: int = None, n_head: int = None,
                n_embd: int = None) -> None:
    """Raise a clear error when flags ask for a different shape than the checkpoint has."""
    wanted = {"-1d/-ld (layers)": (n_layer, config.n_layer), "-1h/-lh (heads)": (n_head, config.n_head),
              "-1c/-lc (channels)": (n_embd, config.n_embd)}
    bad = ["%s=%d but the checkpoint has %d" % (k, w, h) for k, (w, h) in wanted.items()
           if w is not None and w > 0 and w != h]
    if bad:
        raise CheckpointError("%s: model shape mismatch: %s" % (path, "; ".join(bad)))


# ----------------------------------------------------------------------------- state files

def save_state(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
               extra: dict, rank: int = 0, world: int = 1) -> None:
    """AdamW m, v, fp32 master weights (llm.c order) plus `extra` (JSON) for an exact resume."""
    model = unwrap(model)
    params = dict(model.named_parameters())
    names = llmc_names(model.config.n_layer)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:6] = [STATE_MAGIC, STATE_VERSION, world, rank, 1, int(bool(extra.get("shuffle", True)))]
    header[10] = step
    loader = extra.get("loader", {})
    header[30:34].view("<u8")[:] = [int(loader.get("shard_pos", 0)), int(loader.get("window_pos", 0))]

    def moment(key):
        for name in names:
            state = optimizer.state.get(params[name], {})
            t = state.get(key)
            yield _to_bytes(t if t is not None else torch.zeros_like(params[name]), "fp32")

    extra = dict(extra, optimizer_steps=_optimizer_steps(optimizer, params, names),
                 param_groups=[{k: (v.item() if torch.is_tensor(v) else v) for k, v in g.items()
                                if k != "params"}  # lr is a device tensor under CUDA graphs
                               for g in optimizer.param_groups])
    blob = json.dumps(extra, sort_keys=True).encode()
    chunks = [header.tobytes()]
    chunks += list(moment("exp_avg")) + list(moment("exp_avg_sq"))
    chunks += [_to_bytes(params[n], "fp32") for n in names]
    chunks += [np.array([len(blob)], dtype="<u8").tobytes(), blob]
    _atomic_write(path, chunks)


def _optimizer_steps(optimizer, params, names) -> float:
    state = optimizer.state.get(params[names[0]], {})
    step = state.get("step", 0)
    return float(step.item() if torch.is_tensor(step) else step)


def load_state(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore master weights and AdamW state written by `save_state`; return (step, extra)."""
    model = unwrap(model)
    params = dict(model.named_parameters())
    names = llmc_names(model.config.n_layer)
    n = sum(params[name].numel() for name in names)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(HEADER_BYTES), dtype="<i4")
        if header.size < HEADER_INTS or header[0] != STATE_MAGIC or header[1] != STATE_VERSION:
            raise CheckpointError("%s: not a state file of this trainer (bad magic/version)" % path)
        body = 3 * n * 4
        if size < HEADER_BYTES + body + 8:
            raise CheckpointError("%s: truncated state file (%d bytes, need > %d for %d parameters)"
                                  % (path, size, HEADER_BYTES + body + 8, n))
        arrays = np.frombuffer(bytearray(f.read(body)), dtype="<f4")
        (blob_len,) = np.frombuffer(f.read(8), dtype="<u8")
        extra = json.loads(f.read(int(blob_len)).decode())
    m, v, master = arrays[:n], arrays[n:2 * n], arrays[2 * n:]
    load_flat_into(model, master, path)
    steps = extra.pop("optimizer_steps", 0.0)
    groups = extra.pop("param_groups", None)
    offset = 0
    device = next(model.parameters()).device
    for name in names:
        p = params[name]
        k = p.numel()
        st = optimizer.state[p]
        st["exp_avg"] = torch.from_numpy(m[offset:offset + k].copy()).view_as(p).to(device)
        st["exp_avg_sq"] = torch.from_numpy(v[offset:offset + k].copy()).view_as(p).to(device)
        # torch's AdamW keeps `step` as a float tensor (on the param's device for fused/capturable).
        fused = any(g.get("fused") or g.get("capturable") for g in optimizer.param_groups)
        st["step"] = torch.tensor(steps, dtype=torch.float32, device=device if fused else "cpu")
        offset += k
    if groups:
        for g, saved in zip(optimizer.param_groups, groups):
            if torch.is_tensor(g["lr"]):  # CUDA-graph replay reads lr from this tensor
                g["lr"].fill_(saved.get("lr", g["lr"].item()))
            else:
                g["lr"] = saved.get("lr", g["lr"])
    extra["step"] = int(header[10])
    return extra
