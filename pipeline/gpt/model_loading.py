"""The model, device and dtype that `pipeline generate` and its `--benchmark` sample with.

`load(cfg)` reads `cfg.model` (an llm.c model file), else builds a random model of size `cfg.init`
seeded by `cfg.seed`; `cfg` is a GenerateConfig (pipeline/gpt/generate.py).
"""
from __future__ import annotations


def resolve_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def resolve_dtype(name: str, device):
    import torch

    if name == "auto":
        name = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def load(cfg):
    """The fp32 model on the CPU, from `-e` or `--init`, and a one-line description of it."""
    import torch

    from pipeline.gpt.model import GPT, GPTConfig

    if cfg.model:
        from pipeline.gpt.checkpoint import load_model

        return load_model(cfg.model, device="cpu"), cfg.model
    if cfg.init:
        torch.manual_seed(0 if cfg.seed is None else cfg.seed)
        return GPT(GPTConfig.from_descriptor(cfg.init)), "random %s (untrained)" % cfg.init
    raise SystemExit("pipeline generate: give a checkpoint with -e model.bin (or --init d12 for random weights)")
