import os
from pathlib import Path

import pytest

# Two cores on CI: one intra-op thread per test process keeps spawned workers from fighting.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "SPEC.md").exists():
        pytest.skip("../shared (SPEC.md and reference lists) is not beside this checkout")
    return SHARED
