import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic dataset, made once per test session: <root>/SYN/{images,masks}."""
    from synthetic import make_synthetic_dataset
    root = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(root, "SYN", count=12, size=(96, 128), seed=1)
    return root
