"""`pipeline generate`: sample text from an llm.c / trainer checkpoint, like llm.c's inference tool.

    pipeline generate -e log124M/model_00004725.bin -p "The Github project llm.c is a" -n 256
    pipeline generate -e model.bin --prompts-file prompts.txt --greedy
    pipeline generate --benchmark [-e model.bin]      # HF generate() vs this engine, plot + table

One prompt streams its tokens to the terminal as they are produced; several prompts run as batches
(`--batch-size`) and each completion is printed when its batch is done. Prompts are GPT-2 BPE
(tiktoken), prefixed with <|endoftext|> as every training document is; generation stops at
<|endoftext|> unless `--ignore-eot`.
"""
from __future__ import annotations

import codecs
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from pipeline.config import JobConfig, flag
from pipeline.gpt.model_loading import load, resolve_device, resolve_dtype

EOT_TOKEN = 50256


@dataclass(frozen=True)
class GenerateConfig(JobConfig):
    """Generate text from a GPT-2 checkpoint (llm.c model .bin, fp32 or bf16) with a KV-cache engine."""
    model: Optional[str] = field(default=None, metadata=flag(
        "-e", "--model", help="llm.c model file, e.g. model_00004725.bin or gpt2_124M.bin"))
    init: Optional[str] = field(default=None, metadata=flag(
        "--init", help="no checkpoint: a randomly initialised model of this size (d12, d24, ...)"))
    prompt: Tuple[str, ...] = field(default=(), metadata=flag(
        "-p", "--prompt", action="append", default=[], help="a prompt (repeat for several)"))
    prompts_file: Optional[str] = field(default=None, metadata=flag(
        "--prompts-file", help="a text file with one prompt per line"))
    max_new_tokens: int = field(default=256, metadata=flag(
        "-n", "--max-new-tokens", type=int, help="tokens to generate per prompt"))
    temperature: float = field(default=1.0, metadata=flag(
        "--temperature", type=float, help="sampling temperature; 0 means greedy"))
    top_k: Optional[int] = field(default=None, metadata=flag(
        "--top-k", type=int, help="sample only among the k most likely tokens"))
    top_p: Optional[float] = field(default=None, metadata=flag(
        "--top-p", type=float, help="nucleus sampling: the most likely tokens holding this much mass"))
    greedy: bool = field(default=False, metadata=flag(
        "--greedy", action="store_true", help="always take the most likely token (= --temperature 0)"))
    seed: Optional[int] = field(default=None, metadata=flag(
        "--seed", type=int, help="random seed, for reproducible samples"))
    ignore_eot: bool = field(default=False, metadata=flag(
        "--ignore-eot", action="store_true", help="do not stop at <|endoftext|>"))
    eot_prefix: bool = field(default=True, metadata=flag(
        "--eot-prefix", help="start each prompt with <|endoftext|>, like the training documents"))
    batch_size: int = field(default=16, metadata=flag(
        "--batch-size", type=int, help="prompts generated together"))
    device: str = field(default="auto", metadata=flag("--device", help="auto, cpu, cuda, cuda:1, ..."))
    dtype: str = field(default="auto", metadata=flag(
        "--dtype", choices=["auto", "fp32", "bf16", "fp16"], help="auto: bf16 on CUDA, fp32 on CPU"))
    cuda_graphs: bool = field(default=True, metadata=flag(
        "--cuda-graphs", help="replay the decode step as a CUDA graph (CUDA only)"))
    fused_kernels: bool = field(default=True, metadata=flag(
        "--fused-kernels", help="fused Triton/cuBLASLt decode kernels (CUDA only; self-checked)"))
    tiktoken_cache: Optional[str] = field(default=None, metadata=flag(
        "--tiktoken-cache", help="tiktoken cache directory holding r50k_base (default: the BPE ranks "
        "shipped in the package)"))
    bpe_file: Optional[str] = field(default=None, metadata=flag(
        "--bpe-file", help="the r50k_base/gpt2 .tiktoken rank file (default: the one shipped in the package)"))
    # --benchmark mode (pipeline/gpt/gen_benchmark.py)
    benchmark: bool = field(default=False, metadata=flag(
        "--benchmark", action="store_true",
        help="time HF generate() vs this engine over --bench-tokens; writes a plot, JSON and CSV"))
    bench_tokens: str = field(default="16,32,64,128,256,512,1023", metadata=flag(
        "--bench-tokens", help="comma-separated numbers of new tokens to time"))
    bench_out: str = field(default="bench/results", metadata=flag(
        "--bench-out", help="directory for the benchmark's PNG/JSON/CSV"))
    bench_batch: int = field(default=64, metadata=flag(
        "--bench-batch", type=int, help="batch size of the throughput measurement"))
    bench_prompt_len: int = field(default=1000, metadata=flag(
        "--bench-prompt-len", type=int, help="prompt length of the time-to-first-token measurement"))
    bench_hf: bool = field(default=True, metadata=flag(
        "--bench-hf", help="include HuggingFace transformers generate() (needs transformers)"))


# ----------------------------------------------------------------------------------------------
# prompts and output

def read_prompts(cfg: GenerateConfig) -> List[str]:
    prompts = list(cfg.prompt)
    if cfg.prompts_file:
        with open(cfg.prompts_file, encoding="utf-8") as f:
            prompts += [line.rstrip("\r\n") for line in f if line.strip()]
    return prompts or [""]  # no prompt: unconditional samples, starting from <|endoftext|>


def encode_prompts(enc, texts: Sequence[str], eot_prefix: bool, max_new_tokens: int,
                   block_size: int) -> List[List[int]]:
    """BPE token ids per prompt; too-long prompts keep their last tokens so the output fits."""
    room = block_size - max_new_tokens + 1
    if room < 1:
        raise SystemExit("-n %d does not fit the model's %d positions" % (max_new_tokens, block_size))
    out = []
    for i, text in enumerate(texts):
        ids = ([EOT_TOKEN] if eot_prefix else []) + enc.encode(text, allowed_special={"<|endoftext|>"})
        if not ids:
            ids = [EOT_TOKEN]
        if len(ids) > room:
            print("warning: prompt %d has %d tokens; keeping its last %d so that %d new tokens fit in %d "
                  "positions" % (i + 1, len(ids), room, max_new_tokens, block_size), file=sys.stderr)
            ids = ids[-room:]
        out.append(ids)
    return out


class Streamer:
    """Writes one sequence's tokens to a stream as text, holding back incomplete UTF-8 characters
    (a GPT-2 token can end in the middle of a multi-byte character)."""

    def __init__(self, enc, out):
        self.enc, self.out = enc, out
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, _i: int, token: int) -> None:
        text = self.decoder.decode(self.enc.decode_single_token_bytes(token))
        if text:
            self.out.write(text)
            self.out.flush()

    def close(self) -> None:
        self.out.write(self.decoder.decode(b"", final=True))
        self.out.flush()


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg = GenerateConfig.from_argv(argv, prog="pipeline generate")
    if cfg.benchmark:
        from pipeline.gpt import gen_benchmark

        return gen_benchmark.run(cfg)

    import torch

    from pipeline.bpe import get_encoding
    from pipeline.gpt.engine import Engine

    enc = get_encoding(cache_dir=cfg.tiktoken_cache, bpe_file=cfg.bpe_file)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    model, desc = load(cfg)
    model = model.to(device=device, dtype=dtype)
    block_size = model.config.block_size

    texts = read_prompts(cfg)
    prompts = encode_prompts(enc, texts, cfg.eot_prefix, cfg.max_new_tokens, block_size)
    batch = max(1, min(cfg.batch_size, len(prompts)))
    engine = Engine(model, max_batch_size=batch,
                    max_seq_len=min(block_size, max(map(len, prompts)) + cfg.max_new_tokens),
                    cuda_graphs=cfg.cuda_graphs and device.type == "cuda", fuse=cfg.fused_kernels)
    temperature = 0.0 if cfg.greedy else cfg.temperature
    kwargs = dict(temperature=temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                  stop_token=None if cfg.ignore_eot else EOT_TOKEN)
    print("# %s on %s, %s; %s" % (desc, device, str(dtype).replace("torch.", ""),
                                 "greedy" if temperature <= 0 else "temperature %g" % temperature),
          file=sys.stderr)

    n_tokens, start = 0, time.perf_counter()
    for lo in range(0, len(prompts), batch):
        chunk = prompts[lo:lo + batch]
        # One seed per batch, derived from --seed, so a rerun reproduces every batch.
        seed = None if cfg.seed is None else cfg.seed + lo
        if len(prompts) == 1:
            sys.stdout.write(texts[0])
            streamer = Streamer(enc, sys.stdout)
            outs = engine.generate(chunk, cfg.max_new_tokens, seed=seed, on_token=streamer, **kwargs)
            streamer.close()
            sys.stdout.write("\n")
        else:
            outs = engine.generate(chunk, cfg.max_new_tokens, seed=seed, **kwargs)
            for j, toks in enumerate(outs):
                k = lo + j
                print("===== [%d/%d] %s" % (k + 1, len(prompts), "=" * 50))
                print(texts[k] + enc.decode(toks))
            sys.stdout.flush()
        n_tokens += sum(map(len, outs))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print("# %d tokens in %.2f s (%.1f tokens/s)" % (n_tokens, seconds, n_tokens / max(seconds, 1e-9)),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
