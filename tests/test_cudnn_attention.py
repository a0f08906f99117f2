"""Attention through the cuDNN frontend (`pipeline.gpt.cudnn_attention`): the ops' reference math
against PyTorch's SDPA with autograd and their registration (CPU), the model and the compiled model
on that path against the SDPA path (CPU, reference math), and, on CUDA with the
`nvidia-cudnn-frontend` package, cuDNN's kernels against SDPA, inside CUDA graphs too."""
import copy

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from pipeline.gpt import cudnn_attention as ca  # noqa: E402
from pipeline.gpt import train as tr  # noqa: E402
from pipeline.gpt.fast.model import FastGPT, compile_model, register_inductor_fallbacks  # noqa: E402
from pipeline.gpt.fast.plan import FastPlan, resolve_plan  # noqa: E402
from pipeline.gpt.model import GPT, GPTConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _frontend_ready():
    if not torch.cuda.is_available():
        return False
    return not isinstance(ca._frontend(), str)


def frontend(test):
    """A GPU test (skipped without CUDA, see conftest.py) that also needs nvidia-cudnn-frontend."""
    return pytest.mark.gpu(pytest.mark.skipif(not _frontend_ready(), reason="needs nvidia-cudnn-frontend")(test))


def _sdpa(qkv, n_head):
    B, T, C3 = qkv.shape
    C = C3 // 3
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in qkv.split(C, dim=2))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("T", [1, 7, 16])
def test_reference_matches_sdpa_output_and_packed_gradient(T):
    gen = torch.Generator().manual_seed(T)
    B, H, hd = 2, 3, 8
    qkv = torch.randn(B, T, 3 * H * hd, generator=gen, requires_grad=True)
    dy = torch.randn(B, T, H * hd, generator=gen)
    y = ca.attention(qkv, H)
    (g,) = torch.autograd.grad(y, qkv, dy)
    x = qkv.detach().requires_grad_(True)
    y_ref = _sdpa(x, H)
    (g_ref,) = torch.autograd.grad(y_ref, x, dy)
    assert y.shape == (B, T, H * hd) and g.shape == qkv.shape
    assert torch.allclose(y, y_ref, atol=1e-5) and torch.allclose(g, g_ref, atol=1e-5)
    # the saved statistics are each query row's log-sum-exp of its scaled, causally masked scores
    _, stats = ca.attention_forward(qkv.detach(), H)
    q, k = (t.view(B, T, H, hd).transpose(1, 2) for t in qkv.detach().split(H * hd, dim=2)[:2])
    s = (q @ k.transpose(-2, -1)) / hd ** 0.5
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    assert torch.allclose(stats, torch.logsumexp(s, -1, keepdim=True), atol=1e-5)


def test_ops_pass_torch_library_checks():
    B, T, H, hd = 2, 8, 2, 8
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, T, 3 * H * hd, generator=gen, requires_grad=True)
    torch.library.opcheck(ca.attention_forward, (qkv, H))
    y, stats = ca.attention_forward(qkv.detach(), H)
    torch.library.opcheck(ca.attention_backward, (qkv.detach(), y, stats, torch.randn(B, T, H * hd), H))


def _pair():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32))
    plain = FastGPT(model, FastPlan(fused_loss=True))
    fast = FastGPT(copy.deepcopy(model), FastPlan(fused_loss=True, attention="cudnn"))
    return plain, fast


def _loss_and_grads(model, x, y):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(x, y, return_logits=False)
    loss.backward()
    return loss.item(), {n.replace("_orig_mod.", ""): p.grad.float().clone() for n, p in model.named_parameters()}


def test_model_on_the_frontend_path_matches_sdpa(monkeypatch):
    plain, fast = _pair()
    calls = []
    real = ca.attention
    monkeypatch.setattr(ca, "attention", lambda qkv, n_head: calls.append(qkv.shape) or real(qkv, n_head))
    x, y = torch.randint(0, 50257, (2, 32)), torch.randint(0, 50257, (2, 32))
    loss_a, ga = _loss_and_grads(plain, x, y)
    assert calls == []
    loss_b, gb = _loss_and_grads(fast, x, y)
    assert calls == [(2, 32, 96)] * 2  # each layer's packed q|k|v went through the op
    assert abs(loss_a - loss_b) < 2e-3
    for name in ga:  # bf16 autocast on both sides: a few roundings apart
        assert _rel(gb[name], ga[name]) < 3e-2, name
    # outside bf16 training (eval, sampling) the model keeps SDPA
    with torch.no_grad():
        fast(x, y)
    assert len(calls) == 2


def test_compiled_model_on_the_frontend_path_matches_eager():
    _, fast = _pair()
    compiled_copy = copy.deepcopy(fast)
    x, y = torch.randint(0, 50257, (2, 32)), torch.randint(0, 50257, (2, 32))
    loss_eager, g_eager = _loss_and_grads(fast, x, y)
    torch._dynamo.reset()
    loss_compiled, g_compiled = _loss_and_grads(compile_model(compiled_copy), x, y)
    assert abs(loss_eager - loss_compiled) < 2e-3
    for name in g_eager:
        assert _rel(g_compiled[name], g_eager[name]) < 3e-2, name


def test_ops_get_explicit_inductor_fallbacks():
    """As every gpt:: op (test_residual_norm.py says why)."""
    from torch._inductor.lowering import lowerings
    register_inductor_fallbacks()
    assert torch.ops.gpt.cudnn_attention_forward.default in lowerings
    assert torch.ops.gpt.cudnn_attention_backward.default in lowerings


def test_unavailable_off_cuda_says_why():
    assert not ca.available(torch.device("cpu"), 2, 16, 2, 16)
    assert ca.unavailable_reason(0) == "cpu is not a CUDA device"
    if not torch.cuda.is_available():
        assert ca._frontend() == "no CUDA"


def test_explicit_flag_that_cannot_apply_says_why():
    config = GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32)
    args = tr.parse_args(["-i", "unused", "--device", "cpu", "--cudnn-attention", "1", "--attention", "eager"])
    plan, notes = resolve_plan(args, torch.device("cpu"), config, 1, False, 10 ** 9, bf16=False)
    assert plan.attention == "eager"
    assert any("--cudnn-attention 1 ignored: it needs --attention flash on a CUDA device" in n for n in notes)
    # the default stays quiet off CUDA (where the reference model runs)
    args = tr.parse_args(["-i", "unused", "--device", "cpu"])
    plan, notes = resolve_plan(args, torch.device("cpu"), config, 1, False, 10 ** 9, bf16=False)
    assert plan.reference and notes == []


def test_trainer_flag_is_parsed():
    args = tr.parse_args(["-i", "x_*.bin", "--cudnn-attention", "0"])
    assert args.cudnn_attention == 0
    assert tr.parse_args(["-i", "x_*.bin"]).cudnn_attention is None


# ----- CUDA + nvidia-cudnn-frontend -----

@frontend
def test_frontend_matches_sdpa_at_gpt2_head_shape():
    assert ca.available(torch.device("cuda"), 4, 1024, 12, 64), ca.unavailable_reason()
    gen = torch.Generator(device="cuda").manual_seed(0)
    B, T, H, hd = 4, 1024, 12, 64
    qkv = torch.randn(B, T, 3 * H * hd, device="cuda", generator=gen).bfloat16().requires_grad_(True)
    dy = torch.randn(B, T, H * hd, device="cuda", generator=gen).bfloat16()
    y = ca.attention(qkv, H)
    (g,) = torch.autograd.grad(y, qkv, dy)
    x = qkv.detach().requires_grad_(True)
    y_ref = _sdpa(x, H)
    (g_ref,) = torch.autograd.grad(y_ref, x, dy)
    assert _rel(y, y_ref) < 1e-2 and _rel(g, g_ref) < 1e-2
    # each direction runs on the plan timed fastest, where cuDNN offered more than one
    graphs = ca._graphs[(torch.cuda.current_device(), B, T, H, hd)]
    for direction, (index, _) in (("forward", graphs.forward_plan), ("backward", graphs.backward_plan)):
        tuned = graphs.tuning.get(direction)
        if tuned is not None:
            assert index == tuned["chosen"] and tuned["ms"][index] == min(tuned["ms"]) < float("inf")
    # against float32 reference math as well (one bf16 rounding of the inputs' results)
    y32, stats32 = ca._forward_reference(qkv.detach(), H)
    assert _rel(y, y32) < 1e-2


@frontend
def test_frontend_runs_inside_cuda_graphs():
    B, T, H, hd = 2, 256, 4, 64
    assert ca.available(torch.device("cuda"), B, T, H, hd), ca.unavailable_reason()
    gen = torch.Generator(device="cuda").manual_seed(1)
    qkv = torch.randn(B, T, 3 * H * hd, device="cuda", generator=gen).bfloat16()
    dy = torch.randn(B, T, H * hd, device="cuda", generator=gen).bfloat16()
    y0, stats0 = ca.attention_forward(qkv, H)
    g0 = ca.attention_backward(qkv, y0, stats0, dy, H)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on the capture stream, as torch.cuda.graph advises
        ca.attention_backward(qkv, *ca.attention_forward(qkv, H), dy, H)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y1, stats1 = ca.attention_forward(qkv, H)
        g1 = ca.attention_backward(qkv, y1, stats1, dy, H)
    qkv.mul_(-1)  # replay reads the buffers' current contents
    graph.replay()
    y_neg, _ = ca.attention_forward(qkv, H)
    torch.cuda.synchronize()
    assert torch.equal(y1, y_neg)
    qkv.mul_(-1)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y1, y0) and torch.equal(stats1, stats0)
    assert _rel(g1, g0) < 1e-3  # dq is accumulated with atomics: not bitwise repeatable


@frontend
def test_compiled_cuda_training_step_with_frontend_matches_sdpa():
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=128, n_layer=2, n_head=2, n_embd=128)
    model = GPT(cfg).cuda()
    plain = FastGPT(model, FastPlan(fused_loss=True, loss_kernel="triton"))
    fast = FastGPT(copy.deepcopy(model), FastPlan(fused_loss=True, loss_kernel="triton", attention="cudnn"))
    assert ca.available(torch.device("cuda"), 4, 128, 2, 64), ca.unavailable_reason()
    x = torch.randint(0, 50257, (4, 128), device="cuda")
    y = torch.randint(0, 50257, (4, 128), device="cuda")
    out = []
    for model in (plain, compile_model(fast)):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(x, y, return_logits=False)
        loss.backward()
        out.append((loss.item(), {n.replace("_orig_mod.", ""): p.grad.float() for n, p in model.named_parameters()}))
    (la, ga), (lb, gb) = out
    assert abs(la - lb) < 1e-2
    for name in ga:
        assert _rel(gb[name], ga[name]) < 3e-2, name
