"""No host sync inside a training step (issue 21): ops whose output size or value the host must read
(``nonzero``, ``.item()``, boolean-mask indexing, ...) stall a GPU's queue every time. A dispatch mode
records every such op of a full ``Engine.train_step`` of every registered stage (``simclrv2.stages``), on
the CPU, with the augmentation's accelerator path (on CPU its colour jitter reads subset sizes on
purpose: there that costs no device sync)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch

from simclrv2 import augment
from simclrv2.stages import stages

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import Case, make_batch, stage_engine  # noqa: E402
from sync_ops import SyncingOps  # noqa: E402

@pytest.mark.parametrize("stage", [s.name for s in stages()])
def test_a_training_step_has_no_host_sync(stage, monkeypatch):
    monkeypatch.setattr(augment, "color_jitter", functools.partial(augment.color_jitter, by_subset=False))
    case = Case.parse("r18_0.25x_sk1:40:8")  # SK blocks, blur (above 32 px), colour jitter, the linear monitor
    data, batch = make_batch(case, torch.device("cpu"), classes=4)
    engine = stage_engine(stage, case, data, torch.device("cpu"))
    engine.train_step(batch)  # first step: optimizer state created
    with SyncingOps() as flags:
        engine.train_step(batch)
    assert flags.found == []
    with SyncingOps() as flags:  # the probe sees what it should: the CPU colour jitter's subsets
        monkeypatch.undo()
        if stage == "pretrain":
            engine.train_step(batch)
            assert "aten::nonzero" in flags.found
        torch.ones(2).sum().item()
    assert "aten::_local_scalar_dense" in flags.found


def test_the_step_on_the_workers_cropped_views_has_no_host_sync(monkeypatch):
    """Images larger than the load size reach the step as the two views the workers cut: the device's
    flip, colour and blur of them stay free of host syncs too."""
    from _common import cropped_batch

    monkeypatch.setattr(augment, "color_jitter", functools.partial(augment.color_jitter, by_subset=False))
    case = Case.parse("r18_0.25x_sk1:40:8")
    data, batch = make_batch(case, torch.device("cpu"))
    engine = stage_engine("pretrain", case, data, torch.device("cpu"))
    batch = cropped_batch(batch, case.size, views=2)
    assert batch.images.shape == (8, 2, 3, 40, 40)
    engine.train_step(batch)
    with SyncingOps() as flags:
        engine.train_step(batch)
    assert flags.found == []
