"""`pipeline train` end to end on CPU with a tiny model: learning, exact resume, logs, errors, CLI."""
import os
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pipeline.gpt import checkpoint as ckpt  # noqa: E402
from pipeline.gpt import train as tr  # noqa: E402
from pipeline.gpt.data import MT19937, DataLoader, random_permutation  # noqa: E402
from pipeline.gpt.logs import parse_log  # noqa: E402
from pipeline.gpt.fast.model import FastGPT  # noqa: E402
from pipeline.gpt.fast.plan import FastPlan  # noqa: E402
from pipeline.gpt.model import GPT, GPTConfig  # noqa: E402
from pipeline.shards.llmc import write_shard  # noqa: E402

TINY = ["-e", "d2", "-1c", "32", "-1h", "2", "-b", "4", "-t", "32", "--device", "cpu", "--quiet"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two train shards and a val shard of a learnable stream (a repeating 50-token phrase)."""
    d = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    phrase = rng.integers(0, 50257, size=50)
    stream = np.tile(phrase, 200)
    write_shard(str(d / "x_train_000001.bin"), stream[:4000])
    write_shard(str(d / "x_train_000002.bin"), stream[4000:8000])
    write_shard(str(d / "x_val_000000.bin"), stream[:2000])
    return str(d / "x_train_*.bin"), str(d / "x_val_*.bin")


def run(argv):
    return tr.main(list(argv))


def test_loss_goes_down_and_main_log_parses(shards, tmp_path):
    train, val = shards
    out = str(tmp_path / "log")
    assert run(["-i", train, "-j", val, "-o", out, "-x", "20", "-l", "1e-2", "-u", "2", "-v", "10",
                "-m", "2", "-s", "0"] + TINY) == 0
    lines = open(os.path.join(out, "main.log")).read().splitlines()
    pattern = re.compile(r"^s:\d+ (trl:\d+\.\d{4} lr:\d+\.\d{6} norm:\d+\.\d{2}|tel:\d+\.\d{4}|"
                         r"eval:\d+\.\d{4})$")
    assert lines and all(pattern.match(line) for line in lines), lines
    log = parse_log(out)
    assert [s for s, _ in log["train"]] == list(range(20))
    assert [s for s, _ in log["val"]] == [0, 10, 20]
    assert log["train"][-1][1] < log["train"][0][1] - 2.0  # ~10.8 -> well below
    assert log["val"][-1][1] < log["val"][0][1] - 2.0
    params = open(os.path.join(out, "run_parameters.txt")).read()
    assert "grad_accum_steps" in params and "num_parameters" in params


def test_resume_reproduces_the_uninterrupted_run_exactly(shards, tmp_path):
    train, _ = shards
    common = ["-i", train, "-x", "8", "-n", "4", "-l", "3e-3", "-u", "2", "-q", "0.1", "-c", "0.1",
              "-d", "256", "-s", "0", "--save-dtype", "fp32"] + TINY  # -d 256 = 2 micro-steps
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert run(common + ["-o", a]) == 0
    assert run(common + ["-o", b, "-es", "4"]) == 0          # "crash" after the step-4 checkpoint
    assert not os.path.exists(os.path.join(b, "model_00000008.bin"))
    assert run(common + ["-o", b, "-y", "1"]) == 0           # resume from DONE_00000004
    la, lb = parse_log(a)["train"], parse_log(b)["train"]
    assert la == lb and len(la) == 8
    final = "model_00000008.bin"
    assert open(os.path.join(a, final), "rb").read() == open(os.path.join(b, final), "rb").read()


def test_eager_attention_plan_agrees_with_the_reference():
    """--attention eager (the T x T matrix, a fast-path plan) computes the reference's function."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, n_layer=2, n_head=4, n_embd=64))
    x = torch.randint(0, 50257, (2, 64))
    with torch.no_grad():
        flash, lf = model(x, x)
        eager, le = FastGPT(model, FastPlan(attention="eager"))(x, x)
    assert torch.allclose(flash, eager, atol=1e-5, rtol=1e-4)
    assert abs(lf.item() - le.item()) < 1e-5


def test_loss_ignores_padded_vocabulary():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=32))
    x = torch.randint(0, 50257, (2, 16))
    logits, loss = model(x, x)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 50257), x.reshape(-1))
    assert torch.allclose(loss, ref)
    loss.backward()
    assert model.transformer.wte.weight.grad[50257:].abs().max() == 0  # padded rows never trained


def test_corrupt_shard_is_named(shards, tmp_path, capsys):
    bad = tmp_path / "bad_train_000001.bin"
    data = open(shards[0].replace("*", "000001"), "rb").read()
    bad.write_bytes(data[:-10])
    assert run(["-i", str(bad), "-x", "1"] + TINY) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "bytes" in err
    assert run(["-i", str(tmp_path / "nothing_*.bin"), "-x", "1"] + TINY) == 2
    assert "no train shards match" in capsys.readouterr().err


def test_checkpoint_shape_mismatch_is_clear(shards, tmp_path, capsys):
    model = GPT(GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32))
    path = str(tmp_path / "m.bin")
    ckpt.save_model(model, path)
    argv = ["-i", shards[0], "-e", path, "-1d", "4", "-b", "4", "-t", "32", "--device", "cpu"]
    assert run(argv) == 2
    assert "shape mismatch" in capsys.readouterr().err


def test_both_shape_flag_spellings_and_negative_values():
    a = tr.parse_args(["-i", "x", "-1d", "3", "-1c", "48", "-1h", "4", "-x", "-1", "-es", "-1"])
    b = tr.parse_args(["-i", "x", "-ld", "3", "-lc", "48", "-lh", "4", "-x", "-1", "-es", "-1"])
    assert (a.ld, a.lc, a.lh, a.x, a.es) == (b.ld, b.lc, b.lh, b.x, b.es) == (3, 48, 4, -1, -1)
    assert tr.fresh_config(a) == GPTConfig(block_size=1024, n_layer=3, n_head=4, n_embd=48)
    c = tr.parse_args(["-id", "t*.bin", "-iv", "v*.bin", "--preset", "course", "-b", "16"])
    assert (c.i, c.j, c.b, c.d, c.x, c.u, c.c, c.l) == ("t*.bin", "v*.bin", 16, 524288, 4725, 470,
                                                        0.1, 6e-4)


def test_loader_matches_llmc_sampling(shards):
    # llm.c's rand.h documents manual_seed(137) -> these first draws
    assert MT19937(137).randint32(3).tolist() == [4053805790, 2173880614, 380293709]
    train, val = shards
    loader = DataLoader(train, B=2, T=8, shuffle=True)
    rng = MT19937(42)
    order = random_permutation([0, 1], rng)                 # epoch shard order
    tokens = np.fromfile(loader.files[order[0]], dtype="<u2", offset=1024)
    windows = random_permutation(list(range((len(tokens) - 1) // 16)), rng)
    x, y = loader.next_batch()
    start = windows[0] * 16
    assert x.ravel().tolist() == tokens[start:start + 16].tolist()
    assert y.ravel().tolist() == tokens[start + 1:start + 17].tolist()
    v = DataLoader(val, B=2, T=8, shuffle=False, what="val")
    vt = np.fromfile(v.files[0], dtype="<u2", offset=1024)
    assert v.next_batch()[0].ravel().tolist() == vt[:16].tolist()
    assert v.next_batch()[0].ravel().tolist() == vt[16:32].tolist()  # sequential windows


def test_rank_offsets_split_each_window(shards):
    train, _ = shards
    r0 = DataLoader(train, B=2, T=8, rank=0, world=2, shuffle=False)
    r1 = DataLoader(train, B=2, T=8, rank=1, world=2, shuffle=False)
    tokens = np.fromfile(r0.files[0], dtype="<u2", offset=1024)
    assert r0.next_batch()[0].ravel().tolist() == tokens[:16].tolist()
    assert r1.next_batch()[0].ravel().tolist() == tokens[16:32].tolist()


def test_torchrun_ddp_on_cpu(shards, tmp_path):
    """Two gloo ranks: rank 0 alone writes main.log and the model, every rank its state file."""
    import subprocess
    import sys

    train, val = shards
    out = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "pipeline.gpt.train", "-i", train, "-j", val, "-o", out, "-x", "4", "-d", "256",
           "-v", "4", "-m", "1", "-s", "0", "-n", "4", "-l", "1e-2"] + TINY
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = parse_log(out)
    assert [s for s, _ in log["train"]] == [0, 1, 2, 3] and len(log["val"]) == 2
    names = sorted(os.listdir(out))
    assert {"model_00000004.bin", "state_00000004_00000.bin", "state_00000004_00001.bin",
            "DONE_00000004"} <= set(names)
    assert proc.stdout.count("s:4 val loss") == 1  # only rank 0 prints
