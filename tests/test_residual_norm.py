"""The fused residual add + layernorm (`pipeline.gpt.residual_norm`): its reference math against
PyTorch's own layernorm and autograd (CPU, float64), the model regrouped around it against the
plain model, and the Triton kernels against the reference (CUDA only)."""
import copy

import pytest

torch = pytest.importorskip("torch")

from pipeline.gpt import residual_norm as rn  # noqa: E402
from pipeline.gpt.cublaslt import ones_width  # noqa: E402
from pipeline.gpt.fast.model import FastGPT, compile_model  # noqa: E402
from pipeline.gpt.fast.plan import FastPlan  # noqa: E402
from pipeline.gpt.model import GPT, GPTConfig  # noqa: E402

FUSED = FastPlan(matmul="cublaslt", fused_loss=True, fused_residual=True, ones_column=True)

pytestmark = pytest.mark.usefixtures("torch_one_thread")
cuda = pytest.mark.gpu  # skipped without CUDA (conftest.py)


def _inputs(M=6, C=5, dtype=torch.float64, device="cpu", seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)

    def r(*s, std=1.0, dt=dtype):
        return (torch.randn(*s, generator=gen, device=device, dtype=torch.float32) * std).to(dt)
    wdt = torch.float64 if dtype == torch.float64 else torch.float32
    return (r(M, C), r(M, C, std=0.5), r(C, std=0.1, dt=wdt), 1 + r(C, std=0.1, dt=wdt),
            r(C, std=0.1, dt=wdt))


@pytest.mark.parametrize("width", [5, 64])
def test_forward_is_residual_add_then_layer_norm(width):
    x, y, bias, w, b = _inputs()
    x_new, h, mean, rstd = rn.residual_norm_forward(x, y, bias, w, b, width, 1e-5)
    s = x + y + bias
    assert torch.allclose(x_new, s)
    assert torch.allclose(h[:, :5], torch.nn.functional.layer_norm(s, (5,), w, b, 1e-5))
    assert torch.allclose(mean, s.mean(1)) and torch.allclose(rstd, 1 / (s.var(1, unbiased=False) + 1e-5).sqrt())
    if width > 5:  # cuBLASLt's ones column, then zeros
        assert bool((h[:, 5] == 1).all()) and bool((h[:, 6:] == 0).all())


@pytest.mark.parametrize("width", [5, 64])
def test_gradients_match_autograd_of_the_unfused_ops(width):
    """All five gradients (residual, branch, add's bias, layernorm weight and bias) through the
    backward op, against autograd through x + y + bias and F.layer_norm; then gradcheck."""
    leaves = [t.requires_grad_() for t in _inputs()]
    x_new, h = rn.residual_norm_forward(*leaves, width, 1e-5)[:2]
    gen = torch.Generator().manual_seed(1)
    gx, gh = torch.randn(x_new.shape, generator=gen, dtype=x_new.dtype), torch.randn(h.shape, generator=gen, dtype=h.dtype)
    got = torch.autograd.grad((x_new * gx).sum() + (h * gh).sum(), leaves)
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    x, y, bias, w, b = ref_leaves
    s = x + y + bias
    ref_h = torch.nn.functional.layer_norm(s, (5,), w, b, 1e-5)
    want = torch.autograd.grad((s * gx).sum() + (ref_h * gh[:, :5]).sum(), ref_leaves)
    for g, e in zip(got, want):
        assert torch.allclose(g, e)
    assert torch.autograd.gradcheck(lambda *a: rn.residual_norm_forward(*a, width, 1e-5)[:2], tuple(leaves))


def test_unused_outputs_need_no_gradient():
    """Only the normalised output read (the last block's stream, which feeds only ln_f), or only
    the residual stream read: the missing gradient counts as zero."""
    leaves = [t.requires_grad_() for t in _inputs()]
    assert torch.autograd.gradcheck(lambda *a: rn.residual_norm_forward(*a, 5, 1e-5)[1], tuple(leaves))
    assert torch.autograd.gradcheck(lambda *a: rn.residual_norm_forward(*a, 5, 1e-5)[0], tuple(leaves))


def _grads(model, x, y):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(x, y, return_logits=False)
    loss.backward()
    return loss.item(), {n: p.grad.float().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("ones_column", [True, False])
def test_fused_residual_model_matches_plain_model(monkeypatch, ones_column):
    """The blocks regrouped around residual_norm (cuBLASLt ops on their CPU reference math), in the
    ones-column layout and without it: the plain model's loss, and gradients at least as close to
    a float64 run of the same model as the plain model's own bf16 gradients are (nonzero layernorm
    biases and projection biases, so that every gradient is exercised)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
            elif isinstance(m, torch.nn.Linear) and m.bias is not None:
                m.bias.normal_(0, 0.1)
    plain = FastGPT(model, FastPlan(fused_loss=True))
    exact = FastGPT(copy.deepcopy(model).double(), FastPlan(fused_loss=True))
    # ones_column=False: the plain layout for every matmul input
    fast = FastGPT(copy.deepcopy(model), FastPlan(matmul="cublaslt", fused_loss=True, fused_residual=True,
                                                  ones_column=ones_column))
    calls = []
    real = rn.residual_norm_forward
    monkeypatch.setattr(rn, "residual_norm_forward", lambda *a: calls.append(a[5]) or real(*a))
    x, y = torch.randint(0, 50257, (2, 32)), torch.randint(0, 50257, (2, 32))
    loss_plain, g_plain = _grads(plain, x, y)
    loss_fast, g_fast = _grads(fast, x, y)
    wide = ones_width(32) if ones_column else 32
    assert calls == [wide] * 3 + [32]  # ln_2, ln_1 of block 1, ln_2, then ln_f (plain)
    _, loss_exact = exact(x, y, return_logits=False)
    loss_exact.backward()
    assert abs(loss_fast - loss_plain) < 2e-3 and abs(loss_fast - loss_exact.item()) < 2e-3
    for name, p in exact.named_parameters():
        want = p.grad.float()
        err_fast = ((g_fast[name] - want).norm() / want.norm()).item()
        err_plain = ((g_plain[name] - want).norm() / want.norm()).item()
        assert err_fast < max(1.5 * err_plain, 5e-3), (name, err_fast, err_plain)


def test_compiled_model_takes_the_fused_path():
    """Under torch.compile the compiled backward wires the ops as eager autograd does: every
    gradient behind the first residual add equals the eager fused model's (the ops run their
    reference math on CPU in both); the plain path would differ by bf16 rounding (~1e-2). Before
    it, inductor's own layernorm (block 0's ln_1) and embedding."""
    torch.manual_seed(0)
    base = GPT(GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32))
    eager = FastGPT(copy.deepcopy(base), FUSED)
    compiled = FastGPT(copy.deepcopy(base), FUSED)
    x, y = torch.randint(0, 50257, (2, 32)), torch.randint(0, 50257, (2, 32))
    loss_eager, g_eager = _grads(eager, x, y)
    loss_compiled, _ = _grads(compile_model(compiled), x, y)
    assert abs(loss_eager - loss_compiled) < 1e-4
    for name, p in compiled.named_parameters():
        err = ((p.grad.float() - g_eager[name]).norm() / g_eager[name].norm()).item()
        first = name.startswith(("model.transformer.wte", "model.transformer.wpe", "model.transformer.h.0.ln_1"))
        assert err < (2e-2 if first else 1e-6), (name, err)


def test_fused_residual_in_bf16_training_and_in_inference_only(monkeypatch):
    """The plan's fused residual runs in bf16 training and in inference (no gradients, no autocast:
    the decode engine's setting), not in evaluation under autocast, without bf16 autocast while
    training, or with recompute."""
    calls = []
    real = rn.residual_norm_forward
    monkeypatch.setattr(rn, "residual_norm_forward", lambda *a: calls.append(1) or real(*a))
    model = GPT(GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16))
    x = torch.randint(0, 50257, (1, 4))

    def fused_ops(plan, autocast=True, grad=True):
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), torch.set_grad_enabled(grad):
            FastGPT(model, plan)(x, x)
        return len(calls)
    assert fused_ops(FUSED) == 2
    assert fused_ops(FastPlan(fused_residual=True)) == 2  # with PyTorch's matmuls too
    assert fused_ops(FUSED, grad=False) == 0  # evaluation under autocast: the plain blocks
    assert fused_ops(FUSED, autocast=False) == 0  # training without bf16 autocast
    assert fused_ops(FastPlan(fused_residual=True), autocast=False, grad=False) == 2  # inference
    assert fused_ops(FastPlan(matmul="cublaslt", fused_residual=True, recompute=True)) == 0


@cuda
@pytest.mark.parametrize("width,with_gx", [(832, True), (768, False)])
def test_triton_kernels_match_reference(width, with_gx):
    """d12's width, bf16 activations and float32 parameters, a row count that leaves the last
    program's rows partly empty."""
    x, y, bias, w, b = _inputs(M=1000, C=768, dtype=torch.bfloat16, device="cuda")
    got = rn.residual_norm_forward(x, y, bias, w, b, width, 1e-5)
    want = rn._forward_reference(x, y, bias, w, b, width, 1e-5)
    assert torch.equal(got[0], want[0])
    assert (got[1].float() - want[1].float()).abs().max().item() <= 0.02  # one bf16 rounding
    for g, e in zip(got[2:], want[2:]):
        assert torch.allclose(g, e, rtol=1e-5, atol=1e-6)
    x_new, h, mean, rstd = got
    gen = torch.Generator(device="cuda").manual_seed(3)
    gx = torch.randn(x.shape, generator=gen, device="cuda").bfloat16() if with_gx else None
    gh = torch.randn(h.shape, generator=gen, device="cuda").bfloat16()
    got = rn.residual_norm_backward(gx, gh, x_new, mean, rstd, w)
    want = rn._backward_reference(gx, gh, x_new, mean, rstd, w)
    assert got[0].dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in got[1:])
    for g, e in zip(got, want):
        assert ((g.float() - e.float()).norm() / e.float().norm()).item() < 5e-3


@cuda
def test_compiled_cuda_model_with_fused_residual_matches_plain_model():
    """The whole path on the GPU: compiled, cuBLASLt ops, the Triton kernels of residual_norm
    inside the compiled forward and backward; against the uncompiled plain model."""
    from pipeline.gpt import cublaslt
    if not cublaslt.available():
        pytest.skip("cuBLASLt path unavailable: %s" % cublaslt.unavailable_reason(torch.cuda.current_device()))
    torch.manual_seed(0)
    base = GPT(GPTConfig(block_size=64, n_layer=2, n_head=4, n_embd=128)).cuda()
    plain = FastGPT(copy.deepcopy(base), FastPlan(fused_loss=True, loss_kernel="triton"))
    fast = FastGPT(copy.deepcopy(base), FastPlan(matmul="cublaslt", fused_loss=True, loss_kernel="triton",
                                                 fused_residual=True, ones_column=True))
    x = torch.randint(0, 50257, (4, 64), device="cuda")
    y = torch.randint(0, 50257, (4, 64), device="cuda")
    losses, grads = [], []
    for model, run in ((plain, plain), (fast, compile_model(fast))):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = run(x, y, return_logits=False)
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.float() for n, p in model.named_parameters()})
    assert abs(losses[0] - losses[1]) < 2e-2
    for name, g in grads[0].items():
        assert ((grads[1][name] - g).norm() / g.norm()).item() < 3e-2, name


def test_every_gpt_op_gets_an_explicit_inductor_fallback(caplog):
    """Implicit fallbacks log their arguments; torch 2.11 formatted that text eagerly, and through
    the fused residual chain it doubled with every layer (a d12 compile never finished)."""
    import logging

    from torch._inductor.lowering import lowerings

    from pipeline.gpt import cublaslt  # noqa: F401  (defines its ops)
    from pipeline.gpt.fast.model import register_inductor_fallbacks
    register_inductor_fallbacks()
    packets = [getattr(torch.ops.gpt, name) for name in dir(torch.ops.gpt)]
    overloads = [getattr(p, o) for p in packets if isinstance(p, torch._ops.OpOverloadPacket)
                 for o in p.overloads()]
    assert {"gpt.residual_norm_forward.default", "gpt.residual_norm_backward.default", "gpt.mm.default",
            "gpt.linear.default", "gpt.cross_entropy_grad_.default"} <= {str(o) for o in overloads}
    assert all(o in lowerings for o in overloads)
    # and compiling the fused-residual model (all these ops) lowers none of them implicitly
    torch.manual_seed(0)
    model = FastGPT(GPT(GPTConfig(block_size=16, vocab_size=100, padded_vocab_size=128, n_layer=3, n_head=2,
                                  n_embd=32)), FUSED)
    torch._dynamo.reset()
    x, y = torch.randint(0, 100, (2, 16)), torch.randint(0, 100, (2, 16))
    with caplog.at_level(logging.INFO, logger="torch._inductor.graph"), \
            torch._inductor.config.patch(fx_graph_cache=False), torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = compile_model(model)(x, y, return_logits=False)
    loss.backward()
    assert torch.isfinite(loss)
    implicit = [r.getMessage() for r in caplog.records if "implicit fallback" in r.getMessage()]
    assert not [m for m in implicit if "gpt." in m], implicit[:1]
