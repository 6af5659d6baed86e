"""Pretraining end to end on scikit-learn digits (real images, no download)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from simclrv2.checkpoint import list_checkpoints, load_checkpoint
from simclrv2.config import from_mapping
from simclrv2.engine import loop, train
from simclrv2.stages.pretrain import PretrainConfig

TINY = dict(data="digits", model="r18_0.25x_sk0", image_size=16, batch_size=256, lr=0.5,
            warmup_epochs=0.5, workers=0, holdout=0.2, log_every=2, tensorboard=False)


def config(tmp_path, **kw):
    return from_mapping(PretrainConfig, {**TINY, "out": str(tmp_path / "run"), **kw})


def read_metrics(run):
    return [json.loads(line) for line in open(run / "metrics.jsonl")]


def test_pretraining_lowers_loss_and_knn_far_above_chance(tmp_path):
    # The demo's temperature and rate: at TINY's (0.1, 0.5 * sqrt(256)) the loss of 20 steps only
    # wanders around its start (by +-0.6, in fp32 and bf16 alike) while the kNN accuracy still climbs.
    result = train(config(tmp_path, epochs=8, temperature=0.5, lr=0.3))
    losses = [r["contrastive_loss"] for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert len(losses) == 24  # 5 steps an epoch, logged every 2 steps and at each epoch's end
    # 2 x log(2N - 1) = 12.47 for N = 256 at chance: the start; about 11.7 after 40 steps
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
    assert result["knn_top1"] > 0.6  # chance is 0.1
    payload = load_checkpoint(tmp_path / "run" / "model.pt")
    assert payload["record"]["stage"] == "pretrain" and payload["record"]["model_config"]["kind"] == "contrastive"
    assert (tmp_path / "run" / "result.json").exists() and (tmp_path / "run" / "config.yaml").exists()


def test_resume_ends_with_same_weights_and_memory_as_uninterrupted_run(tmp_path, monkeypatch):
    common = dict(epochs=2, memory=64, checkpoint_every=2, keep_checkpoints=10, knn_monitor=False)
    train(config(tmp_path / "a", **common))
    reference = load_checkpoint(tmp_path / "a" / "run" / "model.pt")

    stop_at = 3
    original = loop.Engine._stop_requested

    def stop_once(self):
        return self.progress.step == stop_at or original(self)

    monkeypatch.setattr(loop.Engine, "_stop_requested", stop_once)
    with pytest.raises(loop.Preempted):
        train(config(tmp_path / "b", **common))
    monkeypatch.setattr(loop.Engine, "_stop_requested", original)
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "run" / "checkpoints")] == ["ckpt-000000002.pt", "ckpt-000000003.pt"]
    train(config(tmp_path / "b", resume="auto", **common))
    resumed = load_checkpoint(tmp_path / "b" / "run" / "model.pt")
    for key, value in reference["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    # the momentum encoder and the queue, saved in the last step checkpoint of both runs
    last_a = load_checkpoint(list_checkpoints(tmp_path / "a" / "run" / "checkpoints")[-1])
    last_b = load_checkpoint(list_checkpoints(tmp_path / "b" / "run" / "checkpoints")[-1])
    assert last_a["progress"]["step"] == last_b["progress"]["step"] > stop_at
    for name in ("momentum_encoder", "queue"):
        for key, value in last_a["state"][name].items():
            assert torch.equal(value, last_b["state"][name][key]), (name, key)


def test_resume_is_exact_when_the_workers_crop_from_full_resolution(tmp_path, monkeypatch):
    """Images larger than the load size: the loader's workers draw and cut the crops (seeded by the
    position in the epoch). A run stopped after step 3 and resumed with a worker process ends with the
    weights of an uninterrupted run without one."""
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    common = dict(TINY, data=str(folder), model="r18_0.125x_sk0", batch_size=8, holdout=0.0, epochs=2,
                  knn_monitor=False, checkpoint_every=1, keep_checkpoints=10)

    def run(name, **kw):
        return from_mapping(PretrainConfig, {**common, "out": str(tmp_path / name / "run"), **kw})

    seen = []
    original_init = loop.Engine.__init__

    def record_loader(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        seen.append((self.loader.cache is None, self.loader.crops))

    monkeypatch.setattr(loop.Engine, "__init__", record_loader)
    train(run("a", workers=0))
    assert seen[-1][0] and seen[-1][1].views == 2 and seen[-1][1].size == 16  # the workers' crops
    reference = load_checkpoint(tmp_path / "a" / "run" / "model.pt")

    original = loop.Engine._stop_requested
    monkeypatch.setattr(loop.Engine, "_stop_requested", lambda self: self.progress.step == 3 or original(self))
    with pytest.raises(loop.Preempted):
        train(run("b", workers=0))
    monkeypatch.setattr(loop.Engine, "_stop_requested", original)
    train(run("b", workers=1, resume="auto"))
    resumed = load_checkpoint(tmp_path / "b" / "run" / "model.pt")
    for key, value in reference["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def test_refuses_to_overwrite_a_finished_run(tmp_path):
    cfg = config(tmp_path, epochs=1, knn_monitor=False)
    train(cfg)
    proc = subprocess.run([sys.executable, "-m", "simclrv2", "pretrain", "--data", "digits", "--out", cfg.out,
                           "--model", "r18_0.25x_sk0", "--image-size", "16", "--epochs", "1"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "holds a finished run" in proc.stderr and "--overwrite" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,message", [
    (["--epochs", "0"], "'epochs' must be >= 1"),
    (["--model", "r49_1x_sk0"], "unknown model 'r49_1x_sk0'"),
    (["--data", "/nonexistent/folder"], "/nonexistent/folder"),
    (["--set", "epoch=3", "--config", "CFG"], "unknown config key 'epoch': did you mean 'epochs'?"),
    (["--set", "temperature=hot", "--config", "CFG"], "'temperature' must be a number"),
])
def test_bad_settings_are_one_line_errors(tmp_path, args, message):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("epochs: 1\n")
    args = [str(cfg_file) if a == "CFG" else a for a in args]
    base = ["--data", "digits", "--out", str(tmp_path / "o")]
    proc = subprocess.run([sys.executable, "-m", "simclrv2", "pretrain", *base, *args], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_torchrun_two_processes(tmp_path):
    """2 gloo processes, compiled (Dynamo's ``eager`` backend: traced, no code generation) with global BN and the
    memory queue: the network has no graph break (global BN's all-reduce and the gathered negatives are
    functional collectives; Dynamo leaves only DDP's own forward prelude to eager), and a checkpoint the two wrote
    continues on one process. (benchmarks/gpu_smoke.sh does the same at 20 steps with aot_eager; its test is
    marked slow.)"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_LOGS": "graph_breaks"}
    out = tmp_path / "ddp"
    common = ["pretrain", "--data", "digits", "--model", "r18_0.25x_sk0", "--image-size", "16", "--epochs", "1",
              "--batch-size", "128", "--workers", "0", "--holdout", "0.2", "--memory", "256", "--no-tensorboard",
              "--compile", "--compile-backend", "eager"]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "simclrv2",
         *common, "--out", str(out), "--checkpoint-every", "5"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    breaks = re.findall(r"Graph break in user code at (\S+)", proc.stderr)
    assert [b for b in breaks if not re.search(r"(torch/nn/parallel/distributed\.py|/contextlib\.py):", b)] == []
    payload = load_checkpoint(out / "model.pt")
    assert payload["result"]["steps"] == 1437 // 128
    assert payload["result"]["knn_top1"] > 0.5  # each process embedded half of the kNN bank and queries
    # one process wrote the run folder; BN layers were global during training but are saved plainly
    assert not any("GlobalBatchNorm" in str(type(v)) for v in payload["model"].values())
    # a checkpoint of 2 processes continues on 1
    one = subprocess.run([sys.executable, "-m", "simclrv2", *common, "--out", str(tmp_path / "one"), "--resume",
                          str(out / "checkpoints" / "ckpt-000000010.pt")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "resumed from" in one.stderr and "at step 10 of 11" in one.stderr
    # fine-tuning on 145 labeled images: the batch cap rounds down to a multiple of 2 processes
    tuned = tmp_path / "ddp_finetune"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "simclrv2", "finetune", "--from", str(out / "model.pt"), "--data", "digits", "--out", str(tuned),
         "--labels", "10%", "--epochs", "1", "--workers", "0", "--holdout", "0.2", "--no-tensorboard"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tuned / "result.json").read_text())
    assert result["labeled_images"] == 145 and result["steps"] == 1
    assert load_checkpoint(tuned / "model.pt")["record"]["config"]["batch_size"] == 144


def test_knn_monitor_every_n_epochs_on_at_most_a_fixed_sample(tmp_path):
    from simclrv2.data import ImageSet
    from simclrv2.stages.pretrain import at_most

    train(config(tmp_path, epochs=5, batch_size=512, knn_every=2))
    epochs = [r["epoch"] for r in read_metrics(tmp_path / "run") if r["kind"] == "epoch"]
    assert epochs == [2, 4]  # and the final evaluation at epoch 5 ("eval")
    images = ImageSet(paths=None, arrays=np.zeros((50, 2, 2, 3), np.uint8), labels=np.arange(50) % 5,
                      class_names=list("abcde"), name="fifty")
    assert at_most(images, 50, seed=0) is images
    sample = at_most(images, 20, seed=0)
    assert len(sample) == 20 and list(sample.labels) == list(at_most(images, 20, seed=0).labels)
    assert sample.name == images.name and len(at_most(images, 20, seed=1).labels) == 20
