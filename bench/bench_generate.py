"""Inference benchmark: HF transformers generate() vs our KV-cache/CUDA-graph engine, same weights.

    PYTHONPATH=. python bench/bench_generate.py                     # random d12 (timing only)
    PYTHONPATH=. python bench/bench_generate.py -e model_00004725.bin

Same as `pipeline generate --benchmark`; prints a table and writes
bench/results/inference_<device>.{json,csv,png}. Numbers: docs/benchmarks/inference.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.gpt.generate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--benchmark"] + sys.argv[1:]))
