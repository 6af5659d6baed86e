"""Warnings for settings that run but usually give a poor model (``engine.schedule.recipe_warnings``, and a
stage's own: pretraining's ``few_negatives``)."""

from __future__ import annotations

from simclrv2.config import from_mapping
from simclrv2.engine.schedule import recipe_warnings
from simclrv2.stages.pretrain import few_negatives
from simclrv2.stages.finetune import FinetuneConfig
from simclrv2.stages.pretrain import PretrainConfig


def pretrain(**changes):
    return from_mapping(PretrainConfig, {"data": "digits", "out": "o", **changes})


def finetune(**changes):
    return from_mapping(FinetuneConfig, {"from": "x", "data": "digits", "out": "o", **changes})


def test_epochs_within_the_warmup():
    found = recipe_warnings(pretrain(epochs=2, warmup_epochs=10, batch_size=256), 1, labeled=False)
    assert len(found) == 1 and "--epochs 2 <= --warmup-epochs 10" in found[0]
    assert not recipe_warnings(pretrain(epochs=100, warmup_epochs=10, batch_size=256), 1, labeled=False)


def test_few_images_per_forward_pass_for_batch_norm():
    found = recipe_warnings(finetune(epochs=60, warmup_epochs=0, batch_size=32), 4, labeled=True)
    assert len(found) == 1 and "8 images per forward pass" in found[0]
    found = recipe_warnings(finetune(epochs=60, warmup_epochs=0, batch_size=64, micro_batch=8), 1, labeled=True)
    assert "8 images per forward pass" in found[0]
    assert not recipe_warnings(finetune(epochs=60, warmup_epochs=0, batch_size=64), 2, labeled=True)


def test_few_negatives_in_pretraining_unless_a_memory_queue():
    found = few_negatives(pretrain(epochs=100, batch_size=64))
    assert len(found) == 1 and "126 negatives" in found[0]
    assert not recipe_warnings(pretrain(epochs=100, batch_size=64), 1, labeled=False)  # the stage's own warning
    assert not few_negatives(pretrain(epochs=100, batch_size=64, memory=4096))
    assert not few_negatives(pretrain(epochs=100, batch_size=128))
