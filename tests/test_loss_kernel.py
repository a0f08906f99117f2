"""The Hopper loss kernel (pipeline/gpt/loss_kernel.py): which tensors it takes, that NVRTC
compiles it (where libnvrtc exists), and on a Hopper GPU its numbers against float32 math."""
import pytest

torch = pytest.importorskip("torch")

from pipeline.gpt import loss_kernel as lk  # noqa: E402
from pipeline.gpt.fast import loss as gm  # noqa: E402


def _problem(rows=4, width=64, vocab=50, device="cpu"):
    logits = torch.randn(rows, width, device=device).bfloat16()
    targets = torch.randint(0, vocab, (rows,), device=device)
    return logits, targets, torch.empty(rows, device=device)


def test_supported_layouts():
    logits, targets, losses = _problem()
    assert lk.supported(logits, targets, losses, 50)
    assert lk.supported(logits, targets, losses, 64)  # no padding columns
    assert not lk.supported(logits.float(), targets, losses, 50)
    assert not lk.supported(logits, targets.int(), losses, 50)
    assert not lk.supported(logits, targets, losses.double(), 50)
    assert not lk.supported(logits, targets, losses, 65)  # vocab wider than the row
    assert not lk.supported(logits, targets, losses, 0)
    assert not lk.supported(logits[:, :60], targets, losses, 50)  # strided rows
    odd = torch.zeros(4, 60).bfloat16()  # rows not a whole number of 16-byte vectors
    assert not lk.supported(odd, targets, losses, 50)
    assert not lk.supported(logits, targets[:3], losses, 50)
    assert not lk.supported(logits[0], targets, losses, 50)


def test_launch_declines_cpu_tensors():
    logits, targets, losses = _problem()
    before = logits.clone()
    assert not lk.launch(logits, targets, losses, 50)
    assert torch.equal(logits, before)  # nothing written
    assert not lk.available(torch.device("cpu"))


def _has_nvrtc():
    try:
        lk._nvrtc()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_nvrtc(), reason="no libnvrtc (PyTorch's CPU build ships none)")
def test_nvrtc_compiles_the_kernel_for_hopper():
    cubin = lk.compile_cubin(90)
    assert cubin[:4] == b"\x7fELF"
    assert b"cross_entropy_grad" in cubin


def _hopper():
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper-class GPU")
def test_kernel_matches_float32_math_and_backs_the_loss_op():
    torch.manual_seed(0)
    rows, width, vocab = 96, 50304, 50257
    logits = (4 * torch.randn(rows, width, device="cuda")).bfloat16()
    targets = torch.randint(0, vocab, (rows,), device="cuda")
    targets[:2] = torch.tensor([0, vocab - 1])
    want_grad, want_loss = lk._reference(logits, targets, vocab)
    got, losses = logits.clone(), torch.empty(rows, device="cuda")
    assert lk.launch(got, targets, losses, vocab), lk.unavailable_reason()
    torch.cuda.synchronize()
    assert (losses - want_loss).abs().max() < 1e-4
    # within one bf16 rounding of the float32 value (relative 2^-8), plus __expf's tiny error
    assert ((got.float() - want_grad).abs() <= want_grad.abs() * 2 ** -8 * 1.01 + 1e-7).all()
    assert (got[:, vocab:] == 0).all()
    # the model's loss op takes this kernel: same bytes as the direct launch
    via_op = logits.clone()
    op_losses = gm.cross_entropy_grad_(via_op, targets, vocab, "cuda")
    assert torch.equal(via_op, got) and torch.equal(op_losses, losses)


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper-class GPU")
def test_kernel_replays_inside_a_cuda_graph():
    logits, targets, losses = _problem(rows=32, width=50304, vocab=50257, device="cuda")
    src = logits.clone()
    assert lk.launch(logits, targets, losses, 50257)  # set up outside capture
    want = logits.clone()
    logits.copy_(src)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        lk.launch(logits, targets, losses, 50257)
    logits.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(logits, want)
