"""--micro-batch: the step of the whole batch, run M images at a time (gradient caching for NT-Xent)."""

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from simclrv2.data.loader import Batch
from simclrv2.data.splits import micro_batch_size
from simclrv2.distributed import convert_to_global_bn
from simclrv2.errors import UserError
from simclrv2.losses import NTXentLoss
from simclrv2.models import build_model, classifier_config, contrastive_config
from simclrv2.stages.distill import DistillStep
from simclrv2.stages.common import ClassifierStep
from simclrv2.stages.pretrain import ContrastiveStep
from simclrv2.engine.stage import StepSettings


class Views:
    """An 'augmentation' handing out fixed views in turn (the step draws view 1, then view 2)."""

    def __init__(self, *views):
        self.views, self.calls = views, 0

    def __call__(self, images, sizes, generator, view=0):
        view = self.views[self.calls % len(self.views)]
        self.calls += 1
        return view


def jitter(images, sizes, generator, view=0):
    """A random 'augmentation' of float64 images: the micro-batched step draws it per micro-batch
    and must replay it exactly in its second pass."""
    return images + 0.2 * torch.rand(images.shape, generator=generator, dtype=images.dtype)


def jittered_views(x, m, seed):
    """The views the micro-batched step draws from a generator seeded ``seed``: per micro-batch of
    m images, view 1 then view 2."""
    g = torch.Generator().manual_seed(seed)
    v1, v2 = [], []
    for i in range(0, x.shape[0], m):
        v1.append(jitter(x[i:i + m], None, g))
        v2.append(jitter(x[i:i + m], None, g))
    return torch.cat(v1), torch.cat(v2)


def contrastive_model(monitor_classes=0):
    torch.manual_seed(0)
    return build_model(contrastive_config("r18_0.125x_sk0", small_images=True, head_layers=3,
                                          monitor_classes=monitor_classes)).double().train()


def ghost_reference(model, v1, v2, labels, m, criterion):
    """The plain step's loss over the whole batch in one autograd graph, with each micro-batch's
    views (m images, both views) going through the network together: batch norm per micro-batch."""
    zs, ce = [], 0.0
    count = 2 * (labels >= 0).sum().clamp_min(1)
    for i in range(0, v1.shape[0], m):
        z, logits = model(torch.cat([v1[i:i + m], v2[i:i + m]]))
        zs.append(z)
        if logits is not None:
            lab = torch.cat([labels[i:i + m]] * 2)
            ce = ce + (F.cross_entropy(logits, lab.clamp_min(0), reduction="none") * (lab >= 0)).sum() / count
    z1, z2 = torch.cat([z[:m] for z in zs]), torch.cat([z[m:] for z in zs])
    loss = criterion(z1, z2) + ce
    loss.backward()
    return loss.detach()


def grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def assert_same(a: dict, b: dict, rtol=1e-10):
    assert a.keys() == b.keys()
    for key in a:
        scale = b[key].abs().max().clamp_min(1e-30)
        assert ((a[key] - b[key]).abs().max() / scale).item() < rtol, key


@pytest.mark.parametrize("m, monitor", [(2, False), (4, True), (1, True)])
def test_micro_batched_contrastive_step_has_the_gradients_of_the_whole_batch(m, monitor):
    n = 8
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v1, v2 = jittered_views(x, m, seed=5)
    labels = torch.tensor([0, 1, -1, 2, 1, -1, 0, 2])
    batch = Batch(x, torch.full((n, 2), 8.0), labels, torch.arange(n))  # (float images: the fake augmentation jitters them)
    criterion = NTXentLoss(0.5)
    reference = contrastive_model(3 if monitor else 0)
    ours = copy.deepcopy(reference)
    expected = ghost_reference(reference, v1, v2, labels, m, criterion)
    step = ContrastiveStep(ours, ours, jitter, criterion, StepSettings(micro_batch=m))
    assert step.computes_gradients
    loss, logs = step(batch, torch.Generator().manual_seed(5), 0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert_same(grads(ours), grads(reference))
    # running statistics recorded once per micro-batch (the embedding pass leaves them alone)
    for (key, a), b in zip(ours.state_dict().items(), reference.state_dict().values()):
        if "running" in key or "num_batches" in key:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=key)


def test_one_micro_batch_is_the_plain_step():
    assert micro_batch_size(None, 64, 1) is None and micro_batch_size(64, 64, 1) is None
    assert micro_batch_size(16, 64, 2) == 16
    with pytest.raises(UserError, match=r"--micro-batch 48 does not divide the per-process batch of 64 images "
                                        r"\(--batch-size 128 over 2 process\(es\)\): use 32 or 64"):
        micro_batch_size(48, 128, 2)
    with pytest.raises(UserError, match="use 16 or 32"):
        micro_batch_size(20, 32, 1)
    with pytest.raises(UserError, match="per-process batch of 32"):
        micro_batch_size(64, 32, 1)


def test_finetune_and_distill_accumulate_the_mean_loss_exactly_up_to_ghost_bn():
    torch.manual_seed(0)
    n, m = 8, 2
    x = torch.rand(n, 3, 8, 8, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1, -1, 0, -1, 2])
    batch = Batch(torch.zeros(n, 3, 8, 8, dtype=torch.uint8), torch.full((n, 2), 8.0), labels, torch.arange(n))
    net = build_model(classifier_config("r18_0.125x_sk0", 3, 1, small_images=True)).double().train()
    teacher = build_model(classifier_config("r18_0.125x_sk0", 3, 1, small_images=True)).double().eval()
    labeled = Batch(batch.images, batch.sizes, labels.clamp_min(0), batch.indices)  # fine-tuning: all labeled
    for make, batch in ((lambda model, mb: DistillStep(model, model, teacher, Views(x), 0.5, 0.3,
                                                       StepSettings(micro_batch=mb)), batch),
                        (lambda model, mb: ClassifierStep(model, model, Views(x), StepSettings(micro_batch=mb)), labeled)):
        # the reference: the whole batch's loss in one graph, batch norm per micro-batch
        reference, ours = copy.deepcopy(net), copy.deepcopy(net)
        full = make(reference, None)
        chunks = [full.loss(x, batch, slice(i, i + m))[0] * (m / n) for i in range(0, n, m)]
        sum(chunks).backward()
        loss, _ = make(ours, m)(batch, None, 0)
        assert loss.item() == pytest.approx(sum(chunks).item(), rel=1e-12)
        assert_same(grads(ours), grads(reference))


# ---------------------------------------------------------------- two processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_process_worker(rank, port, v1, v2, m, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    n = v1.shape[0] // 2
    mine = slice(rank * n, (rank + 1) * n)
    labels = torch.full((n,), -1)
    images = v1[mine]  # this process's images (v2 unused); the step draws their views
    batch = Batch(images, torch.full((n, 2), 8.0), labels, torch.arange(n))
    w1, w2 = jittered_views(images, m, seed=rank)
    criterion = NTXentLoss(0.5)
    reference = convert_to_global_bn(contrastive_model(), torch.device("cpu"))
    ours = copy.deepcopy(reference)
    ghost_reference(reference, w1, w2, labels, m, criterion)
    for p in reference.parameters():  # what DDP does: the mean of the processes' gradients
        dist.all_reduce(p.grad)
        p.grad /= 2
    ddp = nn.parallel.DistributedDataParallel(ours, broadcast_buffers=False)
    ContrastiveStep(ours, ddp, jitter, criterion, StepSettings(micro_batch=m))(batch, torch.Generator().manual_seed(rank), 0)
    torch.save({"ours": grads(ours), "reference": grads(reference)}, f"{out_dir}/{rank}.pt")
    dist.destroy_process_group()


def test_two_processes_micro_batched_equal_the_ghost_bn_reference(tmp_path):
    g = torch.Generator().manual_seed(3)
    v1, v2 = torch.rand(8, 3, 8, 8, generator=g, dtype=torch.float64), torch.rand(8, 3, 8, 8, generator=g,
                                                                                   dtype=torch.float64)
    mp.spawn(two_process_worker, args=(free_port(), v1, v2, 2, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        result = torch.load(tmp_path / f"{rank}.pt")
        assert_same(result["ours"], result["reference"])
