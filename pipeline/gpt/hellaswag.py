"""HellaSwag accuracy from llm.c's eval file (`dev/data/hellaswag.py` -> `hellaswag_val.bin`).

File layout (llm.c `dev/data/data_common.py:write_evalfile`): 256 int32 header
`[20240522, 1, num_examples, longest_example_bytes]`, then per example a stream of uint16:
`65535, example_bytes, example_index, label, num_completions, ctx_len, ctx..., (len, tokens...) x4`
where example_bytes counts the whole example including its first three fields.

Scoring (llm.c `evalloader_stat_losses`): each completion follows the shared context in its own row;
its score is the mean cross-entropy over the completion tokens only; the lowest mean loss wins (the
first one on ties) and the example is correct when that is the label.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import numpy as np

MAGIC = 20240522
VERSION = 1
START = 65535


class EvalFileError(ValueError):
    pass


def read_eval_file(path: str) -> List[Dict]:
    """Parse and validate; returns [{'label', 'ctx', 'endings': [list of 4 token lists]}]."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size < 1024:
        raise EvalFileError("%s: too short for the 1024-byte eval header" % path)
    header = raw[:1024].view("<i4")
    if header[0] != MAGIC:
        raise EvalFileError("%s: bad magic %d (expected %d): not an llm.c eval file (make it with "
                            "llm.c's dev/data/hellaswag.py)" % (path, header[0], MAGIC))
    if header[1] != VERSION:
        raise EvalFileError("%s: unsupported eval file version %d" % (path, header[1]))
    n = int(header[2])
    stream = raw[1024:].view("<u2") if (raw.size - 1024) % 2 == 0 else None
    if stream is None:
        raise EvalFileError("%s: odd number of payload bytes" % path)
    examples, pos = [], 0
    for i in range(n):
        if pos + 6 > stream.size or stream[pos] != START or stream[pos + 2] != i:
            raise EvalFileError("%s: example %d is missing or malformed (truncated file?)" % (path, i))
        end = pos + int(stream[pos + 1]) // 2
        label, ncomp, ctx_len = int(stream[pos + 3]), int(stream[pos + 4]), int(stream[pos + 5])
        cur = pos + 6
        ctx = stream[cur:cur + ctx_len].tolist()
        cur += ctx_len
        endings = []
        for _ in range(ncomp):
            k = int(stream[cur])
            endings.append(stream[cur + 1:cur + 1 + k].tolist())
            cur += 1 + k
        if cur != end or end > stream.size or not 0 <= label < ncomp:
            raise EvalFileError("%s: example %d has inconsistent lengths" % (path, i))
        examples.append({"label": label, "ctx": ctx, "endings": endings})
        pos = end
    return examples


def write_eval_file(path: str, examples: Sequence[Dict]) -> None:
    """Write examples ({'label', 'ctx', 'endings'}) in llm.c's eval format (used by tests)."""
    stream, longest = [], 0
    for idx, ex in enumerate(examples):
        s = [START, 0, idx, ex["label"], len(ex["endings"]), len(ex["ctx"])] + list(ex["ctx"])
        for ending in ex["endings"]:
            s += [len(ending)] + list(ending)
        s[1] = 2 * len(s)
        longest = max(longest, s[1])
        stream += s
    header = np.zeros(256, dtype="<i4")
    header[:4] = [MAGIC, VERSION, len(examples), longest]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(stream, dtype="<u2").tobytes())


def score(losses: np.ndarray, mask: np.ndarray, labels: Sequence[int], ncomp: int = 4) -> int:
    """Count correct examples: losses/mask are (n*ncomp, T) rows, labels has n entries."""
    correct = 0
    for i, label in enumerate(labels):
        rows = slice(i * ncomp, (i + 1) * ncomp)
        m = mask[rows]
        means = (losses[rows] * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1)
        if int(np.argmin(means)) == label:  # argmin takes the first of equal minima, as llm.c
            correct += 1
    return correct


def evaluate(model, examples: List[Dict], B: int, T: int, device, rank: int = 0, world: int = 1,
             autocast=None) -> Dict[str, float]:
    """Accuracy of `model` over this rank's share of `examples` (caller sums across ranks)."""
    import torch
    import torch.nn.functional as F

    per_rank = math.ceil(len(examples) / world)
    mine = examples[rank * per_rank:(rank + 1) * per_rank]
    per_batch = max(1, B // 4)
    correct = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(mine), per_batch):
            chunk = mine[start:start + per_batch]
            rows = [(ex["ctx"], end) for ex in chunk for end in ex["endings"]]
            width = min(T, max(len(c) + len(e) for c, e in rows))
            inputs = np.zeros((len(rows), width), dtype=np.int64)
            targets = np.zeros_like(inputs)
            mask = np.zeros(inputs.shape, dtype=np.float32)
            for r, (ctx, end) in enumerate(rows):
                toks = (ctx + end)[:width + 1]
                n = min(len(toks), width)
                inputs[r, :n] = toks[:n]
                targets[r, :len(toks) - 1] = toks[1:]
                mask[r, len(ctx) - 1:len(toks) - 1] = 1.0
            x = torch.from_numpy(inputs).to(device)
            with (autocast() if autocast else _null()):
                logits, _ = model(x)
            loss = F.cross_entropy(logits.float().transpose(1, 2), torch.from_numpy(targets).to(device),
                                   reduction="none")
            correct += score(loss.cpu().numpy(), mask, [ex["label"] for ex in chunk])
    model.train()
    return {"correct": correct, "total": len(mine)}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
