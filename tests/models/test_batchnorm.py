"""Batch norm's moving statistics as the official code keeps them: the biased batch variance (SPEC)."""

import pytest
import torch

from simclrv2.losses import NTXentLoss
from simclrv2.models import build_model, contrastive_config
from simclrv2.models.batchnorm import BatchNorm


def biased_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dims = [0] + list(range(2, x.dim()))
    return x.mean(dims), ((x - x.mean(dims, keepdim=True)) ** 2).mean(dims)


def test_every_bn_of_a_training_step_moves_toward_the_biased_batch_variance():
    torch.manual_seed(0)
    # r50 at width 1/8 has selective-kernel blocks (their attention BN sees n = batch x 1 x 1),
    # the 3-layer projection head (n = batch) and the monitor's affine-free BN.
    model = build_model(contrastive_config("r50_0.125x_sk1", small_images=True, head_layers=3,
                                           monitor_classes=10)).double().train()
    bns = {name: m for name, m in model.named_modules() if isinstance(m, BatchNorm)}
    assert any("sk" in name or "fc1_bn" in name for name in bns) and any("projection_head" in n for n in bns)
    assert len(bns) > 50
    seen, expected = {}, {}

    def before(module, inputs):
        x = inputs[0].detach()
        mean, var = biased_moments(x)
        m = module.momentum
        expected[module] = ((1 - m) * module.running_mean + m * mean, (1 - m) * module.running_var + m * var)

    def after(module, inputs, output):
        seen[module] = seen.get(module, 0) + 1
        mean, var = expected[module]
        torch.testing.assert_close(module.running_mean, mean, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(module.running_var, var, rtol=1e-12, atol=1e-15)

    for module in bns.values():
        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(3):
        views = torch.rand(2 * 6, 3, 16, 16, dtype=torch.float64)
        z, logits = model(views)
        loss = NTXentLoss(0.5)(z[:6], z[6:]) + torch.nn.functional.cross_entropy(logits, torch.arange(12) % 10)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert set(seen) == set(bns.values()) and set(seen.values()) == {3}
    # after 3 steps PyTorch's own update (unbiased) would differ: the correction is not a no-op
    head_bn = bns["projection_head.layers.0.bn"]
    assert head_bn.running_var.sub(1).abs().max() > 1e-3


@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 2, 2), (7, 3, 1, 1)])
def test_batchnorm_normalises_as_pytorch_and_only_the_running_variance_differs(shape):
    torch.manual_seed(1)
    x = torch.randn(*shape, dtype=torch.float64) * 3 + 1
    ours = BatchNorm(3).double()
    theirs = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(3).double()
    theirs.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=0, atol=0)
    n = x.numel() / 3
    _, var = biased_moments(x)
    torch.testing.assert_close(ours.running_var, 0.9 + 0.1 * var, rtol=1e-14, atol=0)
    torch.testing.assert_close(theirs.running_var, 0.9 + 0.1 * var * n / (n - 1), rtol=1e-14, atol=0)
    ours.eval()
    theirs.running_var.copy_(ours.running_var)
    theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


def test_recalibration_leaves_the_mean_batch_statistics_in_float64():
    from simclrv2.models.batchnorm import recalibrate

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), BatchNorm(4), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1),
                              BatchNorm(2)).double()
    for layer in (net[1], net[4]):
        layer.running_mean.fill_(5.0)  # stale statistics, as after a short run
        layer.running_var.fill_(9.0)
    batches = [torch.randn(6, 3, 5, 5, dtype=torch.float64) * (k + 1) + k for k in range(4)]
    net.eval()
    assert recalibrate(net, iter(batches)) == 4
    assert not net.training and net[1].momentum == 0.1  # mode and momentum restored
    with torch.no_grad():
        means, variances = {1: [], 4: []}, {1: [], 4: []}
        for x in batches:  # the reference: batch statistics in training mode, layer by layer
            h = x
            for i, layer in enumerate(net):
                if i in means:
                    means[i].append(h.mean((0, 2, 3)))
                    variances[i].append(h.var((0, 2, 3), unbiased=False))
                    h = (h - means[i][-1][None, :, None, None]) / (variances[i][-1][None, :, None, None]
                                                                 + layer.eps).sqrt()
                    h = h * layer.weight[None, :, None, None] + layer.bias[None, :, None, None]
                else:
                    h = layer(h)
    for i in (1, 4):
        torch.testing.assert_close(net[i].running_mean, torch.stack(means[i]).mean(0))
        torch.testing.assert_close(net[i].running_var, torch.stack(variances[i]).mean(0))
