"""The KV-cache engine against the no-cache reference, on tiny random models (CPU; CUDA when present)."""
import pytest

torch = pytest.importorskip("torch")

from pipeline.gpt.decode_kernels import split_count  # noqa: E402
from pipeline.gpt.engine import EOT_TOKEN, Engine, filter_logits, reference_generate, sample_next  # noqa: E402
from pipeline.gpt.model import GPT, GPTConfig  # noqa: E402

TINY = GPTConfig(block_size=64, vocab_size=50257, padded_vocab_size=50304, n_layer=2, n_head=2, n_embd=32)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny_model(seed=0, config=TINY):
    torch.manual_seed(seed)
    return GPT(config).eval()


def record_logits(engine):
    """Make `engine` keep a copy of every logits tensor it samples from (prefill, then each step)."""
    seen = []
    for name in ("_prefill", "_decode"):
        orig = getattr(engine, name)

        def spy(*args, _orig=orig):
            out = _orig(*args)
            seen.append(out.clone())
            return out

        setattr(engine, name, spy)
    return seen


def prompts_of(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50000, (n,), generator=g).tolist() for n in lengths]


def test_greedy_matches_full_recompute():
    model = tiny_model()
    engine = Engine(model, max_batch_size=1)
    for prompt in prompts_of([1, 7, 20]):
        got = engine.generate([prompt], 40, temperature=0, stop_token=None)[0]
        want = reference_generate(model, prompt, 40, stop_token=None)
        assert got == want


def test_cached_logits_match_full_forward():
    # Stronger than argmax equality: the logits the engine samples from are the model's logits.
    model = tiny_model()
    engine = Engine(model, max_batch_size=1)
    prompt = prompts_of([9])[0]
    seen = record_logits(engine)
    new = engine.generate([prompt], 12, temperature=0, stop_token=None)[0]
    full, _ = model(torch.tensor([prompt + new]))
    assert len(seen) == 12
    # seen[j] predicts the token after prompt + new[:j]
    for j, logits in enumerate(seen):
        torch.testing.assert_close(logits[0], full[0, len(prompt) + j - 1], rtol=1e-4, atol=1e-4)


def test_batch_of_different_lengths_equals_each_alone():
    model = tiny_model()
    engine = Engine(model, max_batch_size=4)
    prompts = prompts_of([3, 17, 1, 10])
    seen = record_logits(engine)
    batched = engine.generate(prompts, 30, temperature=0, stop_token=None)
    batched_logits = torch.stack(seen)  # (steps, B, V)
    alone = []
    for i, p in enumerate(prompts):
        seen.clear()
        alone.append(engine.generate([p], 30, temperature=0, stop_token=None)[0])
        torch.testing.assert_close(batched_logits[:, i], torch.stack(seen)[:, 0], rtol=1e-4, atol=1e-4)
    assert batched == alone
    assert batched == [reference_generate(model, p, 30, stop_token=None) for p in prompts]


def test_stop_token_ends_only_that_sequence():
    model = tiny_model()
    engine = Engine(model, max_batch_size=2)
    prompts = prompts_of([4, 6])
    free = engine.generate(prompts, 20, temperature=0, stop_token=None)
    stop = free[0][5]  # make sequence 0 stop at its 6th token
    got = engine.generate(prompts, 20, temperature=0, stop_token=stop)
    assert got[0] == free[0][:free[0].index(stop)]
    want1 = free[1][:free[1].index(stop)] if stop in free[1] else free[1]
    assert got[1] == want1


def test_streaming_callback_sees_every_token_in_order():
    model = tiny_model()
    engine = Engine(model, max_batch_size=2)
    seen = {0: [], 1: []}
    out = engine.generate(prompts_of([2, 5]), 15, temperature=0.8, seed=3, stop_token=None,
                          on_token=lambda i, t: seen[i].append(t))
    assert [seen[0], seen[1]] == out


def test_seed_reproducible_and_seed_matters():
    model = tiny_model()
    engine = Engine(model, max_batch_size=2)
    prompts = prompts_of([5, 3])
    kw = dict(temperature=1.0, top_k=50, top_p=0.95, stop_token=None)
    a = engine.generate(prompts, 25, seed=1234, **kw)
    b = engine.generate(prompts, 25, seed=1234, **kw)
    c = engine.generate(prompts, 25, seed=4321, **kw)
    assert a == b
    assert a != c


def test_too_long_is_refused():
    engine = Engine(tiny_model(), max_batch_size=2)
    with pytest.raises(ValueError, match="exceeds"):
        engine.generate([[1] * 60], 10)
    with pytest.raises(ValueError, match="prompts"):
        engine.generate([[1]] * 3, 4)
    assert len(engine.generate([[1] * 54], 11, stop_token=None)[0]) == 11  # 54 + 10 fed back = 64


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0], [0.0, -1.0, 2.0, 1.0, 3.0]])
    out = filter_logits(logits, top_k=2)
    assert torch.isfinite(out).tolist() == [[False, True, False, True, False],
                                            [False, False, True, False, True]]
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])


def test_top_p_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    keep = lambda p: torch.isfinite(filter_logits(logits, top_p=p)).tolist()[0]  # noqa: E731
    assert keep(0.5) == [True, False, False, False]   # the top token alone reaches 0.5
    assert keep(0.6) == [True, True, False, False]
    assert keep(0.8) == [True, True, False, False]    # 0.5 + 0.3 reaches 0.8
    assert keep(0.81) == [True, True, True, False]
    assert keep(0.01) == [True, False, False, False]  # never empty
    assert keep(1.0) == [True] * 4
    # order in the vocabulary does not matter
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.isfinite(filter_logits(logits[:, perm], top_p=0.6)).tolist()[0] == [False, True, False, True]


def test_sampling_respects_filters():
    logits = torch.zeros(4000, 10)
    logits[:, 3] = 2.0
    logits[:, 7] = 1.5
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, top_k=2, generator=g).tolist()) == {3, 7}
    assert set(sample_next(logits, 0.0).tolist()) == {3}
    # temperature sharpens: the top token's share grows as temperature falls
    hot = (sample_next(logits, 2.0, generator=g) == 3).float().mean()
    cold = (sample_next(logits, 0.1, generator=g) == 3).float().mean()
    assert cold > 0.9 > hot


def test_reference_stops_at_eot():
    model = tiny_model()
    with torch.no_grad():  # make EOT the only sensible next token
        model.transformer.wte.weight[EOT_TOKEN].mul_(0).add_(model.transformer.ln_f.bias)
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(torch.randn(32))
        model.transformer.wte.weight[EOT_TOKEN].copy_(model.transformer.ln_f.bias * 10)
    assert reference_generate(model, [5, 6], 10) == []
    assert Engine(model).generate([[5, 6]], 10, temperature=0) == [[]]


@pytest.mark.gpu
@pytest.mark.parametrize("graphs,fuse,dtype", [(False, False, "float32"), (True, False, "float32"),
                                               (False, True, "float32"), (True, True, "float32"),
                                               (True, True, "bfloat16")])
def test_cuda_engine_matches_reference(graphs, fuse, dtype):
    model = tiny_model().to("cuda", getattr(torch, dtype))
    engine = Engine(model, max_batch_size=4, cuda_graphs=graphs, fuse=fuse)
    # on a CUDA build both fused kernels must pass their self-checks, or the fast path silently vanished
    assert engine.plan.fused_residual == engine.fuse_embed == engine.fuse_attn == fuse
    # GELU in cuBLASLt's epilogue (the training matmuls) computes in bf16: bf16 models only
    assert (engine.plan.matmul == "cublaslt") == (fuse and dtype == "bfloat16")
    seen = record_logits(engine)
    prompts = prompts_of([3, 17, 1, 10])
    got = engine.generate(prompts, 40, temperature=0, stop_token=None)
    p = prompts[1]
    full, _ = model(torch.tensor([p + got[1]], device="cuda"))
    tol = 1e-4 if dtype == "float32" else 0.1
    for j, logits in enumerate(seen):
        torch.testing.assert_close(logits[1].float(), full[0, len(p) + j - 1].float(), rtol=tol, atol=tol)
    if dtype == "float32":
        assert got == [reference_generate(model, p, 40, stop_token=None) for p in prompts]


def test_split_count():
    # batch 1 of GPT-2 small on an H100 (132 SMs): one program per 64-slot block of a 1024-slot cache
    assert split_count(1, 12, 1024, 132) == 16
    assert split_count(1, 12, 300, 132) == 4     # never more splits than blocks (5), a power of two
    assert split_count(4, 12, 1024, 132) == 4    # ceil(264 / 48) = 6 -> 4
    assert split_count(64, 12, 1024, 132) == 1   # 768 programs already fill the GPU
    assert split_count(1, 12, 64, 132) == 1
    with pytest.raises(ValueError, match="power of two"):
        Engine(tiny_model(), attn_splits=3)


@pytest.mark.gpu
def test_cuda_split_attention_kernel_variants():
    from pipeline.gpt.decode_kernels import decode_attention_matches
    for min_blocks in (1, 2):
        assert decode_attention_matches(torch.device("cuda"), 32, (1, 2, 4, 8, 16), min_blocks)


@pytest.mark.gpu
@pytest.mark.parametrize("splits,reduce_in_kernel", [(None, True), (4, True), (8, False), (1, True)])
def test_cuda_long_context_split_attention_matches_reference(splits, reduce_in_kernel):
    # Long enough that the cache spans many 64-slot blocks, so several splits hold real work.
    config = GPTConfig(block_size=512, vocab_size=50257, padded_vocab_size=50304, n_layer=2, n_head=2,
                       n_embd=64)
    model = tiny_model(config=config).to("cuda")
    engine = Engine(model, max_batch_size=3, attn_splits=splits)
    engine._attn_reduce_in_kernel = reduce_in_kernel
    assert engine.fuse_attn and engine._splits(3) == (splits or 8)  # auto: ceil(264 / 6) -> 8 blocks
    prompts = prompts_of([3, 150, 40])
    seen = record_logits(engine)
    got = engine.generate(prompts, 300, temperature=0, stop_token=None)
    p = prompts[1]
    full, _ = model(torch.tensor([p + got[1]], device="cuda"))
    for j, logits in enumerate(seen):
        torch.testing.assert_close(logits[1], full[0, len(p) + j - 1], rtol=1e-4, atol=1e-4)
    assert got == [reference_generate(model, p, 300, stop_token=None) for p in prompts]
    assert int(engine._attn_count.abs().sum()) == 0


@pytest.mark.gpu
@pytest.mark.parametrize("lengths", [[1], [4], [3, 3], [5]])
def test_cuda_short_prompt_prefill_by_graph_steps(lengths):
    # Prompts of <= 4 tokens without padding are prefilled by replaying the decode graph (cache
    # slot 0 included); [5] takes the one-forward prefill. Same logits either way.
    model = tiny_model().to("cuda")
    engine = Engine(model, max_batch_size=2)
    seen = record_logits(engine)
    prompts = prompts_of(lengths, seed=len(lengths) + lengths[0])
    got = engine.generate(prompts, 20, temperature=0, stop_token=None)
    for i, p in enumerate(prompts):
        full, _ = model(torch.tensor([p + got[i]], device="cuda"))
        for j, logits in enumerate(seen):
            torch.testing.assert_close(logits[i], full[0, len(p) + j - 1], rtol=1e-4, atol=1e-4)
        assert got[i] == reference_generate(model, p, 20, stop_token=None)
