"""Two gloo processes on CPU against one process on the full batch."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from simclrv2.distributed import GlobalBatchNorm, convert_to_global_bn
from simclrv2.losses import NTXentLoss
from simclrv2.models.batchnorm import BatchNorm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two(fn, *args):
    port = free_port()
    mp.spawn(fn, args=(port, *args), nprocs=2, join=True)


def init(rank, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)


def loss_worker(rank, port, z1, z2, out_dir):
    init(rank, port)
    n = z1.shape[0] // 2
    a = z1[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    b = z2[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    loss = NTXentLoss(0.2)(a, b)
    loss.backward()
    # DDP would average parameter gradients over the 2 processes: divide by the world size.
    torch.save({"loss": loss.detach(), "ga": a.grad / 2, "gb": b.grad / 2}, f"{out_dir}/{rank}.pt")
    dist.destroy_process_group()


def test_ntxent_two_processes_equal_one_process(tmp_path):
    torch.manual_seed(0)
    # float64 so that the only possible difference is the algorithm, not summation order.
    z1, z2 = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    run_two(loss_worker, z1, z2, str(tmp_path))
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    full = NTXentLoss(0.2)(a, b)
    full.backward()
    parts = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    assert (parts[0]["loss"] + parts[1]["loss"]).item() / 2 == pytest.approx(full.item(), rel=1e-12)
    torch.testing.assert_close(torch.cat([p["ga"] for p in parts]), a.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(torch.cat([p["gb"] for p in parts]), b.grad, rtol=1e-10, atol=1e-14)


def make_net():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNorm(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3),
                        BatchNorm(3))
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
    return net


def bn_worker(rank, port, x, w, out_dir):
    init(rank, port)
    net = convert_to_global_bn(make_net(), torch.device("cpu")).train()
    assert isinstance(net[1], GlobalBatchNorm) and isinstance(net[5], GlobalBatchNorm)
    n = x.shape[0] // 2
    xr = x[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    out = net(xr)
    (out * w[rank * n:(rank + 1) * n]).sum().backward()
    grads = {k: p.grad for k, p in net.named_parameters()}
    torch.save({"out": out.detach(), "gx": xr.grad, "grads": grads,
                "running": {k: v for k, v in net.state_dict().items() if "running" in k}}, f"{out_dir}/{rank}.pt")
    dist.destroy_process_group()


def test_global_bn_two_processes_equal_one_process(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(8, 3, 6, 6)
    w = torch.randn(8, 3)
    run_two(bn_worker, x, w, str(tmp_path))
    net = make_net().train()
    xf = x.clone().requires_grad_(True)
    out = net(xf)
    (out * w).sum().backward()
    parts = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    torch.testing.assert_close(torch.cat([p["out"] for p in parts]), out.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat([p["gx"] for p in parts]), xf.grad, rtol=1e-4, atol=1e-5)
    for name, p in net.named_parameters():
        # each process holds the gradient of its own loss term; their sum is the full gradient
        summed = parts[0]["grads"][name] + parts[1]["grads"][name]
        torch.testing.assert_close(summed, p.grad, rtol=1e-4, atol=1e-5, msg=name)
    for key, value in net.state_dict().items():
        if "running" in key:
            torch.testing.assert_close(parts[0]["running"][key], value, rtol=1e-4, atol=1e-6, msg=key)


def running_worker(rank, port, x, steps, out_dir):
    init(rank, port)
    bn = convert_to_global_bn(nn.Sequential(BatchNorm(3)), torch.device("cpu")).double().train()
    n = x.shape[1] // 2
    for step in range(steps):
        bn(x[step, rank * n:(rank + 1) * n])
    torch.save({k: v for k, v in bn.state_dict().items() if "running" in k}, f"{out_dir}/{rank}.pt")
    dist.destroy_process_group()


def test_global_bn_moves_toward_the_biased_variance_of_the_global_batch(tmp_path):
    """SPEC (official cross-replica BN): running var <- 0.9 var + 0.1 * biased variance of the global batch."""
    torch.manual_seed(2)
    steps = 3
    x = torch.randn(steps, 6, 3, 2, 2, dtype=torch.float64) * 2 + 0.5  # 3 steps of a global batch of 6
    run_two(running_worker, x, steps, str(tmp_path))
    mean, var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for step in range(steps):
        batch = x[step].transpose(0, 1).reshape(3, -1)  # every pixel of both processes' images
        mean = 0.9 * mean + 0.1 * batch.mean(1)
        var = 0.9 * var + 0.1 * ((batch - batch.mean(1, keepdim=True)) ** 2).mean(1)
    for rank in range(2):
        running = torch.load(tmp_path / f"{rank}.pt")
        torch.testing.assert_close(running["0.running_mean"], mean, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(running["0.running_var"], var, rtol=1e-12, atol=1e-15)


def sharded_features_worker(rank, port, arrays, labels, out_dir):
    from simclrv2.data import ImageSet
    from simclrv2.distributed import Runtime, gather_rows
    from simclrv2.metrics import eval_loader, extract_shared, own_share

    init(rank, port)
    rows = torch.arange(7 * 3, dtype=torch.float64).view(7, 3)
    gathered = gather_rows(rows[:4] if rank == 0 else rows[4:])  # 4 rows on rank 0, 3 on rank 1
    images = ImageSet(paths=None, arrays=arrays, labels=labels, class_names=["a", "b", "c"], name="tiny")
    embedded: list[int] = []

    def embed(x):
        embedded.append(x.shape[0])
        return x.flatten(1)[:, :6] * 2

    runtime = Runtime(rank, 2, 0, torch.device("cpu"))
    mine, shared = own_share(images, runtime)
    loader = eval_loader(mine, 8, runtime, batch_size=2, workers=0, cache="off")
    features, feature_labels = extract_shared(embed, loader, shared)
    torch.save({"rows": gathered, "features": features, "labels": feature_labels, "embedded": sum(embedded)},
               f"{out_dir}/{rank}.pt")
    dist.destroy_process_group()


def test_shared_feature_extraction_gathers_every_image_in_order(tmp_path):
    """The kNN monitor's extraction: each of 2 processes embeds its share of the images (here 9: 5 and 4), and
    both get all the features and labels in the images' order, as one process alone computes them."""
    from simclrv2.data import ImageSet
    from simclrv2.distributed import single_process
    from simclrv2.metrics import eval_loader, extract_features

    rng = np.random.default_rng(0)
    arrays, labels = rng.integers(0, 256, (9, 8, 8, 3), dtype=np.uint8), np.arange(9) % 3
    run_two(sharded_features_worker, arrays, labels, str(tmp_path))
    images = ImageSet(paths=None, arrays=arrays, labels=labels, class_names=["a", "b", "c"], name="tiny")
    alone = eval_loader(images, 8, single_process("cpu"), batch_size=2, workers=0, cache="off")
    features, feature_labels = extract_features(lambda x: x.flatten(1)[:, :6] * 2, alone)
    parts = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    assert [p["embedded"] for p in parts] == [5, 4]
    for p in parts:
        torch.testing.assert_close(p["rows"], torch.arange(21, dtype=torch.float64).view(7, 3), rtol=0, atol=0)
        torch.testing.assert_close(p["features"], features, rtol=0, atol=0)
        assert p["labels"].tolist() == feature_labels.tolist() == list(labels)
