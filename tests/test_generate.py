"""`pipeline generate` end to end on a tiny llm.c checkpoint (CPU): real BPE, real model files."""
import json
import os

import pytest

torch = pytest.importorskip("torch")

from pipeline.bpe import get_encoding  # noqa: E402
from pipeline.gpt import generate  # noqa: E402
from pipeline.gpt.engine import EOT_TOKEN, reference_generate  # noqa: E402
from pipeline.gpt.model import GPT, GPTConfig  # noqa: E402

TINY = GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def enc():
    return get_encoding()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny trained-shape checkpoint written by the trainer's own save_model (llm.c format)."""
    from pipeline.gpt.checkpoint import load_model, save_model

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("ckpt") / "model_00000010.bin")
    save_model(GPT(TINY), path, "fp32")
    return path, load_model(path).eval()


def run_cli(capsys, *argv):
    assert generate.main(["--device", "cpu"] + list(argv)) == 0
    return capsys.readouterr()


def test_hello_is_one_token(enc):
    from pipeline.gpt.gen_benchmark import HELLO

    assert enc.encode("hello") == HELLO


def test_single_prompt_greedy_matches_reference(capsys, enc, ckpt):
    path, model = ckpt
    out = run_cli(capsys, "-e", path, "-p", "The Github project llm.c is a", "-n", "12", "--greedy",
                  "--ignore-eot")
    prompt = [EOT_TOKEN] + enc.encode("The Github project llm.c is a")
    want = reference_generate(model, prompt, 12, stop_token=None)
    assert out.out == "The Github project llm.c is a" + enc.decode(want) + "\n"
    assert "tokens/s" in out.err


def test_several_prompts_are_batched_and_separated(capsys, enc, ckpt, tmp_path):
    path, model = ckpt
    pfile = tmp_path / "prompts.txt"
    pfile.write_text("Once upon a time\n\nThe capital of France is\n", encoding="utf-8")
    out = run_cli(capsys, "-e", path, "-p", "Hi", "--prompts-file", str(pfile), "-n", "8", "--greedy",
                  "--ignore-eot", "--batch-size", "2").out
    texts = ["Hi", "Once upon a time", "The capital of France is"]  # blank lines are skipped
    blocks = out.split("===== [")[1:]
    assert len(blocks) == 3
    for k, (text, block) in enumerate(zip(texts, blocks)):
        header, body = block.split("\n", 1)
        assert header.startswith("%d/3]" % (k + 1))
        want = reference_generate(model, [EOT_TOKEN] + enc.encode(text), 8, stop_token=None)
        assert body == text + enc.decode(want) + "\n"


def test_seed_reproducible_through_cli(capsys, ckpt):
    path, _ = ckpt
    args = ["-e", path, "-p", "a", "-p", "bb", "-n", "16", "--temperature", "1.0", "--top-k", "100",
            "--top-p", "0.9", "--ignore-eot"]
    a = run_cli(capsys, *args, "--seed", "7").out
    b = run_cli(capsys, *args, "--seed", "7").out
    c = run_cli(capsys, *args, "--seed", "8").out
    assert a == b != c


def test_unconditional_and_too_long_prompt(capsys, ckpt):
    path, _ = ckpt
    out = run_cli(capsys, "-e", path, "-n", "5", "--seed", "1")  # no prompt: starts at <|endoftext|>
    assert "tokens in" in out.err
    out = run_cli(capsys, "-e", path, "-p", "word " * 100, "-n", "20", "--greedy")
    assert "keeping its last 45" in out.err  # 64 positions - 20 new + 1


def test_streamer_holds_back_split_utf8(enc):
    import io

    text = "naïve 世界 🙂 ok"
    toks = enc.encode(text)
    # Some token must end inside a multi-byte character, or this test proves nothing.
    assert any(not _is_utf8(enc.decode_single_token_bytes(t)) for t in toks)
    buf = io.StringIO()
    s = generate.Streamer(enc, buf)
    for t in toks:
        s(0, t)
    s.close()
    assert buf.getvalue() == text


def _is_utf8(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_benchmark_writes_table_json_csv_plot(capsys, ckpt, tmp_path):
    pytest.importorskip("transformers")
    path, _ = ckpt
    out_dir = str(tmp_path / "bench")
    run_cli(capsys, "--benchmark", "-e", path, "--bench-tokens", "4,8", "--bench-batch", "3",
            "--bench-prompt-len", "20", "--bench-out", out_dir)
    files = sorted(os.listdir(out_dir))
    stem = [f for f in files if f.endswith(".json")][0][:-5]
    assert stem + ".csv" in files
    pytest.importorskip("matplotlib")
    assert stem + ".png" in files
    doc = json.load(open(os.path.join(out_dir, stem + ".json")))
    impls = {(r["impl"], r["new_tokens"], r["batch"]) for r in doc["rows"]}
    for impl in ("hf_generate", "no_cache_recompute", "engine_eager"):
        assert (impl, 4, 1) in impls and (impl, 8, 1) in impls
    assert ("engine_eager", 32, 3) in impls and ("hf_generate", 32, 3) in impls  # batched, 64 // 2 tokens
    assert doc["summary"]["engine_eager_fp32_ttft_s"] > 0
    check = doc["summary"]["engine_eager_fp32_logits_check"]
    assert check["rel_err"] < 1e-4 and check["argmax_agreement"] == 1.0
    prefix = doc["summary"]["greedy_common_prefix_vs_no_cache_fp32"]
    assert prefix["hf_fp32"] == 8 and prefix["engine_eager_fp32"] == 8


def test_bf16_checkpoint_loads_and_generates(capsys, enc, tmp_path):
    # llm.c's bf16 model files (version 5) are what train_gpt2cu writes by default
    from pipeline.gpt.checkpoint import load_model, save_model

    torch.manual_seed(3)
    path = str(tmp_path / "model_bf16.bin")
    save_model(GPT(TINY), path, "bf16")
    model = load_model(path).eval()
    out = run_cli(capsys, "-e", path, "-p", "Hello", "-n", "6", "--greedy", "--ignore-eot", "--dtype", "fp32")
    want = reference_generate(model, [EOT_TOKEN] + enc.encode("Hello"), 6, stop_token=None)
    assert out.out == "Hello" + enc.decode(want) + "\n"
