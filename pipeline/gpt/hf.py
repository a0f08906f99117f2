"""Weights between our GPT (llm.c's layout) and HuggingFace transformers' GPT2LMHeadModel.

Both sides name their parameters the same way (`transformer.h.0.attn.c_attn.weight`, ...); they differ
in two places only:
- HF's GPT-2 uses `Conv1D` layers whose weight is (in, out), the transpose of `nn.Linear`'s (out, in);
- HF keeps GPT-2's 50257-row embedding, we keep llm.c's padded 50304 rows (the extra rows are zero).
The HF model is built from a `GPT2Config`, so nothing is downloaded. Needs the `hf` extra (transformers).
"""
from __future__ import annotations

import torch

from pipeline.gpt.model import GPT, GPTConfig

# Linear layers whose weight HF stores transposed.
_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def hf_config(config: GPTConfig):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, n_inner=4 * config.n_embd,
        activation_function="gelu_new",  # the tanh approximation, as in our MLP and llm.c
        layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        tie_word_embeddings=True, bos_token_id=50256, eos_token_id=50256)


def _is_conv1d(name: str) -> bool:
    return name.endswith(".weight") and any(("." + c + ".") in name for c in _CONV1D)


@torch.no_grad()
def to_hf(model: GPT):
    """A GPT2LMHeadModel (eval mode, fp32, CPU) holding `model`'s weights."""
    from transformers import GPT2LMHeadModel

    cfg = model.config
    hf = GPT2LMHeadModel(hf_config(cfg)).eval()
    ours = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    for name, param in hf.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to transformer.wte.weight
        src = ours[name]
        if name == "transformer.wte.weight":
            src = src[:cfg.vocab_size]
        elif _is_conv1d(name):
            src = src.t()
        if tuple(src.shape) != tuple(param.shape):
            raise ValueError("%s: shape %s does not fit HF's %s" % (name, tuple(src.shape), tuple(param.shape)))
        param.copy_(src)
    return hf


@torch.no_grad()
def from_hf(hf_model, block_size: int = None) -> GPT:
    """Our GPT (fp32, CPU) from a GPT2LMHeadModel, with the vocabulary padded to 50304 rows of zeros."""
    c = hf_model.config
    cfg = GPTConfig(block_size=block_size or c.n_positions, vocab_size=c.vocab_size,
                    n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd)
    if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError("our GPT uses tanh-GELU; HF model has %r" % c.activation_function)
    model = GPT(cfg).eval()
    theirs = {k: v.detach().float().cpu() for k, v in hf_model.state_dict().items()}
    for name, param in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied
        src = theirs[name]
        if name == "transformer.wpe.weight":
            src = src[:cfg.block_size]
        elif _is_conv1d(name):
            src = src.t()
        if name == "transformer.wte.weight":
            param.zero_()
            param[:src.size(0)].copy_(src)
        else:
            param.copy_(src)
    return model
