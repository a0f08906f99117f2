"""The training step replayed from CUDA graphs (single GPU).

Once the kernels are as fast as they get, what is left of a step is the GPU waiting for Python:
a compiled GPT-2 step still launches several hundred kernels, optimizer and gradient clipping
included, and every launch costs host time that the short kernels (layernorms, casts, reductions)
cannot hide. After a few ordinary steps (compilation, optimizer state), `GraphedTrainStep` captures
the step once as three CUDA graphs and from then on replays them, one launch each:

- `first`: forward + backward of the first micro-batch. The gradients it produces become the
  parameters' (or their bf16 mirrors') `.grad` tensors (autograd's usual hand-over when `.grad` is
  None), so every replay overwrites them: no zeroing pass.
- `more` (gradient accumulation only): forward + backward that add into those same tensors.
- `update`: gradient clipping and the AdamW update (`pipeline.gpt.adamw`), with the learning rate
  read from a device tensor so that the schedule can change it between replays.

Replays run exactly the kernels of an ordinary step in the same order, on the same tensors, so the
numbers are the same (the learning rate comes from a float32 tensor instead of a Python float).
Micro-batches are copied into fixed input buffers, as graphs require. Anything the capture cannot
handle (a library that synchronises, out of memory while capturing) makes it fall back, for the rest
of the run, to the ordinary step, with one message.
"""
from __future__ import annotations

import sys
from typing import Optional

import torch

from pipeline.gpt.step import clip_and_update, micro_step, train_step


class GraphedTrainStep:
    def __init__(self, model, raw, optimizer, run, accum: int, batch_shape, warmup_steps: int = 3):
        self.model, self.raw, self.optimizer, self.run, self.accum = model, raw, optimizer, run, accum
        self.batch_shape = tuple(batch_shape)
        self.warmup_steps = warmup_steps
        self.steps = 0
        self.graphs = None
        self.failed: Optional[str] = None

    @property
    def active(self) -> bool:
        return self.graphs is not None

    def __call__(self, batches, lr: float):
        self.steps += 1
        if self.failed is None and self.graphs is None and self.steps > self.warmup_steps:
            self._capture()
        if self.graphs is None:
            return train_step(self.model, self.raw, self.optimizer, batches, self.accum, self.run, lr)
        first, more, update = self.graphs
        for micro in range(self.accum):
            x, y = next(batches)
            self.x.copy_(x, non_blocking=True)
            self.y.copy_(y, non_blocking=True)
            (first if micro == 0 else more).replay()
        self.lr.fill_(lr)
        update.replay()
        return self.loss_sum.clone(), self.norm.clone()

    # ------------------------------------------------------------------------- capture

    def _micro(self, accumulate: bool) -> None:
        loss = micro_step(self.model, self.x, self.y, self.accum, self.run)
        if accumulate:
            self.loss_sum.add_(loss)
        else:
            self.loss_sum.copy_(loss)

    def _update(self) -> None:
        self.norm.copy_(clip_and_update(self.params, self.optimizer))

    def _capture(self) -> None:
        """Capture the three graphs (nothing runs but one warm-up micro-step whose gradients are
        dropped); on any failure, leave everything as the ordinary step expects it."""
        device = self.run.device
        # what backward fills: the parameters, or their bf16 mirrors (pipeline.gpt.adamw)
        leaves = getattr(self.optimizer, "gradient_leaves", None)
        self.params = leaves() if leaves else [p for p in self.raw.parameters() if p.requires_grad]
        B, T = self.batch_shape
        # Fixed input buffers (graphs replay fixed addresses); any valid ids do for the warm-up.
        self.x = torch.zeros((B, T), dtype=torch.long, device=device)
        self.y = torch.zeros((B, T), dtype=torch.long, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.norm = torch.zeros((), device=device)
        self.lr = torch.zeros((), device=device)
        saved_groups = [(g.get("capturable", False), g["lr"]) for g in self.optimizer.param_groups]
        try:
            for group in self.optimizer.param_groups:  # the update graph reads lr from self.lr
                group["capturable"] = True
                group["lr"] = self.lr
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                # Libraries set up per-stream state lazily: run once on the capture stream first.
                self._micro(accumulate=False)
            torch.cuda.current_stream(device).wait_stream(stream)
            torch.cuda.synchronize(device)
            for p in self.params:
                p.grad = None
            first = torch.cuda.CUDAGraph()
            with torch.cuda.graph(first, stream=stream):
                self._micro(accumulate=False)
            grads = [p.grad for p in self.params]
            if any(g is None for g in grads):
                raise RuntimeError("a parameter got no gradient in the captured backward")
            more = None
            if self.accum > 1:
                more = torch.cuda.CUDAGraph()
                with torch.cuda.graph(more, pool=first.pool(), stream=stream):
                    self._micro(accumulate=True)
                # accumulation must add into the very tensors that `first` writes
                if any(p.grad is not g for p, g in zip(self.params, grads)):
                    raise RuntimeError("gradient accumulation was not in place")
            prepare = getattr(self.optimizer, "prepare", None)
            if prepare:  # tables of the gradients' addresses, uploaded before capture
                prepare()
            update = torch.cuda.CUDAGraph()
            with torch.cuda.graph(update, pool=first.pool(), stream=stream):
                self._update()
            torch.cuda.synchronize(device)
            self.graphs = (first, more, update)
        except Exception as exc:  # noqa: BLE001 - any capture failure: train on without graphs
            self.failed = "%s: %s" % (type(exc).__name__, exc)
            self.graphs = None
            for p in self.params:
                p.grad = None
            for group, (capturable, lr) in zip(self.optimizer.param_groups, saved_groups):
                group["capturable"], group["lr"] = capturable, lr
            torch.cuda.synchronize(device)
            print("CUDA graphs off (capture failed: %s); continuing with ordinary steps"
                  % self.failed, file=sys.stderr, flush=True)
