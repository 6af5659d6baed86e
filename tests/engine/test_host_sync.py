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
from torch.utils._python_dispatch import TorchDispatchMode

from simclrv2 import augment
from simclrv2.stages import stages

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _common import Case, make_batch, stage_engine  # noqa: E402

# ops that make the host wait for the device (their result's size or value is read on the host)
SYNCING = {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero", "aten::nonzero_static",
           "aten::masked_select", "aten::equal", "aten::unique", "aten::_unique2", "aten::unique_consecutive",
           "aten::repeat_interleave", "aten::allclose"}


class SyncFlags(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in SYNCING:
            self.found.append(func._schema.name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("stage", [s.name for s in stages()])
def test_a_training_step_has_no_host_sync(stage, monkeypatch):
    monkeypatch.setattr(augment, "color_jitter", functools.partial(augment.color_jitter, by_subset=False))
    case = Case.parse("r18_0.25x_sk1:40:8")  # SK blocks, blur (above 32 px), colour jitter, the linear monitor
    data, batch = make_batch(case, torch.device("cpu"), classes=4)
    engine = stage_engine(stage, case, data, torch.device("cpu"))
    engine.train_step(batch)  # first step: optimizer state created
    with SyncFlags() as flags:
        engine.train_step(batch)
    assert flags.found == []
    with SyncFlags() as flags:  # the probe sees what it should: the CPU colour jitter's subsets
        monkeypatch.undo()
        if stage == "pretrain":
            engine.train_step(batch)
            assert "aten::nonzero" in flags.found
        torch.ones(2).sum().item()
    assert "aten::_local_scalar_dense" in flags.found
