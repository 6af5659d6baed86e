import math

import numpy as np
import pytest
import torch
from torch import nn

from simclrv2.optim import LARS, build_optimizer, param_groups, scale_learning_rate, warmup_cosine_schedule


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2)
        self.monitor = nn.Linear(3, 2)


def test_param_groups_exclude_bn_and_bias():
    model = Tiny()
    groups = param_groups(model, 1e-4, no_adapt_prefixes=("monitor.",))
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert by_id[id(model.conv.weight)]["lars"] and by_id[id(model.conv.weight)]["weight_decay"] == 1e-4
    assert by_id[id(model.fc.weight)]["lars"]
    for p in (model.bn.weight, model.bn.bias, model.fc.bias, model.monitor.bias):
        assert not by_id[id(p)]["lars"] and by_id[id(p)]["weight_decay"] == 0
    assert not by_id[id(model.monitor.weight)]["lars"] and by_id[id(model.monitor.weight)]["weight_decay"] == 1e-4


def lars_reference(w, g, v, lr, wd, m, eeta, adapt, nesterov=False):
    """SPEC's LARS update in float64, one tensor (Nesterov: the official ``use_nesterov`` form)."""
    g = g + wd * w
    trust = 1.0
    if adapt:
        wn, gn = float(np.linalg.norm(w)), float(np.linalg.norm(g))
        trust = eeta * wn / gn if wn > 0 and gn > 0 else 1.0
    v = m * v + lr * trust * g
    update = m * v + lr * trust * g if nesterov else v
    return w - update, v


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_two_steps_equal_hand_computed_update(nesterov):
    torch.manual_seed(0)
    model = Tiny().double()
    groups = param_groups(model, 0.01, no_adapt_prefixes=("monitor.",))
    opt = LARS(groups, lr=0.5, momentum=0.9, nesterov=nesterov)
    params = {name: p.detach().numpy().copy() for name, p in model.named_parameters()}
    flags = {}
    for name, p in model.named_parameters():
        g = next(g for g in groups if any(q is p for q in g["params"]))
        flags[name] = (g["weight_decay"], g["lars"])
    velocity = {name: np.zeros_like(v) for name, v in params.items()}
    for step in range(2):
        grads = {}
        for name, p in model.named_parameters():
            p.grad = torch.randn_like(p)
            grads[name] = p.grad.numpy().copy()
        opt.step()
        for name, p in model.named_parameters():  # the gradients are read, not changed
            np.testing.assert_array_equal(p.grad.numpy(), grads[name], err_msg=name)
        for name in params:
            wd, adapt = flags[name]
            params[name], velocity[name] = lars_reference(params[name], grads[name], velocity[name], 0.5, wd, 0.9,
                                                          1e-3, adapt, nesterov)
        for name, p in model.named_parameters():
            np.testing.assert_allclose(p.detach().numpy(), params[name], rtol=1e-12, atol=1e-14, err_msg=name)
        scratch = {name: opt._scratch[p].data_ptr() for name, p in model.named_parameters()}
        if step:  # the update is built in the same memory every step: no per-step allocation
            assert scratch == first_scratch
        first_scratch = scratch


def test_lars_trust_ratio_is_one_for_zero_weights():
    w = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = LARS([{"params": [w], "weight_decay": 0.0, "lars": True}], lr=0.1, momentum=0.0)
    w.grad = torch.ones(4, dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((4,), -0.1, dtype=torch.float64))


def test_lars_state_dict_round_trip():
    model = Tiny()
    opt = LARS(param_groups(model, 1e-4), lr=0.1)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    other = LARS(param_groups(Tiny(), 1e-4), lr=0.1)
    other.load_state_dict(opt.state_dict())
    assert other.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


def test_schedule_warmup_then_cosine_to_zero():
    lr = warmup_cosine_schedule(2.0, total_steps=100, warmup_steps=10)
    assert lr[0] == 0.0 and lr[5] == pytest.approx(1.0)
    assert lr[10] == pytest.approx(2.0)
    assert lr[55] == pytest.approx(1.0)
    assert lr[-1] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert np.all(np.diff(lr[10:]) <= 0)
    no_warmup = warmup_cosine_schedule(1.0, 10, 0)
    assert no_warmup[0] == 1.0


def test_learning_rate_scaling():
    assert scale_learning_rate(0.3, 512, "linear") == pytest.approx(0.6)
    assert scale_learning_rate(0.1, 4096, "sqrt") == pytest.approx(6.4)
    with pytest.raises(ValueError):
        scale_learning_rate(0.1, 256, "cubic")


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW), ("lars", LARS)])
def test_build_optimizer(name, cls):
    opt = build_optimizer(name, param_groups(Tiny(), 1e-4), lr=0.1)
    assert isinstance(opt, cls)
