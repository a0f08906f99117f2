"""Shared fixtures: one real local-mode SparkSession for the whole test run, offline tiktoken."""
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_TIKTOKEN = os.path.join(os.path.dirname(REPO), "shared", "tiktoken")
if "TIKTOKEN_CACHE_DIR" not in os.environ and os.path.isdir(SHARED_TIKTOKEN):
    os.environ["TIKTOKEN_CACHE_DIR"] = SHARED_TIKTOKEN

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


FAKE_AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def fake_aws_env(monkeypatch):
    """Dummy credentials for moto, and no real endpoint or profile that could reach AWS."""
    for k, v in FAKE_AWS_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
