import os
import sys
from pathlib import Path

import pytest

# Two cores on CI: one intra-op thread per test process keeps spawned workers from fighting.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _install_toy_stage_plugin() -> Path:
    """tests/stages/toy_stage.py as an installed plugin of the whole suite: a distribution whose entry point in
    the group ``simclrv2.stages`` names its ``Stage``, on the path of this process and of every subprocess
    (``simclrv2 ...``, torchrun, the benchmark scripts). Every test that follows the registry meets it."""
    import atexit
    import shutil
    import tempfile

    site = Path(tempfile.mkdtemp(prefix="simclrv2_toy_plugin_"))
    atexit.register(shutil.rmtree, site, True)
    info = site / "simclrv2_toy_stage-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: simclrv2-toy-stage\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[simclrv2.stages]\ntoy = toy_stage:TOY\n")
    paths = [str(site), str(Path(__file__).resolve().parent / "stages")]
    sys.path[:0] = paths
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return site


TOY_PLUGIN = _install_toy_stage_plugin()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "SPEC.md").exists():
        pytest.skip("../shared (SPEC.md and reference lists) is not beside this checkout")
    return SHARED


# A shortened demo pipeline, run once per test session (~4 min on 2 cores): the 2-labels-per-class
# column of configs/demo.yaml with the demo's own epochs, without the 10% column and with a
# shorter linear evaluation. Tests of fine-tuning, distillation, the pipeline and the report
# read its stage folders; every stage writes its epoch checkpoints (they take seconds, not the minute
# between two epoch checkpoints of a default run), which the resume tests use.
SHORT_DEMO = ["linear_eval.epochs=5", 'labels=["2/class"]', "common.checkpoint_minutes=0"]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    from simclrv2.commands.run import load_pipeline_config, packaged_config, run_pipeline

    out = tmp_path_factory.mktemp("demo") / "run"
    cfg = load_pipeline_config(str(packaged_config("demo")), SHORT_DEMO, {"out": str(out)})
    run_pipeline(cfg)
    return out


@pytest.fixture(scope="session")
def pretrained(demo_run) -> Path:
    return demo_run / "pretrain" / "model.pt"


def save_random_model(path: Path, config: dict, image_size: int = 16, class_names=None, seed: int = 0) -> Path:
    """A checkpoint of ``config`` with random weights and BN statistics (every layer shows)."""
    from simclrv2.checkpoint import save_checkpoint
    from simclrv2.models import build_model
    from simclrv2.record import Record

    torch.manual_seed(seed)
    model = build_model(config)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                tensor.normal_(0, 0.1)
    stage = "pretrain" if config["kind"] == "contrastive" else "finetune"
    record = Record(stage, config, image_size, class_names)
    save_checkpoint({"record": record.to_data(), "model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory) -> Path:
    """A small contrastive checkpoint (random weights, CIFAR stem, 16 px): seconds to embed digits."""
    from simclrv2.models import contrastive_config

    config = contrastive_config("r18_0.125x_sk0", small_images=True)
    return save_random_model(tmp_path_factory.mktemp("tiny") / "pretrained.pt", config)
