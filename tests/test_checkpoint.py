"""llm.c model files: exact round trips, llm.c's header/size for GPT-2 124M, clear errors."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pipeline.gpt import checkpoint as ck  # noqa: E402
from pipeline.gpt.model import GPT, GPTConfig  # noqa: E402

TINY = GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = GPT(TINY)
    with torch.no_grad():  # non-trivial values everywhere, layernorms and biases included
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def reference_bytes(model, dtype):
    """An independent writer: llm.c's tensor order spelled out by hand."""
    sd = model.state_dict()
    L = model.config.n_layer
    order = ["transformer.wte.weight", "transformer.wpe.weight"]
    for suffix in ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                   "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                   "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"]:
        order += ["transformer.h.%d.%s" % (i, suffix) for i in range(L)]
    order += ["transformer.ln_f.weight", "transformer.ln_f.bias"]
    flat = torch.cat([sd[k].flatten() for k in order])
    if dtype == "fp32":
        body = flat.numpy().astype("<f4").tobytes()
    else:
        body = flat.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2").tobytes()
    c = model.config
    header = np.zeros(256, dtype="<i4")
    header[:8] = [20240326, 3 if dtype == "fp32" else 5, c.block_size, 50257, c.n_layer, c.n_head,
                  c.n_embd, 50304]
    return header.tobytes() + body


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_file_bytes_match_llmc_layout(tmp_path, dtype):
    model = tiny_model()
    path = str(tmp_path / "m.bin")
    ck.save_model(model, path, dtype=dtype)
    assert open(path, "rb").read() == reference_bytes(model, dtype)


def test_fp32_write_read_is_bit_exact(tmp_path):
    model = tiny_model()
    path = str(tmp_path / "m.bin")
    ck.save_model(model, path)
    loaded = ck.load_model(path)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    # and the loaded model computes the same function
    x = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])
    ck.save_model(loaded, str(tmp_path / "again.bin"))
    assert open(path, "rb").read() == open(str(tmp_path / "again.bin"), "rb").read()


def test_bf16_round_trip_is_stable(tmp_path):
    model = tiny_model()
    p1, p2 = str(tmp_path / "a.bin"), str(tmp_path / "b.bin")
    ck.save_model(model, p1, dtype="bf16")
    loaded = ck.load_model(p1)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v.to(torch.bfloat16).float()), k
    ck.save_model(loaded, p2, dtype="bf16")
    assert open(p1, "rb").read() == open(p2, "rb").read()


def test_d12_header_and_size_match_llmc():
    config = GPTConfig.from_descriptor("d12")
    assert config.num_params() == 124475904  # llm.c prints "num_parameters: 124475904"
    with torch.device("meta"):
        model = GPT(config)
    # every stored tensor counted once (the head is tied, not stored)
    stored = sum(p.numel() for p in dict(model.named_parameters()).values())
    assert stored == 124475904
    header = ck.model_header(config, "fp32")
    assert list(header[:8]) == [20240326, 3, 1024, 50257, 12, 12, 768, 50304]
    assert not header[8:].any()
    assert list(ck.model_header(config, "bf16")[:2]) == [20240326, 5]
    assert ck.HEADER_BYTES + 4 * config.num_params() == 497904640  # gpt2_124M.bin
    assert ck.HEADER_BYTES + 2 * config.num_params() == 248952832  # gpt2_124M_bf16.bin


def test_truncated_and_foreign_files_are_rejected(tmp_path):
    model = tiny_model()
    path = str(tmp_path / "m.bin")
    ck.save_model(model, path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-4])
    with pytest.raises(ck.CheckpointError, match="truncated"):
        ck.load_model(path)
    bad = np.frombuffer(data, dtype=np.uint8).copy()
    bad[:4] = np.frombuffer(np.array([20240520], dtype="<i4").tobytes(), dtype=np.uint8)
    open(path, "wb").write(bad.tobytes())
    with pytest.raises(ck.CheckpointError, match="not an llm.c model file"):
        ck.load_model(path)


def test_shape_mismatch_message():
    with pytest.raises(ck.CheckpointError, match="layers.*=6 but the checkpoint has 2"):
        ck.check_shape(TINY, "m.bin", n_layer=6)
    ck.check_shape(TINY, "m.bin", n_layer=2, n_head=2, n_embd=32)  # matching flags are fine


def test_state_round_trip_restores_optimizer(tmp_path):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    x = torch.randint(0, 50257, (2, 16))
    for _ in range(2):
        opt.zero_grad()
        model(x, x)[1].backward()
        opt.step()
    path = str(tmp_path / "state_00000002_00000.bin")
    ck.save_state(path, model, opt, step=2, extra={"loader": {"shard_pos": 1, "window_pos": 7}})

    fresh = tiny_model(seed=1)
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3, weight_decay=0.1)
    extra = ck.load_state(path, fresh, opt2)
    assert extra["step"] == 2 and extra["loader"]["window_pos"] == 7
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    # one more identical step on both gives identical weights
    for m, o in ((model, opt), (fresh, opt2)):
        o.zero_grad()
        m(x, x)[1].backward()
        o.step()
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_padded_vocab_rows_start_at_zero():
    # the tied head must not re-draw the embedding's padded rows (llm.c writes them as zeros)
    from pipeline.gpt.model import GPT, GPTConfig

    cfg = GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16)
    w = GPT(cfg).transformer.wte.weight
    assert w[cfg.vocab_size:].abs().sum().item() == 0.0
    assert 0.015 < w[:cfg.vocab_size].std().item() < 0.025
