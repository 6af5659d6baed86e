"""Distillation: the loss against a float64 reference, a frozen teacher, and students on digits."""

import json
import subprocess
import sys

import pytest
import torch

from simclrv2.checkpoint import load_checkpoint
from simclrv2.config import from_mapping
from simclrv2.losses import distillation_loss, teacher_entropy
from simclrv2.stages import distill as distill_module
from simclrv2.engine import train
from simclrv2.stages.distill import DistillConfig
from simclrv2.stages.finetune import FinetuneConfig


def reference_loss(student, teacher, tau):
    """SPEC: -sum_y P_T(y|x; tau) log P_S(y|x; tau), averaged over x, in float64."""
    s, t = student.double() / tau, teacher.double() / tau
    p_t = t.exp() / t.exp().sum(1, keepdim=True)
    log_p_s = s - s.exp().sum(1, keepdim=True).log()
    return -(p_t * log_p_s).sum(1).mean()


@pytest.mark.parametrize("tau", [0.1, 1.0, 3.0])
def test_loss_equals_float64_reference_and_only_the_student_gets_gradients(tau):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(16, 10, generator=g, requires_grad=True)
    teacher = torch.randn(16, 10, generator=g, requires_grad=True)
    loss = distillation_loss(student, teacher, tau)
    assert loss.item() == pytest.approx(reference_loss(student.detach(), teacher.detach(), tau).item(), rel=1e-5)
    loss.backward()
    assert teacher.grad is None
    s64 = student.detach().double().requires_grad_()
    reference_loss(s64, teacher.detach(), tau).backward()
    # float32 gradients: a few float32 ulps of the largest entry, 1/(tau*B), apart from float64.
    torch.testing.assert_close(student.grad.double(), s64.grad, rtol=1e-4, atol=1e-6 / (tau * 16))
    # float64 inputs stay float64: the formula itself agrees with the reference to round-off.
    student64 = student.detach().double().requires_grad_()
    loss64 = distillation_loss(student64, teacher.detach().double(), tau)
    assert loss64.dtype == torch.float64
    loss64.backward()
    torch.testing.assert_close(loss64, reference_loss(student64.detach(), teacher.detach(), tau),
                               rtol=1e-12, atol=0)
    torch.testing.assert_close(student64.grad, s64.grad, rtol=1e-10, atol=1e-14)


def test_loss_minus_teacher_entropy_is_the_kl_divergence():
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(8, 6, generator=g, dtype=torch.float64)
    for tau in (0.1, 1.0):
        p_t, p_s = torch.softmax(teacher / tau, 1), torch.softmax(student / tau, 1)
        kl = (p_t * (p_t / p_s).log()).sum(1).mean()
        got = distillation_loss(student, teacher, tau) - teacher_entropy(teacher, tau)
        torch.testing.assert_close(got, kl, rtol=1e-12, atol=1e-14)
    assert teacher_entropy(teacher, 1.0).item() > 0


def test_distillation_logs_the_kl_to_the_teacher(demo_run):
    records = [json.loads(line) for line in
               (demo_run / "distill_self_2perclass" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("kind") == "train"]
    assert train and all(-1e-4 <= r["distill_kl"] <= r["distill_loss"] + 1e-6 for r in train)
    assert train[-1]["distill_kl"] < train[0]["distill_kl"]


def test_self_distilled_student_keeps_the_teacher_accuracy(demo_run):
    result = json.loads((demo_run / "distill_self_2perclass" / "result.json").read_text())
    assert result["temperature"] == 0.1 and result["student"] == "r18_0.25x_sk0"
    teacher = json.loads((demo_run / "finetune_2perclass" / "result.json").read_text())
    assert result["teacher_holdout_top1"] == pytest.approx(teacher["holdout_top1"])
    assert result["holdout_top1"] >= teacher["holdout_top1"] - 0.01, (result, teacher)
    payload = load_checkpoint(demo_run / "distill_self_2perclass" / "model.pt")
    assert payload["record"]["model_config"]["head_layer"] == 0  # students drop the projection head
    assert not any(k.startswith("head_layers.") for k in payload["model"])


def test_small_student_beats_the_small_network_trained_on_the_labels(demo_run, tmp_path):
    small = json.loads((demo_run / "distill_r18_0.125x_sk0_2perclass" / "result.json").read_text())
    assert small["temperature"] == 1.0
    labels_only = train(from_mapping(FinetuneConfig, {
        "data": "digits", "holdout": 0.2, "workers": 0, "tensorboard": False, "out": str(tmp_path / "small"),
        "from": "scratch", "model": "r18_0.125x_sk0", "image_size": 16, "labels": "2/class", "head_layer": "0",
        "epochs": 150, "lr": 0.1, "crop_min_area": 0.5, "flip": False}))
    assert small["holdout_top1"] > labels_only["holdout_top1"] + 0.05, (small, labels_only)


def test_teacher_weights_and_bn_statistics_do_not_change(demo_run, tmp_path, monkeypatch):
    teacher_path = demo_run / "finetune_2perclass" / "model.pt"
    captured = {}
    original = distill_module.load_classifier

    def capture(path):
        model, payload = original(path)
        captured["model"] = model
        return model, payload

    monkeypatch.setattr(distill_module, "load_classifier", capture)
    cfg = from_mapping(DistillConfig, {"data": "digits", "holdout": 0.2, "workers": 0, "tensorboard": False,
                                       "out": str(tmp_path / "d"), "teacher": str(teacher_path), "epochs": 1,
                                       "batch_size": 128, "alpha": 0.5, "labels": "2/class"})
    result = train(cfg)
    assert result["steps"] == 11
    after = captured["model"].state_dict()
    saved = load_checkpoint(teacher_path)["model"]
    assert any("running_var" in k for k in saved)
    for key, value in saved.items():
        assert torch.equal(after[key].cpu(), value), key
    records = [json.loads(x) for x in (tmp_path / "d" / "metrics.jsonl").read_text().splitlines()]
    assert any("label_loss" in r for r in records)  # --alpha 0.5 mixes in the labels


def test_bad_requests_are_one_line_errors(demo_run, tmp_path):
    teacher = str(demo_run / "finetune_2perclass" / "model.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--teacher", teacher, "--student", "r51_1x_sk0", "--data", "digits"], "r51_1x_sk0"),
        (["--teacher", teacher, "--data", str(empty)], str(empty)),
        (["--teacher", str(demo_run / "pretrain" / "model.pt"), "--data", "digits"], "without a classifier"),
        (["--teacher", teacher, "--data", "digits", "--alpha", "0.5"], "pass --labels"),
    ]
    for i, (args, message) in enumerate(cases):
        proc = subprocess.run([sys.executable, "-m", "simclrv2", "distill", *args, "--out", str(tmp_path / f"o{i}"),
                               "--workers", "0"], capture_output=True, text=True)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_teacher_class_count_must_match_the_labels(demo_run, tmp_path):
    from PIL import Image

    from simclrv2.data import open_images

    digits = open_images("digits", labeled=True)
    folder = tmp_path / "three"
    for c in range(3):
        (folder / str(c)).mkdir(parents=True)
        for k, i in enumerate((digits.labels == c).nonzero()[0][:4]):
            Image.fromarray(digits.load(int(i))).save(folder / str(c) / f"{k}.png")
    proc = subprocess.run([sys.executable, "-m", "simclrv2", "distill", "--teacher",
                           str(demo_run / "finetune_2perclass" / "model.pt"), "--data", str(folder), "--labels",
                           "2/class", "--alpha", "0.5", "--out", str(tmp_path / "o"), "--workers", "0",
                           "--batch-size", "4"], capture_output=True, text=True)
    assert proc.returncode == 2 and "10 classes" in proc.stderr and "has 3" in proc.stderr, proc.stderr
