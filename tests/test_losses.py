import pytest
import torch

from simclrv2.losses import NTXentLoss, distillation_loss


def ntxent_reference(z1, z2, temperature):
    """SPEC's formula in float64 with explicit loops over samples."""
    z1 = z1.double() / z1.double().norm(dim=1, keepdim=True)
    z2 = z2.double() / z2.double().norm(dim=1, keepdim=True)
    n = z1.shape[0]
    total = 0.0
    for i in range(n):
        for a, b in ((z1, z2), (z2, z1)):
            logits = [float(a[i] @ b[j]) / temperature for j in range(n)]  # positive at i
            logits += [float(a[i] @ a[j]) / temperature - (1e9 if j == i else 0.0) for j in range(n)]
            logits = torch.tensor(logits, dtype=torch.float64)
            total += -(logits[i] - torch.logsumexp(logits, 0)).item()
    return total / n


@pytest.mark.parametrize("n,d,t", [(4, 8, 0.1), (7, 16, 0.5), (2, 3, 1.0)])
def test_ntxent_equals_float64_reference(n, d, t):
    torch.manual_seed(n)
    z1, z2 = torch.randn(n, d), torch.randn(n, d)
    got = NTXentLoss(t)(z1, z2).item()
    assert got == pytest.approx(ntxent_reference(z1, z2, t), rel=1e-5)


def test_ntxent_with_queue_adds_negatives():
    torch.manual_seed(0)
    z1, z2 = torch.randn(3, 4), torch.randn(3, 4)
    queue = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    loss = NTXentLoss(0.2)(z1, z2, queue).item()
    a = torch.nn.functional.normalize(z1.double(), dim=1)
    b = torch.nn.functional.normalize(z2.double(), dim=1)
    q = queue.double()
    expected = 0.0
    for i in range(3):
        for x, y in ((a, b), (b, a)):
            logits = torch.cat([x[i] @ y.T, x[i] @ x.T - 1e9 * torch.eye(3, dtype=torch.float64)[i], x[i] @ q.T]) / 0.2
            expected += -(logits[i] - torch.logsumexp(logits, 0)).item()
    assert loss == pytest.approx(expected / 3, rel=1e-5)


def test_ntxent_is_low_for_matching_views():
    z = torch.randn(16, 32)
    assert NTXentLoss(0.1)(z, z + 0.01 * torch.randn_like(z)) < NTXentLoss(0.1)(z, torch.randn(16, 32))


def test_ntxent_under_bf16_autocast_is_computed_in_float32():
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    ref = NTXentLoss(0.1)(z1, z2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = NTXentLoss(0.1)(z1.bfloat16(), z2.bfloat16())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=2e-2)


def test_distillation_loss_reference_and_gradient_only_to_student():
    torch.manual_seed(0)
    s = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    tau = 0.5
    loss = distillation_loss(s, t, tau)
    expected = 0.0
    for i in range(5):
        p_t = torch.softmax(t[i].detach() / tau, 0)
        log_p_s = torch.log_softmax(s[i].detach() / tau, 0)
        expected += -(p_t * log_p_s).sum().item()
    assert loss.item() == pytest.approx(expected / 5, rel=1e-6)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    # the gradient of soft cross-entropy: (p_s - p_t) / (tau * batch)
    torch.testing.assert_close(s.grad, (torch.softmax(s.detach() / tau, 1) - torch.softmax(t.detach() / tau, 1)) / (tau * 5))
