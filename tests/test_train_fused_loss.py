"""The fused classifier loss (`linear_cross_entropy`): same loss and gradients as autograd's
cross-entropy on the logits (the reference model's `GPT.loss`), padding untouched, traceable by
torch.compile, and only where gradients are wanted."""
import pytest

torch = pytest.importorskip("torch")

from pipeline.gpt.fast import loss as gm  # noqa: E402
from pipeline.gpt.fast.model import FastGPT  # noqa: E402
from pipeline.gpt.fast.plan import FastPlan  # noqa: E402
from pipeline.gpt.model import GPT, GPTConfig  # noqa: E402

SMALL = GPTConfig(block_size=32, vocab_size=100, padded_vocab_size=128, n_layer=1, n_head=2,
                  n_embd=32)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def small_model(seed=0):
    torch.manual_seed(seed)
    model = GPT(SMALL)
    with torch.no_grad():  # non-zero padded rows: the loss must still ignore them
        model.transformer.wte.weight[SMALL.vocab_size:].normal_()
    return model


def loss_and_grads(model, x, y, fused, scale=1.0):
    model.zero_grad(set_to_none=True)
    _, loss = FastGPT(model, FastPlan(fused_loss=fused))(x, y, return_logits=False)
    (loss * scale).backward()  # scale: the trainer's 1/accum on each micro-batch
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_fused_loss_matches_autograd_cross_entropy():
    model = small_model()
    x = torch.randint(0, 100, (3, 32))
    y = torch.randint(0, 100, (3, 32))
    ref_loss, ref = loss_and_grads(model, x, y, fused=False, scale=0.25)
    loss, got = loss_and_grads(model, x, y, fused=True, scale=0.25)
    assert abs(loss.item() - ref_loss.item()) < 1e-5
    for name, g in ref.items():
        assert torch.allclose(got[name], g, rtol=1e-4, atol=1e-7), name
    # the padded rows of the tied embedding/classifier get exactly no gradient
    assert got["transformer.wte.weight"][SMALL.vocab_size:].abs().max() == 0


def test_cross_entropy_grad_op_overwrites_logits_with_softmax_minus_onehot():
    torch.manual_seed(1)
    logits = 3 * torch.randn(5, 128)
    targets = torch.tensor([0, 7, 99, 42, 3])
    leaf = logits.clone().requires_grad_()
    masked = leaf.masked_fill(torch.arange(128) >= 100, float("-inf"))
    ref = torch.nn.functional.cross_entropy(masked, targets, reduction="none")
    ref.sum().backward()
    buf = logits.clone()
    losses = gm.cross_entropy_grad_(buf, targets, 100, "torch")
    assert torch.allclose(losses, ref.detach(), atol=1e-5)
    assert torch.allclose(buf, leaf.grad, atol=1e-6)
    assert (buf[:, 100:] == 0).all()


def test_unfused_plan_and_evaluation_keep_the_reference_loss():
    """Without the fused loss the fast path computes the reference model's loss and gradients
    op for op; with it, evaluation (no gradients) and logits still take the plain loss."""
    model = small_model()
    x = torch.randint(0, 100, (2, 32))
    model.zero_grad(set_to_none=True)
    _, ref_loss = model(x, x, return_logits=False)
    ref_loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    loss, got = loss_and_grads(model, x, x, fused=False)
    assert torch.equal(loss, ref_loss.detach())
    assert all(torch.equal(got[n], g) for n, g in ref.items())
    fast = FastGPT(model, FastPlan(fused_loss=True))
    with torch.no_grad():  # no gradient wanted: the plain loss, no gradient buffer written
        _, val = fast(x, x, return_logits=False)
        logits, with_logits = fast(x, x)
    ref_loss = ref_loss.detach()
    assert torch.equal(val, ref_loss) and torch.equal(with_logits, ref_loss)
    assert logits.shape == (2, 32, SMALL.vocab_size)


def test_fused_loss_under_bf16_autocast_keeps_fp32_gradients():
    model = small_model()
    x = torch.randint(0, 100, (2, 32))
    out = {}
    for fused in (False, True):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = FastGPT(model, FastPlan(fused_loss=fused))(x, x, return_logits=False)
        loss.backward()
        out[fused] = loss.item(), model.transformer.wte.weight.grad.clone()
    assert out[True][1].dtype == torch.float32
    assert abs(out[True][0] - out[False][0]) < 1e-2
    rel = (out[True][1] - out[False][1]).norm() / out[False][1].norm()
    assert rel < 2e-2  # bf16 rounding of the logits gradient, nothing more


def test_fused_loss_compiles_into_one_graph():
    model = small_model()
    x = torch.randint(0, 100, (2, 32))
    ref_loss, ref = loss_and_grads(model, x, x, fused=True)
    compiled = torch.compile(FastGPT(model, FastPlan(fused_loss=True)), fullgraph=True)  # a graph break would raise here
    model.zero_grad(set_to_none=True)
    _, loss = compiled(x, x, return_logits=False)
    loss.backward()
    assert abs(loss.item() - ref_loss.item()) < 1e-5
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, ref[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.gpu
def test_triton_kernel_matches_reference_math():
    torch.manual_seed(0)
    logits = (4 * torch.randn(64, 50304, device="cuda")).bfloat16()
    targets = torch.randint(0, 50257, (64,), device="cuda")
    got, ref = logits.clone(), logits.clone()
    losses = gm.cross_entropy_grad_(got, targets, 50257, "triton")
    ref_losses = gm._cross_entropy_grad_reference(ref, targets, 50257)
    assert torch.allclose(losses, ref_losses, atol=1e-4)
    assert (got.float() - ref.float()).abs().max() < 1e-3  # bf16 rounding of values in [-1, 1]
    assert (got[:, 50257:] == 0).all()
