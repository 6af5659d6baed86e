import torch
from torch import nn

from simclrv2.checkpoint import load_checkpoint, save_checkpoint
from simclrv2.memory import MemoryQueue, MomentumEncoder
from simclrv2.models import build_model, contrastive_config


def test_queue_is_fifo_ring_buffer():
    q = MemoryQueue(5, 2)
    a = torch.arange(6, dtype=torch.float32).view(3, 2)
    b = torch.arange(100, 108, dtype=torch.float32).view(4, 2)
    q.enqueue(a)
    assert torch.equal(q.keys[:3], a) and q.pointer.item() == 3
    q.enqueue(b)
    assert torch.equal(q.keys[3:5], b[:2]) and torch.equal(q.keys[0:2], b[2:])
    assert torch.equal(q.keys[2], a[2]) and q.pointer.item() == 2


def test_queue_starts_with_unit_vectors():
    q = MemoryQueue(16, 8, seed=1)
    torch.testing.assert_close(q.keys.norm(dim=1), torch.ones(16))


def test_ema_update_formula_and_buffers_copied():
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = MomentumEncoder(online, momentum=0.9)
    before = [p.detach().clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    online.train()(torch.randn(8, 3))  # changes BN running stats
    ema.update(online)
    for b, e, o in zip(before, ema.model.parameters(), online.parameters()):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * o)
        assert not e.requires_grad
    torch.testing.assert_close(ema.model[1].running_mean, online[1].running_mean)


def test_memory_state_round_trips_bit_for_bit(tmp_path):
    model = build_model(contrastive_config("r18_0.25x_sk0", small_images=True, head_out_dim=8))
    ema = MomentumEncoder(model, 0.99)
    queue = MemoryQueue(10, 8)
    queue.enqueue(torch.randn(4, 8))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    ema.update(model)
    path = save_checkpoint({"record": {}, "model": {},
                            "state": {"ema": ema.state_dict(), "queue": queue.state_dict()}}, tmp_path / "c.pt")
    payload = load_checkpoint(path)
    ema2 = MomentumEncoder(build_model(contrastive_config("r18_0.25x_sk0", small_images=True, head_out_dim=8)), 0.99)
    queue2 = MemoryQueue(10, 8, seed=5)
    ema2.load_state_dict(payload["state"]["ema"])
    queue2.load_state_dict(payload["state"]["queue"])
    assert all(torch.equal(a, b) for a, b in zip(ema.state_dict().values(), ema2.state_dict().values()))
    assert torch.equal(queue.keys, queue2.keys) and queue2.pointer.item() == 4
