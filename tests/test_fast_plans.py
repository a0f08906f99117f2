"""The fast path against the reference, plan by plan: how `resolve_plan` picks a plan (CPU), and,
on a GPU, one training step of each plan against the reference model's step on the same batch and
the same initial weights (loss, gradient norm, updated weights), plus the fast decode engine's
greedy tokens against the reference model's.

Plans compared on the GPU (`pipeline train` flags; d2 with 128 channels so every kernel's shape
constraints hold):
- "default": the trainer's defaults with the set-up forced on (a model this small would otherwise
  skip it): on an H100, cuDNN attention, cuBLASLt with the ones column, fused residual+layernorm,
  the Hopper loss kernel, the Triton AdamW with bf16 mirrors, torch.compile, CUDA graphs;
- "sm86": what an A10G-class GPU resolves to (no cuBLASLt, no cuDNN-frontend attention);
- "eager-torch": the fast path with PyTorch's ops only (no compile, no graphs).
The reference is `--reference`: pipeline/gpt/model.py under bf16 autocast with PyTorch's clip and
AdamW. Tolerances (bf16 training): loss within 2e-2; gradient norm within 5% relative; the clipped
gradient (AdamW's first moment after one step, 0.1 x gradient) within 5% relative L2 error over
all parameters; and the updated weights: AdamW's first step moves each weight by lr x sign(gradient),
so the two runs' updates must agree elementwise wherever the reference gradient is at least 5% of
its tensor's RMS (>= 99% of those elements; a smaller gradient's sign is within bf16 noise).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pipeline.gpt import train as tr  # noqa: E402
from pipeline.gpt.data import DataLoader  # noqa: E402
from pipeline.gpt.engine import Engine, reference_generate  # noqa: E402
from pipeline.gpt.fast.model import FastGPT  # noqa: E402
from pipeline.gpt.fast.plan import REFERENCE, FastPlan, resolve_plan  # noqa: E402
from pipeline.gpt.model import GPT, GPTConfig  # noqa: E402
from pipeline.shards.llmc import write_shard  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

MODEL = ["-e", "d2", "-1c", "128", "-1h", "2"]
FORCED = ["--compile", "1", "--cuda-graphs", "1", "--cublaslt", "1", "--cudnn-attention", "1"]
PLANS = {
    "default": FORCED,
    "sm86": ["--compile", "1", "--cuda-graphs", "1", "--cublaslt", "0", "--cudnn-attention", "0"],
    "eager-torch": ["--compile", "0", "--cuda-graphs", "0", "--cublaslt", "0", "--cudnn-attention", "0"],
}
LR = 1e-3


@pytest.fixture(scope="module")
def shard_glob(tmp_path_factory):
    d = tmp_path_factory.mktemp("plan_shards")
    write_shard(str(d / "p_train_000001.bin"), np.random.default_rng(5).integers(0, 50257, size=20000))
    return str(d / "p_train_*.bin")


def _resolve(argv, device="cpu", accum=1, ddp=False, tokens=10 ** 12, bf16=False):
    cfg = tr.parse_args(["-i", "unused"] + argv)
    return resolve_plan(cfg, torch.device(device), GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32),
                        accum, ddp, tokens, bf16)


# ----------------------------------------------------------------------------- resolution (CPU)

def test_cpu_runs_the_reference_model_and_reference_is_a_flag():
    assert _resolve([]) == (REFERENCE, [])
    assert _resolve(["--reference"])[0] == REFERENCE
    plan, _ = _resolve(["--attention", "eager"])  # only the fast path has the T x T matrix
    assert not plan.reference and plan.attention == "eager" and plan.matmul == "torch"
    assert not (plan.compile or plan.cuda_graphs or plan.fused_loss or plan.bf16_mirrors)
    assert plan.adamw == "torch"
    plan, _ = _resolve(["-r", "1"])
    assert plan.recompute and not plan.fused_residual


def test_plan_is_frozen_and_validated():
    plan = FastPlan()
    with pytest.raises(Exception):
        plan.matmul = "cublaslt"
    with pytest.raises(ValueError):
        FastPlan(attention="flash3")
    rows = FastPlan(matmul="cublaslt").describe()
    assert rows["plan matmul"] == "cublaslt" and rows["plan cuda_graphs"] == 0
    assert REFERENCE.describe() == {"plan": "reference (pipeline/gpt/model.py, PyTorch AdamW)"}


def test_cuda_graphs_cannot_be_forced_where_they_cannot_run():
    with pytest.raises(SystemExit):
        _resolve(["--cuda-graphs", "1", "--attention", "eager"])


def test_fast_torch_plan_step_matches_the_reference_step_on_cpu(shard_glob):
    """The comparison the GPU tests make, on CPU in fp32: the eager-attention fast path is the
    reference's function, so one step agrees to float32 rounding."""
    ref = _one_step(shard_glob, ["--reference", "--device", "cpu"])
    fast = _one_step(shard_glob, ["--attention", "eager", "--device", "cpu"])
    assert not fast["plan"].reference and ref["plan"].reference
    assert abs(fast["loss"] - ref["loss"]) < 1e-5
    assert abs(fast["norm"] - ref["norm"]) < 1e-4 * ref["norm"]
    assert _moment_error(fast, ref) < 1e-4
    assert _update_agreement(fast, ref) == 1.0


H100_PLAN = FastPlan(attention="cudnn", matmul="cublaslt", ones_column=True, fused_residual=True,
                     fused_loss=True, loss_kernel="cuda", adamw="triton", bf16_mirrors=True,
                     cuda_graphs=True, compile=True)


def test_h100_plan_forward_and_backward_match_the_reference_on_cpu_reference_ops():
    """The H100 default plan's forward and backward (cuDNN attention, cuBLASLt matmuls in the
    ones-column layout, fused residual + layernorm, fused loss), eagerly on CPU where every custom
    op runs its reference math, under bf16 autocast: the reference model's loss and gradients
    within bf16 rounding."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32))
    x, y = torch.randint(0, 50257, (2, 32)), torch.randint(0, 50257, (2, 32))
    grads = []
    for run in (model, FastGPT(model, H100_PLAN)):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = run(x, y, return_logits=False)
        loss.backward()
        grads.append((loss.item(), {n: p.grad.float().clone() for n, p in model.named_parameters()}))
    (ref_loss, ref), (fast_loss, fast) = grads
    assert abs(fast_loss - ref_loss) < 2e-2
    for name, g in ref.items():
        assert ((fast[name] - g).norm() / g.norm()).item() < 5e-2, name


def test_run_parameters_and_train_config_record_the_plan(shard_glob, tmp_path):
    out = str(tmp_path / "run")
    assert tr.main(["-i", shard_glob, "-x", "1", "-v", "0", "-s", "0", "-o", out, "--device", "cpu",
                    "--quiet", "-b", "2", "-t", "32", "--attention", "eager"] + MODEL) == 0
    text = open(tmp_path / "run" / "run_parameters.txt").read()
    for field in ("plan attention", "plan matmul", "plan loss_kernel", "plan adamw", "plan cuda_graphs",
                  "flag attention", "flag reference"):
        assert field in text, field
    import json
    saved = json.load(open(tmp_path / "run" / "train_config.json"))
    assert saved["attention"] == "eager" and saved["b"] == 2


# ----------------------------------------------------------------------------- one step, any device

def _one_step(shard_glob, flags, B=4, T=64):
    cfg = tr.parse_args(["-i", shard_glob, "-b", str(B), "-t", str(T), "--quiet", "--seed", "7"] + MODEL + flags)
    run = tr.Run(cfg)
    raw = tr.build_model(cfg, run, -1)
    before = {n: p.detach().clone() for n, p in raw.named_parameters()}
    plan, _, _, opt, step_fn = tr.build_trainer(cfg, run, raw, 1, 10 ** 12)
    batches = tr.batch_source(DataLoader(shard_glob, B, T), run)
    loss, norm = step_fn(batches, LR)
    return dict(plan=plan, loss=loss.item(), norm=norm.item(),
                moment={n: opt.state[p]["exp_avg"].float() for n, p in raw.named_parameters()},
                update={n: (p.detach() - before[n]).float() for n, p in raw.named_parameters()})


def _moment_error(a, b):
    """Relative L2 distance of the two runs' clipped gradients (AdamW's first moments)."""
    x = torch.cat([a["moment"][n].flatten() for n in sorted(a["moment"])])
    y = torch.cat([b["moment"][n].flatten() for n in sorted(b["moment"])])
    return float((x - y).norm() / y.norm())


def _update_agreement(fast, ref):
    """Fraction of elements whose update has the reference's sign, among those whose reference
    gradient is at least 5% of its tensor's RMS."""
    agree = total = 0
    for n, m in ref["moment"].items():
        big = m.abs() >= 0.05 * m.pow(2).mean().sqrt()
        same = torch.sign(fast["update"][n]) == torch.sign(ref["update"][n])
        agree += int((same & big).sum())
        total += int(big.sum())
    return agree / total


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(PLANS))
def test_plan_training_step_matches_the_reference_step(shard_glob, name):
    fast = _one_step(shard_glob, PLANS[name])
    ref = _one_step(shard_glob, ["--reference"])
    plan = fast["plan"]
    hopper = torch.cuda.get_device_capability()[0] >= 9
    if name == "default" and hopper:  # on an H100 every fast kernel self-checks and runs
        assert (plan.attention, plan.matmul, plan.loss_kernel, plan.adamw) == ("cudnn", "cublaslt", "cuda", "triton"), plan
        assert plan.ones_column and plan.fused_residual and plan.bf16_mirrors and plan.compile
    if name != "default":
        assert plan.matmul == "torch" and plan.attention == "sdpa"
    assert abs(fast["loss"] - ref["loss"]) < 2e-2, (fast["loss"], ref["loss"])
    assert abs(fast["norm"] - ref["norm"]) < 5e-2 * ref["norm"], (fast["norm"], ref["norm"])
    for n, u in fast["update"].items():  # every parameter moved, by at most lr per element
        assert 0 < u.abs().max().item() <= 1.01 * LR, n
    assert _moment_error(fast, ref) < 5e-2
    assert _update_agreement(fast, ref) >= 0.99


@pytest.mark.gpu
def test_default_plan_resolves_the_sm86_plan_without_hopper_features():
    """What an A10G gets: resolution from compute capability alone (the default flags, a d12
    shape), checked on whatever GPU runs this by asking as if the capability were 8.6."""
    import unittest.mock as mock
    cfg = tr.parse_args(["-i", "unused", "-b", "4", "-t", "1024"])
    with mock.patch.object(torch.cuda, "get_device_capability", return_value=(8, 6)):
        plan, _ = resolve_plan(cfg, torch.device("cuda"), GPTConfig(), 1, False, 10 ** 12, bf16=True)
    assert plan.attention == "sdpa" and plan.matmul == "torch" and plan.loss_kernel == "triton"
    assert not (plan.ones_column or plan.fused_residual or plan.bf16_mirrors)
    assert plan.compile and plan.cuda_graphs and plan.adamw == "triton"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fast_decode_greedy_tokens_match_the_reference(dtype):
    """The decode engine (KV cache, fused kernels, CUDA graphs) against the reference model's
    greedy decoding (full forward per token) in the same dtype. float32: the same tokens. bfloat16,
    where the two orders of rounding may swap near-tied logits: each token the engine picks is the
    reference's argmax at that prefix to within 0.1 (the engine tests' bf16 logits tolerance)."""
    torch.manual_seed(3)
    model = GPT(GPTConfig(block_size=256, n_layer=2, n_head=2, n_embd=128)).to("cuda", getattr(torch, dtype))
    with torch.no_grad():  # logits of a few units (the init's are ~0.2): fewer near-ties
        model.transformer.wte.weight.mul_(5)
    engine = Engine(model, max_batch_size=1)
    assert engine.fuse_attn and engine.plan.fused_residual and engine.cuda_graphs
    assert engine.plan.matmul == ("cublaslt" if dtype == "bfloat16" else "torch")
    prompt = [50256, 464, 3290, 318]
    got = engine.generate([prompt], 24, temperature=0, stop_token=None)[0]
    if dtype == "float32":
        assert got == reference_generate(model, prompt, 24, stop_token=None)
        return
    with torch.no_grad():
        full, _ = model(torch.tensor([prompt + got], device="cuda"))
    for j, token in enumerate(got):
        row = full[0, len(prompt) + j - 1].float()
        assert row[token] >= row.max() - 0.1, (j, float(row[token]), float(row.max()))


def test_trainer_sample_is_the_engine_sampling_loop():
    """The trainer's sanity sample goes through the engine's one sampling loop (seed 1337)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, n_layer=1, n_head=2, n_embd=32))
    run = tr.Run(tr.parse_args(["-i", "unused", "--device", "cpu"]))
    text = tr.sample(model, 8, run)
    assert model.training  # handed back to the trainer in training mode
    want = Engine(model, max_seq_len=8, cuda_graphs=False, fuse=False).generate(
        [[50256]], 7, temperature=1.0, seed=1337, stop_token=None)[0]
    from pipeline.bpe import get_encoding
    assert text == get_encoding().decode(want)


def test_the_reference_imports_no_kernels_and_nothing_reads_the_environment():
    """model.py is plain PyTorch (no kernel module, Triton or inductor import); no module of the
    GPU package or the training benchmark reads an environment variable other than torchrun's."""
    import ast
    import os
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tree = ast.parse(open(os.path.join(root, "pipeline", "gpt", "model.py")).read())
    imported = {(n.module if isinstance(n, ast.ImportFrom) else a.name)
                for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names}
    assert imported <= {"__future__", "math", "dataclasses", "torch", "torch.nn", "torch.nn.functional"}, imported
    gpu = os.path.join(root, "pipeline", "gpt")
    files = [os.path.join(d, f) for d, _, fs in os.walk(gpu) for f in fs if f.endswith(".py")]
    files.append(os.path.join(root, "bench", "bench_train.py"))
    for path in files:
        text = open(path).read()
        assert "GPT_" not in text, path
        for use in re.findall(r"os\.environ[^\n]*", text):
            assert re.search(r"\"(RANK|WORLD_SIZE|LOCAL_RANK)\"", use), (path, use)


def test_the_engine_runs_the_fast_forward_and_adds_only_cached_attention():
    """One fast forward in the module: the decode engine reaches no block sub-module and no GELU or
    matmul epilogue of its own; it calls `FastGPT.hidden` with its attention over the cache."""
    import ast
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tree = ast.parse(open(os.path.join(root, "pipeline", "gpt", "engine.py")).read())
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert "hidden" in used
    own_block_math = used & {"c_attn", "c_fc", "c_proj", "ln_2", "mlp", "attn", "gelu", "_addmm_activation",
                             "residual_norm_forward"}
    assert not own_block_math, own_block_math
    # and on any device the engine's logits are the fast forward's (here: the CPU plan)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    engine = Engine(model, max_seq_len=32, cuda_graphs=False)
    prompt = [50256, 11, 12, 13, 14]
    got = engine.generate([prompt], 6, temperature=0, stop_token=None)[0]
    with torch.no_grad():
        logits, _ = FastGPT(model, engine.plan)(torch.tensor([prompt + got]))
    assert got == logits[0, len(prompt) - 1:-1].argmax(-1).tolist()
