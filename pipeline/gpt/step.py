"""One optimizer step of the trainer: forward/backward per micro-batch, clip, AdamW update.

Shared by the ordinary step (`pipeline.gpt.train`) and its CUDA-graph replay (`pipeline.gpt.graphed`),
which captures exactly these calls. `run` is the trainer's `Run` (device, autocast, DDP); `raw` is the
unwrapped GPT model.
"""
from __future__ import annotations

import contextlib

import torch

from pipeline.gpt.adamw import AdamW, clip_and_torch_step


def micro_step(model, x: torch.Tensor, y: torch.Tensor, accum: int, run) -> torch.Tensor:
    """Forward and backward of one micro-batch with the loss scaled by 1/accum, so gradients add
    up to those of the step's mean loss; returns the scaled loss, detached."""
    with run.autocast():
        _, loss = model(x, y, return_logits=False)
    loss = loss / accum
    loss.backward()
    return loss.detach()


def clip_and_update(params, optimizer) -> torch.Tensor:
    """llm.c's global-norm clip at 1.0, then the AdamW update; returns the norm before clipping.

    The trainer's own optimizer does both in its `clip_and_step` (`pipeline.gpt.adamw`: one Triton
    pass, or PyTorch's clip and AdamW); ZeRO's sharded optimizer goes through the same PyTorch clip
    (`adamw.clip_and_torch_step`) over `params`, the model's parameters."""
    if isinstance(optimizer, AdamW):
        return optimizer.clip_and_step(1.0)
    return clip_and_torch_step(optimizer, 1.0, params)


def train_step(model, raw, optimizer, batches, accum: int, run, lr: float):
    """One optimizer step over `accum` micro-batches; returns (mean loss, grad norm) as device
    tensors so the caller decides when to synchronise with the GPU."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=run.device)
    for micro in range(accum):
        x, y = next(batches)
        # DDP all-reduces gradients only on the last micro-step
        ctx = model.no_sync() if (run.ddp and micro < accum - 1) else contextlib.nullcontext()
        with ctx:
            loss_sum += micro_step(model, x, y, accum, run)
    norm = clip_and_update(list(raw.parameters()), optimizer)
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, norm
