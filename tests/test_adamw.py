"""The trainer's AdamW (`pipeline.gpt.adamw`): the clip folded into the update, PyTorch's state
layout, and bf16 weight mirrors. On CPU the PyTorch step runs (the mirrors' wiring is checked bit
for bit against the casts they replace); the CUDA tests (skipped without a GPU) check the Triton
kernels against PyTorch's fused AdamW, eagerly and replayed from a CUDA graph."""
import copy

import pytest

torch = pytest.importorskip("torch")

from pipeline.gpt import adamw  # noqa: E402
from pipeline.gpt import cublaslt  # noqa: E402
from pipeline.gpt import train as tr  # noqa: E402
from pipeline.gpt.fast.model import FastGPT  # noqa: E402
from pipeline.gpt.fast.plan import FastPlan  # noqa: E402
from pipeline.gpt.model import GPT, GPTConfig  # noqa: E402
from pipeline.gpt.step import clip_and_update  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def cuda(test):
    """A GPU test (skipped without CUDA, see conftest.py) that also needs Triton."""
    return pytest.mark.gpu(pytest.mark.skipif(adamw.triton is None, reason="needs Triton")(test))


def _groups(model, decay=0.1):
    return [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": decay},
            {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]


def _lt_plan(ones_column=False):
    """cuBLASLt matmuls and the fused loss (on CPU: the custom ops' reference math)."""
    return FastPlan(matmul="cublaslt", fused_loss=True, ones_column=ones_column)


def _tiny_lt_model(device="cpu", ones_column=False):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32)).to(device)
    return FastGPT(model, _lt_plan(ones_column))


def _train(model, opt, batches, device_type="cpu"):
    losses, norms = [], []
    for x, y in batches:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            _, loss = model(x, y, return_logits=False)
        loss.backward()
        norms.append(float(opt.clip_and_step(1.0)))
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, norms


def _batches(n, device="cpu"):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 50257, (2, 32), generator=gen).to(device),
             torch.randint(0, 50257, (2, 32), generator=gen).to(device)) for _ in range(n)]


@pytest.mark.parametrize("ones_column, bias_column, tied", [(False, False, False), (True, True, True),
                                                            (True, False, False), (False, True, True)])
def test_bf16_mirrors_train_bit_for_bit_like_the_casts_they_replace(ones_column, bias_column, tied):
    """One micro-batch per step: the mirror's bf16 gradient is exactly what the cast gradient
    held, and the mirror is exactly the cast the forward did, so parameters, losses and norms
    are identical to the last bit. With and without the ones column on c_attn/c_fc's input, and
    their mirrors plain or [W | b | 0...] (the trainer's pairing is (True, True) under compile),
    and the tied classifier mirrored or not (its gradient adds to the embedding's)."""
    plain = _tiny_lt_model(ones_column=ones_column)
    mirrored = copy.deepcopy(plain)
    opt_a = adamw.AdamW(_groups(plain), lr=1e-2, foreach=False)
    opt_b = adamw.AdamW(_groups(mirrored), lr=1e-2, foreach=False)
    blocks = mirrored.model.transformer.h
    with_bias = [m for b in blocks for m in (b.attn.c_attn, b.mlp.c_fc)] if bias_column else []
    layers = [m for b in blocks for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)
              if m not in with_bias]
    tied_modules = [mirrored.model.lm_head] if tied else []
    assert opt_b.attach_bf16_mirrors(layers, with_bias, tied_modules) == 8 + tied == opt_b.num_mirrors()
    layer = blocks[0].mlp.c_fc
    assert layer.weight_bf16.dtype == torch.bfloat16 and layer.weight_bf16.requires_grad
    assert layer.weight_bf16.shape == ((128, cublaslt.ones_width(32)) if bias_column else (128, 32))
    assert "transformer.h.0.mlp.c_fc.weight_bf16" not in mirrored.model.state_dict()  # never checkpointed
    batches = _batches(3)
    ra, rb = _train(plain, opt_a, batches), _train(mirrored, opt_b, batches)
    assert ra == rb
    for (name, a), b in zip(plain.named_parameters(), mirrored.parameters()):
        assert torch.equal(a, b), name
    for p, view in opt_b.mirrors.items():
        assert torch.equal(view.of(view.mirror, p.shape), p.detach().to(torch.bfloat16))
        assert p.grad is None and view.mirror.grad is None  # zero_grad clears both
    if bias_column:
        assert not layer.weight_bf16[:, 33:].any()  # the pad columns stay zero


def test_trainer_pairs_bias_column_mirrors_with_the_ones_column():
    model = _tiny_lt_model(ones_column=True)
    plain, with_bias = model.bf16_mirror_layers()
    assert [m for b in model.model.transformer.h for m in (b.attn.c_attn, b.mlp.c_fc)] == with_bias
    assert len(plain) == 4
    plain, with_bias = _tiny_lt_model(ones_column=False).bf16_mirror_layers()
    assert len(plain) == 8 and with_bias == []


def test_backward_fills_the_mirrors_not_the_float32_weights():
    model = _tiny_lt_model(ones_column=True)
    opt = adamw.AdamW(_groups(model), lr=1e-2, foreach=False)
    opt.attach_bf16_mirrors(*model.bf16_mirror_layers(), tied_modules=[model.model.lm_head])
    x, y = _batches(1)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(x, y, return_logits=False)
    loss.backward()
    leaves = opt.gradient_leaves()
    assert len(leaves) == len(list(model.parameters())) + 1 and all(t.grad is not None for t in leaves)
    # the tied weight: the embedding's float32 gradient and the classifier's bf16 one, added by the update
    assert model.model.transformer.wte.weight.grad.dtype == torch.float32
    assert model.model.lm_head.weight_bf16.grad.dtype == torch.bfloat16
    for module in sum(model.bf16_mirror_layers(), []):
        assert module.weight.grad is None and module.weight_bf16.grad.dtype == torch.bfloat16
        assert module.weight_bf16.grad.is_contiguous()  # handed over as computed, no copy
    c_attn = model.model.transformer.h[0].attn.c_attn
    assert c_attn.bias.grad is None and c_attn.weight_bf16.grad.shape == (96, 64)  # [dW | db | 0...]


def test_a_mirror_must_belong_to_the_optimizer():
    model, other = _tiny_lt_model(), _tiny_lt_model()
    opt = adamw.AdamW(_groups(model), lr=1e-2)
    with pytest.raises(ValueError):
        opt.attach_bf16_mirrors(*other.bf16_mirror_layers())


def test_state_dict_loads_into_pytorch_adamw_and_back():
    model = _tiny_lt_model()
    opt = adamw.AdamW(_groups(model), lr=1e-2, foreach=False)
    _train(model, opt, _batches(2))
    state = opt.state_dict()
    ref = torch.optim.AdamW(_groups(model), lr=1e-2)
    ref.load_state_dict(state)
    back = adamw.AdamW(_groups(model), lr=1e-2)
    back.load_state_dict(ref.state_dict())
    for p in model.parameters():
        assert float(back.state[p]["step"]) == 2.0
        assert torch.equal(back.state[p]["exp_avg"], opt.state[p]["exp_avg"])


def test_explicit_mirrors_that_cannot_apply_say_why():
    """The plan attaches mirrors only where they apply; an explicit --bf16-mirrors 1 that cannot
    apply says why (plan notes), and the default stays quiet."""
    from pipeline.gpt.fast.plan import resolve_plan
    cfg = tr.parse_args(["-i", "unused", "--device", "cpu", "--bf16-mirrors", "1", "--attention", "eager"])
    model_config = GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32)
    plan, notes = resolve_plan(cfg, torch.device("cpu"), model_config, 1, False, 10 ** 9, bf16=False)
    assert not plan.bf16_mirrors and plan.matmul == "torch"
    assert any("--bf16-mirrors 1 ignored: the cuBLASLt matmuls (--cublaslt) that read them are off" in n
               for n in notes), notes
    plan, notes = resolve_plan(cfg.replace(bf16_mirrors=None), torch.device("cpu"), model_config, 2,
                               False, 10 ** 9, bf16=False)
    assert not plan.bf16_mirrors and notes == []
    # where the plan has them: the trainer attaches the blocks' matmuls and (B x T a power of two)
    # the tied classifier
    fast = FastGPT(GPT(model_config), FastPlan(matmul="cublaslt", fused_loss=True, bf16_mirrors=True))
    opt = adamw.AdamW(_groups(fast), lr=1e-2)
    assert tr.attach_bf16_mirrors(cfg.replace(b=4, t=1024), fast, opt) == 9
    fast2 = FastGPT(GPT(model_config), FastPlan(matmul="cublaslt", fused_loss=True, bf16_mirrors=True))
    assert tr.attach_bf16_mirrors(cfg.replace(b=3, t=1000), fast2, adamw.AdamW(_groups(fast2), lr=1e-2)) == 8


# ----------------------------------------------------------------------------- CUDA

def _random_grads(params, scale, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(p.shape, generator=gen, device="cuda") * scale for p in params]


@cuda
@pytest.mark.parametrize("scale", [1.0, 1e-4])  # clipped / not clipped
def test_triton_step_matches_pytorch_fused_adamw(scale):
    model = GPT(GPTConfig(block_size=64, n_layer=2, n_head=4, n_embd=128)).cuda()
    twin = copy.deepcopy(model)
    ours = adamw.AdamW(_groups(model), lr=3e-3, fused=True)
    ref = torch.optim.AdamW(_groups(twin), lr=3e-3, fused=True)
    for step in range(4):
        grads = _random_grads(list(model.parameters()), scale, step)
        for p, q, g in zip(model.parameters(), twin.parameters(), grads):
            p.grad, q.grad = g.clone(), g.clone()
        assert ours._triton_ready()
        norm = ours.clip_and_step(1.0)
        want = clip_and_update(list(twin.parameters()), ref)
        assert abs(float(norm) - float(want)) <= 1e-5 * float(want)
    # Triton's fp32 sqrt and division are not PyTorch's correctly rounded ones: within 1e-4 of
    # the 4 updates' size (lr each), far below bf16 training's own noise
    for p, q in zip(model.parameters(), twin.parameters()):
        assert (p - q).abs().max().item() < 1e-4 * 4 * 3e-3
        assert float(ours.state[p]["step"]) == float(ref.state[q]["step"]) == 4.0
        assert torch.allclose(ours.state[p]["exp_avg_sq"], ref.state[q]["exp_avg_sq"], rtol=1e-4, atol=1e-12)


@cuda
def test_triton_step_writes_mirrors_and_reads_bf16_gradients():
    model = GPT(GPTConfig(block_size=64, n_layer=2, n_head=4, n_embd=128)).cuda()
    twin = copy.deepcopy(model)
    ours = adamw.AdamW(_groups(model), lr=3e-3, fused=True)
    fast = FastGPT(model, FastPlan(matmul="cublaslt", ones_column=True))
    ours.attach_bf16_mirrors(*fast.bf16_mirror_layers(), tied_modules=[model.lm_head])
    ref = torch.optim.AdamW(_groups(twin), lr=3e-3, fused=True)
    twins = dict(zip(model.parameters(), twin.parameters()))
    for step in range(3):
        gen = torch.Generator(device="cuda").manual_seed(step)
        for p in model.parameters():  # a bf16 gradient on each mirror (pad columns random too)
            view = ours.mirrors.get(p)
            leaf = view.mirror if view else p
            if leaf.grad is None:
                leaf.grad = (torch.randn(leaf.shape, generator=gen, device="cuda") * 0.3).to(leaf.dtype)
            # the twin gets each parameter's part, as its exact float32 value
            twins[p].grad = (view.of(leaf.grad, p.shape) if view else leaf.grad).float()
            if view is not None and view.adds:  # the tied embedding: its own gradient as well
                p.grad = torch.randn(p.shape, generator=gen, device="cuda") * 0.3
                twins[p].grad = p.grad + twins[p].grad
        norm = ours.clip_and_step(1.0)
        want = clip_and_update(list(twin.parameters()), ref)
        assert abs(float(norm) - float(want)) <= 1e-5 * float(want)
        ours.zero_grad()
    for p, q in twins.items():
        assert (p - q).abs().max().item() < 1e-4 * 3 * 3e-3
    for p, view in ours.mirrors.items():  # round to nearest even, as .to() does
        assert torch.equal(view.of(view.mirror, p.shape), p.detach().to(torch.bfloat16))
    assert any(view.strided for view in ours.mirrors.values()) and any(v.adds for v in ours.mirrors.values())


@cuda
def test_triton_step_replays_from_a_cuda_graph():
    """Captured once (tables built beforehand by prepare()), replayed with new gradients written
    into the same tensors and a new learning rate in the device tensor: the same as eager steps."""
    model = GPT(GPTConfig(block_size=64, n_layer=2, n_head=4, n_embd=128)).cuda()
    twin = copy.deepcopy(model)
    lr = torch.full((), 1e-3, device="cuda")
    graphed = adamw.AdamW(_groups(model), lr=lr, fused=True, capturable=True)
    eager = adamw.AdamW(_groups(twin), lr=1e-3, fused=True)
    params, twins = list(model.parameters()), list(twin.parameters())
    for p, q, g in zip(params, twins, _random_grads(params, 1.0, 0)):
        p.grad, q.grad = g.clone(), g.clone()
    graphed.clip_and_step(1.0)  # creates the state
    eager.clip_and_step(1.0)
    graphed.prepare()
    norm_out = torch.zeros((), device="cuda")
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.graph(graph, stream=stream):
        norm_out.copy_(graphed.clip_and_step(1.0))
    for step in range(1, 4):
        for p, q, g in zip(params, twins, _random_grads(params, 0.5, step)):
            p.grad.copy_(g)
            q.grad = g.clone()
        lr.fill_(1e-3 * (step + 1))
        for group in eager.param_groups:
            group["lr"] = 1e-3 * (step + 1)
        graph.replay()
        want = eager.clip_and_step(1.0)
        assert torch.allclose(norm_out, want, rtol=1e-6)
    for p, q in zip(params, twins):
        assert torch.allclose(p, q, rtol=0, atol=1e-7)


@cuda
def test_trainer_step_with_and_without_mirrors(tmp_path):
    """The trainer's graphed step on a CUDA GPU, mirrors on against off: the same losses."""
    import numpy as np
    from pipeline.gpt.data import DataLoader
    from pipeline.shards.llmc import write_shard
    write_shard(str(tmp_path / "m_000001.bin"), np.random.default_rng(2).integers(0, 50257, size=20000))
    shards = str(tmp_path / "m_*.bin")
    losses = {}
    for mirrors in (0, 1):
        args = tr.parse_args(["-i", shards, "-e", "d2", "-1c", "128", "-1h", "4", "-b", "4", "-t", "64",
                              "--compile", "0", "--cublaslt", "1", "--cuda-graphs", "1", "--quiet",
                              "--bf16-mirrors", str(mirrors)])
        run = tr.Run(args)
        raw = tr.build_model(args, run, -1)
        plan, _, model, opt, step = tr.build_trainer(args, run, raw, 1, 8 * 4 * 64)
        assert opt.num_mirrors() == (9 if mirrors and plan.matmul == "cublaslt" else 0)
        batches = tr.batch_source(DataLoader(shards, 4, 64), run)
        losses[mirrors] = [step(batches, 1e-3)[0].item() for _ in range(8)]
        assert step.active, step.failed
    assert max(abs(a - b) for a, b in zip(losses[0], losses[1])) < 1e-3, losses
