"""--activation-checkpointing: the same forward, gradients and BN running statistics as without (float64),
for a fraction of the activation memory."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

from simclrv2.engine.memory_estimate import estimate_step
from simclrv2.models import build_model, contrastive_config
from simclrv2.models.resnet import ResNet
from simclrv2.stages import stages

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _common import Case, make_batch, stage_engine  # noqa: E402


@pytest.mark.parametrize("model,size", [("r18_0.25x_sk1", 32), ("r50_0.25x_sk1", 64)])
def test_checkpointed_stages_train_exactly_as_plain_ones(model, size):
    torch.manual_seed(0)
    plain = build_model(contrastive_config(model, size <= 32, 64, 32, 3, 0)).double().train()
    with torch.no_grad():  # non-trivial BN affine parameters (the last BN of each block starts at 0)
        for p in plain.parameters():
            p.add_(0.1 * torch.randn_like(p))
    checkpointed = copy.deepcopy(plain)
    checkpointed.encoder.checkpoint_blocks = True
    x = torch.randn(6, 3, size, size, dtype=torch.float64)
    weights = torch.randn(6, 32, dtype=torch.float64)
    for net in (plain, checkpointed):
        for _ in range(2):  # two steps: the running averages move twice, not four times
            net.zero_grad()
            (net(x)[0] * weights).sum().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-12, msg=name)
    for (name, a), b in zip(plain.named_buffers(), checkpointed.buffers()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=0, msg=name)
    with torch.no_grad():  # evaluation is untouched by the flag
        torch.testing.assert_close(checkpointed.eval()(x)[0], plain.eval()(x)[0], rtol=1e-12, atol=1e-12)


def resnets(module: torch.nn.Module) -> list[ResNet]:
    return [m for m in module.modules() if isinstance(m, ResNet)]


@pytest.mark.parametrize("stage", [s.name for s in stages()])
def test_the_option_checkpoints_the_trained_encoder_only(stage):
    case = Case.parse("r18_0.25x_sk0:32:8")
    data, batch = make_batch(case, torch.device("cpu"), classes=4)
    engine = stage_engine(stage, case, data, torch.device("cpu"), settings={"activation_checkpointing": True})
    trained = resnets(engine.model)
    assert trained and all(r.checkpoint_blocks for r in trained)
    for name, module in engine.step.modules().items():  # a teacher runs without gradients: nothing to recompute
        if name not in ("model", "net"):
            assert not any(r.checkpoint_blocks for r in resnets(module)), name
    loss, _ = engine.train_step(batch)
    assert torch.isfinite(loss)


def test_checkpointing_lowers_the_estimated_peak_of_a_pretraining_step():
    case = Case.parse("r50_0.5x_sk0:96:32")
    data, _ = make_batch(case, torch.device("cpu"))
    plain = estimate_step(stage_engine("pretrain", case, data, torch.device("cpu")))
    checkpointed = estimate_step(stage_engine("pretrain", case, data, torch.device("cpu"),
                                              settings={"activation_checkpointing": True}))
    assert checkpointed.resident == plain.resident
    assert checkpointed.peak < 0.65 * plain.peak  # 0.57 (r50_1x_sk1 at 224 px, 32 images: 0.39), (checkpointed.peak / 2**20, plain.peak / 2**20)
