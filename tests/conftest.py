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


# A shortened demo pipeline, run once per test session (~4 min on 2 cores): the 2-labels-per-class
# column of configs/demo.yaml with the demo's own epochs, without the 10% column and with a
# shorter linear evaluation. Tests of fine-tuning, distillation, the pipeline and the report
# read its stage folders.
SHORT_DEMO = ["linear_eval.epochs=5", 'labels=["2/class"]']


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    from simclrv2.pipeline import load_pipeline_config, packaged_config, run_pipeline

    out = tmp_path_factory.mktemp("demo") / "run"
    cfg = load_pipeline_config(str(packaged_config("demo")), SHORT_DEMO, {"out": str(out)})
    run_pipeline(cfg)
    return out


@pytest.fixture(scope="session")
def pretrained(demo_run) -> Path:
    return demo_run / "pretrain" / "model.pt"
