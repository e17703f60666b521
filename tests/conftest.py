import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# Under pytest-xdist each worker and the scripts it starts get an equal share of the cores: two
# workers each running torch on every core would fight over them (OpenMP threads spin while they wait).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(max(1, cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic dataset, made once per test session: <root>/SYN/{images,masks}."""
    from synthetic import make_synthetic_dataset
    root = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(root, "SYN", count=12, size=(96, 128), seed=1)
    return root
