"""Views drawn ahead (``--prefetch-views``): the next step's augmentation runs in a thread while a
step computes, and changes nothing that is trained."""

from __future__ import annotations

import threading

import torch

from simclrv2.checkpoint import load_checkpoint
from simclrv2.config import from_mapping
from simclrv2.data.loader import Batch
from simclrv2.engine.loop import drawn_ahead
from simclrv2.engine import train
from simclrv2.stages.configs import FinetuneConfig, PretrainConfig


def fake_batch(i: int) -> Batch:
    return Batch(torch.full((2, 3, 4, 4), i, dtype=torch.uint8), torch.full((2, 2), 4.0), torch.zeros(2, dtype=torch.long),
                 torch.arange(2))


def test_the_views_of_the_next_step_are_drawn_in_a_thread_while_a_step_runs():
    events = []
    next_drawn = threading.Event()

    def views(batch: Batch, step: int) -> torch.Tensor:
        events.append(("draw", step, threading.current_thread() is threading.main_thread()))
        if step == 11:
            next_drawn.set()
        return batch.images.float() + 1000 * step

    batches = drawn_ahead(iter([fake_batch(i) for i in range(3)]), views, first=10)
    first = next(batches)
    # while "step 10" computes (the caller holds batch 0), batch 1's views are drawn in the thread
    assert next_drawn.wait(10)
    assert torch.equal(first.views, first.images.float() + 10_000)
    rest = list(batches)
    assert [int(b.images[0, 0, 0, 0]) for b in rest] == [1, 2]
    assert [b.views[0, 0, 0, 0].item() for b in rest] == [11_001, 12_002]
    assert [(kind, step) for kind, step, _ in events] == [("draw", 10), ("draw", 11), ("draw", 12)]
    assert not any(main for _, _, main in events)
    assert list(drawn_ahead(iter([]), views, first=0)) == []


def trained_weights(tmp_path, cls, name, **settings) -> dict[str, torch.Tensor]:
    common = dict(data="digits", image_size=16, epochs=1, batch_size=128, workers=0, holdout=0.2, seed=3,
                  tensorboard=False, out=str(tmp_path / name))
    train(from_mapping(cls, {**common, **settings}))
    return load_checkpoint(tmp_path / name / "model.pt")["model"]


def test_training_with_views_drawn_ahead_equals_training_without(tmp_path):
    for cls, settings in ((PretrainConfig, dict(model="r18_0.125x_sk0", knn_monitor=False)),
                          (FinetuneConfig, {"from": "scratch", "model": "r18_0.125x_sk0", "labels": "10%",
                                            "epochs": 3, "batch_size": 64})):
        ahead = trained_weights(tmp_path, cls, f"{cls.__name__}_on", prefetch_views=True, **settings)
        inline = trained_weights(tmp_path, cls, f"{cls.__name__}_off", prefetch_views=False, **settings)
        assert ahead.keys() == inline.keys()
        for key in ahead:
            assert torch.equal(ahead[key], inline[key]), f"{cls.__name__}: {key}"
