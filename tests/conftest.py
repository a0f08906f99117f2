"""Shared fixtures: one real local-mode SparkSession for the whole test run.

No TIKTOKEN_CACHE_DIR: the GPT-2 BPE ranks ship with the package, and the tests use that copy."""
import os
import sys

import pytest

# Local-mode Python workers must be this interpreter (it has our packages).
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def spark():
    from pipeline.spark import get_spark

    session = get_spark("tests", master="local[2]", progress=False,  # no progress bar in test output
                        extra_conf={"spark.sql.shuffle.partitions": "4",
                                    "spark.default.parallelism": "4"})
    yield session
    session.stop()


@pytest.fixture
def torch_one_thread():
    """Tiny CPU models: one torch thread is faster on the 2-core CI box (shared with Spark) and
    deterministic. GPU test modules opt in with `pytestmark = pytest.mark.usefixtures(...)`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip cleanly where there is no CUDA device (`scripts/test-gpu.sh` runs
    them all: `python -m pytest -q -m gpu tests/`)."""
    if any(item.get_closest_marker("gpu") for item in items) and not _cuda_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def torch_backend_settings():
    """Process-wide PyTorch settings a test may change (the trainer's `Run` sets TF32 from -f and
    the SDPA kernels from --sdpa) come back after it, so that no later test inherits them."""
    if "torch" not in sys.modules:
        yield
        return
    import torch
    cuda = torch.backends.cuda
    saved = (cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, cuda.flash_sdp_enabled(),
             cuda.cudnn_sdp_enabled(), cuda.mem_efficient_sdp_enabled(), cuda.math_sdp_enabled())
    yield
    cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
    for kind, on in zip(("flash", "cudnn", "mem_efficient", "math"), saved[2:]):
        getattr(cuda, "enable_%s_sdp" % kind)(on)


@pytest.fixture(scope="module", autouse=True)
def fresh_torch_compile(request):
    """After a module with GPU tests, drop torch.compile's caches and guards (`torch._dynamo.reset`),
    so that one module's compiled graphs and recompile counts never reach the next module."""
    yield
    if any(item.get_closest_marker("gpu") for item in request.session.items
           if item.module is request.module) and "torch" in sys.modules:
        import torch
        if hasattr(torch, "_dynamo"):
            torch._dynamo.reset()


FAKE_AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def fake_aws_env(monkeypatch):
    """Dummy credentials for moto, and no real endpoint or profile that could reach AWS."""
    for k, v in FAKE_AWS_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def moto_s3_server(monkeypatch):
    """A moto server on 127.0.0.1 with an empty S3, reached through AWS_ENDPOINT_URL (as boto3,
    pipeline.storage and subprocesses that inherit the environment do); yields the endpoint URL."""
    import urllib.request

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = "http://%s:%d" % server.get_host_and_port()
        # moto keeps its state per process, not per server: start from an empty S3.
        urllib.request.urlopen(urllib.request.Request(endpoint + "/moto-api/reset", method="POST"))
        for k, v in dict(FAKE_AWS_ENV, AWS_ENDPOINT_URL=endpoint).items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        yield endpoint
    finally:
        server.stop()
