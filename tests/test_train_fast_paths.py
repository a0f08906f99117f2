"""The trainer's speed paths: cuBLASLt matmuls (GELU epilogues, tuned algorithms), CUDA-graph
replay of the step, and batch prefetching. On CPU the ops run their reference math, which checks
the autograd wiring; the CUDA tests (skipped without a GPU) check the kernels and the graphs
against PyTorch's own ops and the ordinary step."""
import copy
import os
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pipeline.gpt import cublaslt  # noqa: E402
from pipeline.gpt import train as tr  # noqa: E402
from pipeline.gpt.data import DataLoader  # noqa: E402
from pipeline.gpt.fast.model import FastGPT  # noqa: E402
from pipeline.gpt.fast.plan import FastPlan  # noqa: E402
from pipeline.gpt.logs import parse_log  # noqa: E402
from pipeline.gpt.model import GPT, GPTConfig  # noqa: E402
from pipeline.gpt.step import clip_and_update  # noqa: E402
from pipeline.shards.llmc import write_shard  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")
cuda = pytest.mark.gpu  # skipped without CUDA (conftest.py)


@pytest.fixture(autouse=True)
def restore_tf32():
    """tr.Run turns TF32 on for the process (-f 1); later fp32 tests must not inherit it."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.fixture(scope="module")
def shard_glob(tmp_path_factory):
    d = tmp_path_factory.mktemp("fast_shards")
    rng = np.random.default_rng(1)
    write_shard(str(d / "f_train_000001.bin"), rng.integers(0, 50257, size=20000))
    return str(d / "f_train_*.bin")


def _grads(model, x, y, device_type):
    with torch.autocast(device_type, dtype=torch.bfloat16):
        _, loss = model(x, y, return_logits=False)
    loss.backward()
    return loss.item(), {n: p.grad.float().clone() for n, p in model.named_parameters()}


def _assert_cublaslt_model_matches_plain(ones_column):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32))
    plain = FastGPT(model, FastPlan(fused_loss=True))
    fast = FastGPT(copy.deepcopy(model), FastPlan(fused_loss=True, matmul="cublaslt", ones_column=ones_column))
    x, y = torch.randint(0, 50257, (2, 32)), torch.randint(0, 50257, (2, 32))
    loss_a, ga = _grads(plain, x, y, "cpu")
    loss_b, gb = _grads(fast, x, y, "cpu")
    assert abs(loss_a - loss_b) < 1e-4
    for name, g in ga.items():
        err = ((gb[name] - g).norm() / g.norm().clamp_min(1e-12)).item()
        assert err < 2e-2, (name, err)


def test_cublaslt_model_matches_plain_model_on_cpu_reference_ops():
    """matmul="cublaslt" routes the MLP, attention projections and classifier through the custom
    ops; their CPU reference math must give the plain model's loss and gradients."""
    _assert_cublaslt_model_matches_plain(ones_column=False)


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_mm_op_gradients_in_every_transpose_combination(trans_a, trans_b):
    torch.manual_seed(0)
    A, B = torch.randn(5, 7, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    a = (A.t().contiguous() if trans_a else A.clone()).requires_grad_()
    b = (B.t().contiguous() if trans_b else B.clone()).requires_grad_()
    out = cublaslt.mm(a, b, trans_a, trans_b)
    assert torch.allclose(out, A @ B)
    assert torch.autograd.gradcheck(lambda a, b: cublaslt.mm(a, b, trans_a, trans_b), (a, b))


def test_linear_op_matches_f_linear():
    torch.manual_seed(0)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(cublaslt.linear(x, w, b), torch.nn.functional.linear(x, w, b))
    assert torch.autograd.gradcheck(cublaslt.linear, (x, w, b))


def test_fused_mlp_function_gradients_match_autograd():
    torch.manual_seed(0)
    args = [torch.randn(*s, dtype=torch.float64, requires_grad=True)
            for s in ((6, 4), (16, 4), (16,), (4, 16), (4,))]
    ref = torch.nn.functional.linear(torch.nn.functional.gelu(
        torch.nn.functional.linear(args[0], args[1], args[2]), approximate="tanh"), args[3], args[4])
    got = cublaslt._FusedMLP.apply(*args, True)
    assert torch.allclose(got, ref)
    assert torch.autograd.gradcheck(lambda *a: cublaslt._FusedMLP.apply(*a, True), tuple(args))


def _ones_layout(x):
    """x with cublaslt's ones column appended (float64, for gradcheck)."""
    pad = torch.zeros(x.size(0), cublaslt.ones_width(x.size(1)) - x.size(1), dtype=x.dtype)
    pad[:, 0] = 1
    return torch.cat([x, pad], 1)


def test_with_ones_appends_one_then_zeros():
    x = torch.randn(3, 5, 4)
    aug = cublaslt.with_ones(x)
    assert aug.shape == (3, 5, 64) and aug.dtype == torch.bfloat16
    assert cublaslt.ones_width(768) == 832 and cublaslt.ones_width(56) == 64
    assert torch.equal(aug[..., :4], x.bfloat16())
    assert bool((aug[..., 4] == 1).all()) and bool((aug[..., 5:] == 0).all())


def test_linear_op_in_the_ones_layout_takes_the_bias_gradient_from_the_weight_gradient():
    """x[:, :K] @ w^T + b for x in the ones layout; the bias gradient is the ones column's share of
    the weight-gradient matmul, and the input gradient keeps x's padded shape (the reference pads
    with zeros; the CUDA kernel leaves the pad, which no consumer reads, unwritten)."""
    torch.manual_seed(0)
    x = torch.randn(6, 4, dtype=torch.float64)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    xa = _ones_layout(x).requires_grad_()
    out = cublaslt.linear(xa, w, b)
    assert torch.allclose(out, torch.nn.functional.linear(x, w, b))
    g = torch.randn_like(out)
    out.backward(g)
    assert torch.allclose(b.grad, g.sum(0)) and torch.allclose(w.grad, g.t() @ x)
    assert xa.grad.shape == xa.shape and bool((xa.grad[:, 4:] == 0).all())
    assert torch.allclose(xa.grad[:, :4], g @ w)
    assert torch.autograd.gradcheck(cublaslt.linear, (xa.detach().requires_grad_(), w, b))


def test_fused_mlp_with_ones_column_matches_plain_input():
    torch.manual_seed(0)
    args = [torch.randn(*s, dtype=torch.float64, requires_grad=True)
            for s in ((6, 4), (16, 4), (16,), (4, 16), (4,))]
    plain = cublaslt._FusedMLP.apply(*args, True)
    plain.backward(torch.ones_like(plain))
    want = [a.grad.clone() for a in args]
    xa = _ones_layout(args[0].detach()).requires_grad_()
    rest = [a.detach().requires_grad_() for a in args[1:]]
    got = cublaslt._FusedMLP.apply(xa, *rest, True)
    assert torch.allclose(got, plain)
    got.backward(torch.ones_like(got))
    assert torch.allclose(xa.grad[:, :4], want[0]) and bool((xa.grad[:, 4:] == 0).all())
    for a, w in zip(rest, want[1:]):
        assert torch.allclose(a.grad, w)
    assert torch.autograd.gradcheck(lambda *a: cublaslt._FusedMLP.apply(*a, True),
                                    (xa.detach().requires_grad_(), *rest))


def test_cublaslt_model_with_ones_column_matches_plain_model(monkeypatch):
    """The ones-column layout (used under torch.compile) through the reference ops: same loss and
    gradients as the plain model, biases included."""
    widened = []
    real = cublaslt.with_ones
    monkeypatch.setattr(cublaslt, "with_ones", lambda x: widened.append(x.shape) or real(x))
    _assert_cublaslt_model_matches_plain(ones_column=True)
    assert len(widened) == 4  # ln_1 and ln_2 of both layers


@pytest.mark.parametrize("optimizer", ["torch_fused", "trainer"])
@pytest.mark.parametrize("grad_scale", [5.0, 1e-4])  # clipped / not clipped
def test_fused_adamw_clip_equals_clip_grad_norm(grad_scale, optimizer):
    """The trainer's AdamW does clip and update in its `clip_and_step`; with PyTorch's fused AdamW
    underneath ("torch-fused" plans) the clip divisor goes into the kernel (grad_scale) instead of
    rescaling the gradients: same norm, same update as clip_grad_norm_ + a plain AdamW step."""
    from pipeline.gpt.adamw import AdamW
    torch.manual_seed(0)
    pa = [torch.randn(1000, requires_grad=True) for _ in range(3)]
    pb = [p.detach().clone().requires_grad_() for p in pa]
    for a, b in zip(pa, pb):
        g = torch.randn_like(a) * grad_scale
        a.grad, b.grad = g.clone(), g.clone()
    if optimizer == "trainer":
        fused = AdamW(pa, lr=1e-2, weight_decay=0.1)
        plain = torch.optim.AdamW(pb, lr=1e-2, weight_decay=0.1, foreach=False)
    else:
        fused = AdamW(pa, lr=1e-2, fused=True, triton=False)
        plain = torch.optim.AdamW(pb, lr=1e-2, foreach=False)
    norm = clip_and_update(pa, fused)
    want = torch.nn.utils.clip_grad_norm_(pb, 1.0)
    plain.step()
    assert torch.allclose(norm, want)
    assert getattr(fused, "grad_scale", None) is None
    for a, b in zip(pa, pb):
        assert torch.allclose(a, b, atol=1e-6)


def test_step_readback_returns_each_step_once_in_order():
    run = tr.Run(tr.parse_args(["-i", "unused", "--device", "cpu"]))
    rb = tr.StepReadback(run)
    seen = []
    for s in range(4):
        rb.begin()
        seen.append(rb.push(s, 0.1 * s, torch.tensor(float(s)), torch.tensor(2.0 * s)))
    seen.append(rb.drain())
    assert seen[0] is None and rb.drain() is None
    assert [(d[0], d[2], d[3]) for d in seen[1:]] == [(s, float(s), 2.0 * s) for s in range(4)]
    assert all(d[4] >= 0 for d in seen[1:])


def test_prefetched_batch_is_not_lost_on_checkpoint(shard_glob):
    """A checkpoint written while a batch is prefetched must resume at that batch."""
    run = tr.Run(tr.parse_args(["-i", shard_glob, "--device", "cpu"]))
    source = tr.batch_source(DataLoader(shard_glob, 2, 16, shuffle=True), run)
    next(source)
    source.prefetch()
    state = source.state_dict()
    pending = next(source)
    resumed = DataLoader(shard_glob, 2, 16, shuffle=True)
    resumed.load_state_dict(state)
    x, y = resumed.next_batch()
    assert np.array_equal(x, pending[0].numpy()) and np.array_equal(y, pending[1].numpy())


# ----------------------------------------------------------------------------- CUDA

@cuda
def test_cublaslt_kernels_match_pytorch():
    assert cublaslt.available(), cublaslt.unavailable_reason(torch.cuda.current_device())
    torch.manual_seed(0)
    dev = "cuda"
    a = torch.randn(256, 192, device=dev).bfloat16()
    b = torch.randn(192, 320, device=dev).bfloat16()
    bias = torch.randn(320, device=dev).bfloat16()
    ref = a.float() @ b.float()

    def close(got, want, tol=2e-2):
        return ((got.float() - want).norm() / want.norm()).item() < tol
    for ta in (False, True):
        for tb in (False, True):
            aa = a.t().contiguous() if ta else a
            bb = b.t().contiguous() if tb else b
            assert close(cublaslt.mm(aa, bb, ta, tb), ref), (ta, tb)
    assert close(cublaslt.linear(a, b.t().contiguous(), bias), ref + bias.float())
    h, pre = cublaslt.linear_gelu(a, b.t().contiguous(), bias)
    assert close(pre, ref + bias.float())
    assert close(h, torch.nn.functional.gelu(ref + bias.float(), approximate="tanh"))


@cuda
def test_step_readback_times_are_gpu_step_durations():
    """Each step's time is its GPU duration, the last one included (read at the drain)."""
    run = tr.Run(tr.parse_args(["-i", "unused"]))
    rb = tr.StepReadback(run)
    cycles = int(torch.cuda.get_device_properties(run.device).clock_rate * 20)  # ~20 ms (kHz)
    one = torch.ones((), device=run.device)
    torch.cuda._sleep(cycles)  # warm-up
    torch.cuda.synchronize()
    seen = []
    for s in range(5):
        rb.begin()
        torch.cuda._sleep(cycles)
        done = rb.push(s, 0.0, one * s, one)
        if done:
            seen.append(done)
    seen.append(rb.drain())
    assert [d[0] for d in seen] == list(range(5)) and [d[2] for d in seen] == [float(s) for s in range(5)]
    times = [d[4] for d in seen]
    assert max(times) < 1.5 * min(times), times  # the last step is not cut short


def _tiny_trainer(shard_glob, B, T, accum, graphs):
    argv = ["-i", shard_glob, "-e", "d2", "-1c", "128", "-1h", "4", "-b", str(B), "-t", str(T),
            "-d", str(B * T * accum), "--compile", "0", "--cublaslt", "1", "--cuda-graphs", str(graphs),
            "--quiet"]
    args = tr.parse_args(argv)
    run = tr.Run(args)
    raw = tr.build_model(args, run, -1)
    return run, tr.build_trainer(args, run, raw, accum, 8 * B * T * accum)


@cuda
@pytest.mark.parametrize("accum", [1, 2])
def test_graph_replay_matches_ordinary_steps(shard_glob, accum):
    B, T = 4, 64
    losses = {}
    for graphs in (0, 1):
        run, (plan, _, _, _, step) = _tiny_trainer(shard_glob, B, T, accum, graphs)
        assert plan.cuda_graphs == bool(graphs)
        batches = tr.batch_source(DataLoader(shard_glob, B, T), run)
        out = []
        for i in range(8):
            loss, norm = step(batches, 1e-3 * (i + 1))
            batches.prefetch()
            out.append((loss.item(), norm.item()))
        assert getattr(step, "active", False) == bool(graphs), getattr(step, "failed", None)
        losses[graphs] = out
    for (l0, n0), (l1, n1) in zip(losses[0], losses[1]):
        assert abs(l0 - l1) < 1e-3 and abs(n0 - n1) < 1e-2 * max(1.0, n0)


@cuda
def test_trainer_graphs_on_cuda_and_short_run_defaults(shard_glob, tmp_path):
    """CUDA graphs: checkpoints (with lr as a device tensor in the optimizer under graph replay) are
    written, and a resumed run continues on the same losses. A model this small on a run this short
    skips the fast paths' set-up by default (the plan's short-run rule): cuBLASLt stays off unless
    asked for."""
    out, resumed = str(tmp_path / "gpu_run"), str(tmp_path / "gpu_resumed")
    common = ["-i", shard_glob, "-e", "d2", "-1c", "128", "-1h", "4", "-b", "4", "-t", "64", "-x", "12",
              "-l", "3e-3", "-n", "6", "--compile", "0", "--cuda-graphs", "1", "--quiet", "--save-dtype", "fp32"]
    assert tr.main(common + ["-o", out]) == 0
    params = open(os.path.join(out, "run_parameters.txt")).read()
    assert re.search(r"^cuda graphs\s*\| 1$", params, re.M), params
    assert re.search(r"^cublaslt\s*\| 0$", params, re.M), params
    assert os.path.exists(os.path.join(out, "DONE_00000012"))
    assert tr.main(common + ["-o", resumed, "-es", "6"]) == 0
    assert tr.main(common + ["-o", resumed, "-y", "1"]) == 0
    full, after = parse_log(out)["train"], parse_log(resumed)["train"]
    assert [s for s, _ in after] == list(range(12))
    for (_, a), (_, b) in zip(full[6:], after[6:]):
        assert abs(a - b) < 1e-3
