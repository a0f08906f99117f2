"""HellaSwag eval file + scoring, the --estimate arithmetic, and `pipeline plot`."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pipeline.gpt import estimate as est  # noqa: E402
from pipeline.gpt import hellaswag as hs  # noqa: E402
from pipeline.gpt.model import GPT, GPTConfig  # noqa: E402


def examples(n=5, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ctx = rng.integers(0, 50257, size=int(rng.integers(3, 9))).tolist()
        endings = [rng.integers(0, 50257, size=int(rng.integers(1, 6))).tolist() for _ in range(4)]
        out.append({"label": int(rng.integers(0, 4)), "ctx": ctx, "endings": endings})
    return out


def test_eval_file_round_trip_and_llmc_layout(tmp_path):
    path = str(tmp_path / "hellaswag_val.bin")
    exs = examples()
    hs.write_eval_file(path, exs)
    assert hs.read_eval_file(path) == exs
    raw = np.fromfile(path, dtype="<u2", offset=1024)
    header = np.fromfile(path, dtype="<i4", count=4)
    e0 = exs[0]
    assert header.tolist()[:3] == [20240522, 1, 5]
    # <START> <BYTES> <INDEX> <LABEL> <NUM_COMPLETIONS> <CTX_LEN> ctx... (<LEN> tokens...) x 4
    n0 = 6 + len(e0["ctx"]) + sum(1 + len(e) for e in e0["endings"])
    assert raw[:6].tolist() == [65535, 2 * n0, 0, e0["label"], 4, len(e0["ctx"])]
    sizes = [2 * (6 + len(e["ctx"]) + sum(1 + len(x) for x in e["endings"])) for e in exs]
    assert header[3] == max(sizes) and len(raw) * 2 == sum(sizes)
    open(path, "r+b").write(np.array([123], dtype="<i4").tobytes())
    with pytest.raises(hs.EvalFileError, match="not an llm.c eval file"):
        hs.read_eval_file(path)


def test_score_takes_lowest_mean_completion_loss():
    losses = np.array([[9.0, 1.0, 1.0, 0.0],    # completion rows: mean over mask only
                       [0.0, 2.0, 2.0, 9.0],
                       [0.0, 0.5, 3.0, 0.0],
                       [0.0, 1.5, 0.0, 0.0]], dtype=np.float32)
    mask = np.array([[0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 0, 0]], dtype=np.float32)
    # means: 1.0, 2.0, 1.75, 1.5 -> completion 0 wins
    assert hs.score(losses, mask, [0]) == 1
    assert hs.score(losses, mask, [3]) == 0
    tie = np.ones((4, 4), dtype=np.float32)
    assert hs.score(tie, mask, [0]) == 1  # equal means: the first completion, as llm.c


def test_evaluate_matches_brute_force(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=32))
    exs = examples(6, seed=1)
    got = hs.evaluate(model, exs, B=8, T=32, device="cpu")
    correct = 0
    with torch.no_grad():
        for ex in exs:
            means = []
            for end in ex["endings"]:
                toks = torch.tensor([ex["ctx"] + end])
                logits, _ = model(toks[:, :-1])
                lp = torch.nn.functional.cross_entropy(logits[0], toks[0, 1:], reduction="none")
                means.append(lp[len(ex["ctx"]) - 1:].mean().item())
            correct += int(np.argmin(means) == ex["label"])
    assert got == {"correct": correct, "total": 6}


def test_estimate_arithmetic():
    times = [30.0] + [0.5] * 9 + [0.40, 0.41, 0.45, 0.42, 0.40, 0.40, 0.40, 0.40, 0.40, 0.40]
    e = est.estimate(times, max_steps=4725, price_per_hour=1.006, tokens_per_step=524288,
                     peak_memory_gb=20.5)
    assert e["slowest_step_s"] == 0.45           # steps 0-9 (compile, warm-up) are ignored
    assert e["hours"] == pytest.approx(0.45 * 4725 / 3600)
    assert e["dollars"] == pytest.approx(0.45 * 4725 / 3600 * 1.006)
    assert e["tokens_per_second"] == pytest.approx(524288 / 0.45)
    text = est.format_estimate(e)
    assert "0.59 hours" in text and "$0.59" in text and "20.50 GiB" in text
    with pytest.raises(ValueError):
        est.estimate([0.1] * 5, 100)


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    from pipeline.gpt.plot import main

    runs = []
    for k in range(2):
        d = tmp_path / ("run%d" % k)
        d.mkdir()
        lines = ["s:%d trl:%.4f lr:0.000600 norm:1.00" % (s, 10 - s * 0.1 - k) for s in range(20)]
        lines += ["s:%d tel:%.4f" % (s, 9.5 - s * 0.05 - k) for s in (0, 10, 19)]
        lines += ["s:%d eval:%.4f" % (s, 0.25 + s * 0.001) for s in (10, 19)]
        (d / "main.log").write_text("\n".join(lines) + "\n")
        runs.append(str(d))
    out = str(tmp_path / "loss.png")
    assert main(runs + ["-o", out, "--loss-ref", "3.28"]) == 0
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(out) > 10000
    assert main([str(tmp_path / "missing"), "-o", out]) == 2


def test_estimate_cli_runs_twenty_steps(tmp_path):
    import json

    from pipeline.gpt import train as tr
    from pipeline.shards.llmc import write_shard

    write_shard(str(tmp_path / "e_train_000001.bin"), np.arange(3000) % 500)
    out = str(tmp_path / "est")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = tr.main(["-i", str(tmp_path / "e_train_*.bin"), "-e", "d1", "-1c", "32", "-1h", "2",
                      "-b", "2", "-t", "16", "-x", "4725", "--device", "cpu", "--estimate",
                      "--price-per-hour", "2.0", "-o", out])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    e = json.load(open(os.path.join(out, "estimate.json")))
    assert len(e["step_seconds"]) == 20
    assert e["slowest_step_s"] == max(e["step_seconds"][10:20])
    assert e["hours"] == pytest.approx(e["slowest_step_s"] * 4725 / 3600)
    assert e["dollars"] == pytest.approx(e["hours"] * 2.0)
    assert not os.path.exists(os.path.join(out, "main.log"))  # an estimate is not a run
