"""Fine-tuning, the supervised baseline and evaluation on scikit-learn digits."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, top_k_accuracy_score

from simclrv2.checkpoint import load_checkpoint
from simclrv2.config import from_mapping
from simclrv2.data import open_images
from simclrv2.distributed import single_process
from simclrv2.commands.evaluate import evaluate, training_eval_split
from simclrv2.metrics import classification_metrics, predict_logits
from simclrv2.models.checkpoints import load_classifier
from simclrv2.engine import train
from simclrv2.stages.finetune import FinetuneConfig, default_finetune_lr, resolve

COMMON = dict(data="digits", workers=0, holdout=0.2, log_every=20, tensorboard=False)
# The fine-tuning recipe of the demo (configs/demo.yaml): SPEC's, with a learning rate and
# crop suited to 20 labeled 16-px images (sqrt scaling makes SPEC's rate tiny at batch 20).
# `pretrained` (conftest.py) is the pretraining stage of a shortened demo run.
MARGIN = 0.10
FT = dict(epochs=150, lr=0.03, crop_min_area=0.5, flip=False, image_size=16)


def run_finetune(tmp_path, name, **kw):
    cfg = from_mapping(FinetuneConfig, {**COMMON, **FT, "out": str(tmp_path / name), **kw})
    return train(cfg), tmp_path / name


def test_finetuning_beats_training_from_scratch_at_about_one_percent_labels(demo_run):
    # The shortened demo pipeline: a 12-epoch pretraining, then fine-tuning and the supervised
    # baseline on the same 20 labels (2 per class, 1.1% of the images) for the same steps.
    tuned = json.loads((demo_run / "finetune_2perclass" / "result.json").read_text())
    scratch = json.loads((demo_run / "supervised_2perclass" / "result.json").read_text())
    assert tuned["labeled_images"] == scratch["labeled_images"] == 20
    assert tuned["steps"] == scratch["steps"]  # same budget
    assert tuned["holdout_top1"] > scratch["holdout_top1"] + MARGIN, (tuned, scratch)
    chosen = (demo_run / "finetune_2perclass" / "labeled.txt").read_text().splitlines()
    assert len(chosen) == 20
    assert (demo_run / "supervised_2perclass" / "labeled.txt").read_text().splitlines() == chosen
    payload = load_checkpoint(demo_run / "finetune_2perclass" / "model.pt")
    assert payload["record"]["stage"] == "finetune" and payload["record"]["model_config"]["head_layer"] == 1
    assert payload["record"]["class_names"] == [str(i) for i in range(10)]


def test_head_layer_one_keeps_the_pretrained_head_layer(pretrained, tmp_path):
    source = load_checkpoint(pretrained)["model"]
    # lr 0: the classifier starts from exactly the pretrained encoder and first head layer
    _, run = run_finetune(tmp_path, "lr0", **{"from": str(pretrained)}, labels="1%", epochs=1, lr=0.0)
    model = load_checkpoint(run / "model.pt")["model"]
    for key in ("linear.weight", "bn.weight", "bn.bias"):
        assert torch.equal(model[f"head_layers.0.{key}"], source[f"projection_head.layers.0.{key}"]), key
    weights = [k for k in model if k.startswith("encoder.") and "running" not in k and "num_batches" not in k]
    assert len(weights) > 20
    for key in weights:  # (BN running statistics move even at lr 0)
        assert torch.equal(model[key], source[key]), key
    assert not any(k.startswith("head_layers.1.") for k in model)
    # trained normally, the layer moves but stays the pretrained one, far from a fresh initialisation
    _, run = run_finetune(tmp_path, "trained", **{"from": str(pretrained)}, labels="1%", epochs=20)
    tuned = load_checkpoint(run / "model.pt")["model"]["head_layers.0.linear.weight"].flatten()
    start = source["projection_head.layers.0.linear.weight"].flatten()
    assert not torch.equal(tuned, start)
    assert torch.nn.functional.cosine_similarity(tuned, start, dim=0) > 0.99


def test_head_layer_auto_scores_each_layer_and_keeps_the_best(pretrained, tmp_path):
    result, run = run_finetune(tmp_path, "auto", **{"from": str(pretrained)}, labels="6/class", head_layer="auto",
                               epochs=15)
    record = json.loads((run / "head_layer_search.json").read_text())
    assert set(record["top1"]) == {"0", "1", "2"}
    assert record["chosen"] == result["head_layer"]
    assert record["top1"][str(record["chosen"])] == max(record["top1"].values())
    assert record["fit_images"] + record["score_images"] == 60
    for j in range(3):
        assert (run / "head_layer_search" / f"head_layer_{j}" / "result.json").is_file()


def test_evaluate_agrees_with_an_independent_computation(pretrained, tmp_path):
    _, run = run_finetune(tmp_path, "ft", **{"from": str(pretrained)}, labels="2/class", epochs=10)
    model, record = load_classifier(run / "model.pt")
    images = training_eval_split(record, "run")
    logits, labels = predict_logits(model, images, 16, single_process("cpu"), workers=0)
    y, scores = labels.numpy(), logits.numpy()
    result = evaluate(str(run / "model.pt"), out=str(tmp_path / "eval"), workers=0, device="cpu",
                      precision="fp32")["metrics"]  # as predict_logits above
    assert result["images"] == len(y) == len(images) == 359  # 20% of each class of 1797 digits
    assert result["top1"] == pytest.approx(accuracy_score(y, scores.argmax(1)))
    assert result["top5"] == pytest.approx(top_k_accuracy_score(y, scores, k=5, labels=range(10)))
    assert result["confusion_matrix"] == confusion_matrix(y, scores.argmax(1), labels=range(10)).tolist()
    for c in range(10):
        mask = y == c
        assert result["per_class"][str(c)]["accuracy"] == pytest.approx((scores[mask].argmax(1) == c).mean())
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert saved["top1"] == result["top1"]
    assert "confusion matrix" in (tmp_path / "eval" / "evaluation.txt").read_text()


def test_classification_metrics_by_hand():
    logits = torch.tensor([[3.0, 1, 0], [0, 2, 1], [1, 0, 2], [2, 1, 0]])
    labels = torch.tensor([0, 2, 2, 1])
    m = classification_metrics(logits, labels, ["a", "b", "c"])
    assert m["top1"] == 0.5 and m["top5"] == 1.0
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 0, 0], [0, 1, 1]]
    assert m["per_class"]["c"] == {"images": 2, "accuracy": 0.5}


def test_default_learning_rates_follow_spec():
    assert default_finetune_lr("r50_1x_sk0") == 0.005
    assert default_finetune_lr("r50_1x_sk1") == 0.002
    assert default_finetune_lr("r152_3x_sk1") == 0.002
    assert default_finetune_lr("r50_2x_sk0") == 0.002


def test_default_epochs_and_head_layer_follow_the_label_share():
    """SPEC: 60 epochs for 1% labels, 30 for 10% and 100%; head layer 1, or 0 for 100%."""
    def resolved(labels, labeled, **kw):
        cfg = from_mapping(FinetuneConfig, {"from": "scratch", "model": "r18_0.125x_sk0", "data": "digits",
                                            "out": "unused", "labels": labels, **kw})
        cfg.check()
        out = resolve(cfg, None, labeled, 1000)
        return out.epochs, out.head_layer

    assert resolved("1%", 10) == (60, "1")
    assert resolved("2/class", 20) == (60, "1")
    assert resolved("10%", 100) == (30, "1")
    assert resolved("all", 1000) == (30, "0")
    assert resolved("all", 10) == (30, "0")  # all labels is "100%" however few they are
    assert resolved("1%", 10, epochs=7, head_layer="2") == (7, "2")
    assert resolved("all", 1000, head_layer="auto") == (30, "auto")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "simclrv2", *args], capture_output=True, text=True)


def test_bad_requests_are_one_line_errors(pretrained, tmp_path):
    base = ["--data", "digits", "--workers", "0", "--no-tensorboard"]
    cases = [
        (["finetune", "--from", str(pretrained), "--model", "r50_1x_sk0", "--out", str(tmp_path / "a"), *base],
         "does not match"),
        (["finetune", "--from", str(pretrained), "--head-layer", "3", "--out", str(tmp_path / "b"), *base],
         "head layer 3 is beyond"),
        (["finetune", "--from", "scratch", "--out", str(tmp_path / "c"), *base], "needs --model"),
        (["finetune", "--from", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "d"), *base], "missing.pt"),
        (["linear-eval", "--from", str(pretrained), "--head-layer", "7", "--out", str(tmp_path / "e"), *base],
         "beyond the projection head"),
        (["evaluate", "--model", str(pretrained), "--data", "digits"], "without a classifier"),
    ]
    for args, message in cases:
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert message in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_evaluate_refuses_data_with_other_classes(pretrained, tmp_path):
    _, run = run_finetune(tmp_path, "ft", **{"from": str(pretrained)}, labels="1/class", epochs=1)
    folder = tmp_path / "three"
    digits = open_images("digits", labeled=True)
    from PIL import Image
    for c in range(3):
        (folder / f"class{c}").mkdir(parents=True)
        i = int(np.flatnonzero(digits.labels == c)[0])
        Image.fromarray(digits.load(i)).save(folder / f"class{c}" / "a.png")
    proc = cli("evaluate", "--model", str(run / "model.pt"), "--data", str(folder), "--workers", "0")
    assert proc.returncode == 2 and "classifies 10 classes" in proc.stderr and "has 3" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_batch_cap_is_a_multiple_of_the_process_count():
    from simclrv2.errors import UserError
    from simclrv2.data.splits import capped_batch
    assert capped_batch(1024, 145, 1) == 145
    assert capped_batch(1024, 145, 2) == 144
    assert capped_batch(1024, 145, 8) == 144
    assert capped_batch(64, 145, 8) == 64
    assert capped_batch(60, 145, 8) == 56
    with pytest.raises(UserError, match="3 labeled images cannot be split over 4 processes"):
        capped_batch(1024, 3, 4)


def test_batch_norm_statistics_are_re_estimated_at_the_end_unless_turned_off(tiny_pretrained, tmp_path):
    from simclrv2.checkpoint import load_checkpoint
    from simclrv2.cli import main

    base = ["finetune", "--from", str(tiny_pretrained), "--data", "digits", "--labels", "2/class", "--epochs", "2",
            "--holdout", "0.2", "--workers", "0", "--device", "cpu", "--no-tensorboard"]
    assert main(base + ["--out", str(tmp_path / "on"), "--recalibrate-bn", "300"]) == 0
    assert main(base + ["--out", str(tmp_path / "off"), "--recalibrate-bn", "0"]) == 0
    on, off = (load_checkpoint(tmp_path / name / "model.pt") for name in ("on", "off"))
    assert on["result"]["bn_recalibration_images"] == 300 and "bn_recalibration_images" not in off["result"]
    stats = [k for k in on["model"] if k.endswith("running_mean")]
    weights = [k for k in on["model"] if k.endswith(".weight")]
    assert all(torch.equal(on["model"][k], off["model"][k]) for k in weights)  # same training
    assert all(not torch.equal(on["model"][k], off["model"][k]) for k in stats)  # new statistics
