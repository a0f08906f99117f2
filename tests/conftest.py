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

    session = get_spark("tests", master="local[2]",
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
