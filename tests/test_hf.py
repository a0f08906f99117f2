"""llm.c/our GPT <-> HuggingFace GPT2LMHeadModel weight conversion, on tiny random models (CPU)."""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pipeline.gpt.engine import Engine  # noqa: E402
from pipeline.gpt.hf import from_hf, to_hf  # noqa: E402
from pipeline.gpt.model import GPT, GPTConfig  # noqa: E402

TINY = GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def random_model(seed=0):
    torch.manual_seed(seed)
    model = GPT(TINY).eval()
    with torch.no_grad():  # GPT-2 init leaves biases and LayerNorms trivial; make every tensor count
        for name, p in model.named_parameters():
            if "wte" not in name:
                p.add_(torch.randn_like(p) * 0.05)
    return model


def test_same_logits_as_hf():
    model = random_model()
    hf = to_hf(model)
    assert hf.transformer.h[0].attn.c_attn.weight.shape == (32, 96)  # Conv1D: (in, out)
    assert hf.lm_head.weight.shape[0] == 50257
    idx = torch.randint(0, 50257, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    assert ours.shape == theirs.shape == (3, 40, 50257)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_round_trip_restores_every_weight():
    model = random_model()
    back = from_hf(to_hf(model))
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        if name in ("transformer.wte.weight", "lm_head.weight"):
            # HF has no padding rows: only the 50257 real ones survive, the rest come back as zeros
            assert torch.equal(a[name][:50257], b[name][:50257]), name
        else:
            assert torch.equal(a[name], b[name]), name
    assert back.lm_head.weight.data_ptr() == back.transformer.wte.weight.data_ptr()  # still tied
    assert back.transformer.wte.weight[50257:].abs().sum() == 0


def test_transpose_is_not_optional():
    # A converter that forgot the Conv1D transpose would still load square c_proj weights; make sure
    # the logits check above would notice.
    model = random_model()
    hf = to_hf(model)
    with torch.no_grad():
        w = hf.transformer.h[0].attn.c_proj.weight
        w.copy_(w.t().clone())
        idx = torch.randint(0, 50257, (1, 16))
        assert not torch.allclose(model(idx)[0], hf(idx).logits, atol=1e-4)


def test_hf_generate_agrees_with_engine():
    model = random_model()
    hf = to_hf(model)
    prompt = [31373, 11, 616]
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 3, dtype=torch.long),
                          max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=50256)
    theirs = out[0, len(prompt):].tolist()
    ours = Engine(model).generate([prompt], 20, temperature=0, stop_token=None)[0]
    assert ours == theirs
