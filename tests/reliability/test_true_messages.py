"""What used to be silent or misleading gets a true message or a refusal.

- ``--precision bf16`` where the device has no native bf16: a warning saying what ``auto`` would do.
- A diverging run (``--lr 1e30``): the message names a checkpoint only when one exists.
- Out of memory: the hint names every cause (batch, image size, micro-batch, model, classes).
- A list file naming an image twice: a warning, each image used once; one path with two labels: an
  error naming both lines.
- 16- and 32-bit single-channel images (microscopy, medical scanners): stretched over their own range,
  not nearly black.
- Huge images: a clear limit (``--max-image-pixels``) instead of Pillow's raw warning, checked after a
  large JPEG's reduced decoding.
- A checkpoint with NaN or infinite weights is refused when loaded (evaluate, predict, --from).
- ``simclrv2 run`` in a folder run with other settings: refused, naming the changed keys, and
  pipeline.yaml keeps the settings the models were trained with.
- kill -9 of a run whose DataLoader worker outlives it: the folder's lock dies with the run (the
  workers do not hold it), so ``--resume`` is not refused with a dead pid.
- ``--overwrite`` with ``--resume``: refused (``test_no_data_lost.py``).
"""

import logging
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from reliability_helpers import ENV, TINY, digit_images, one_line_error, simclrv2, small_classifier
from simclrv2 import cli


def test_bf16_without_native_support_warns_and_says_what_auto_does(monkeypatch, caplog):
    from simclrv2.engine import placement

    monkeypatch.setattr(placement, "cpu_flags", lambda: frozenset({"avx2"}))  # an AVX2-only CPU
    monkeypatch.setattr(placement, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="simclrv2"):
        assert placement.autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
        assert placement.autocast_dtype("auto", torch.device("cpu")) is None
    assert "without native bf16" in caplog.text and "--precision auto would compute in fp32" in caplog.text


def test_a_diverging_run_names_no_checkpoint_that_does_not_exist(tmp_path):
    line = one_line_error(simclrv2("pretrain", *TINY, "--lr", "1e30", "--out", tmp_path / "run"), "NaN or infinite")
    assert "no checkpoint had been written" in line and "checkpoints" not in line.split("(")[1].split(")")[0]
    assert not (tmp_path / "run").exists()


def test_the_out_of_memory_hint_names_the_model_and_classes_too():
    message = cli.user_error(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                                          "21474836480 bytes"))
    assert "20.0 GiB asked at once" in message and "--batch-size" in message and "smaller --model" in message
    assert "number of classes" in message


def test_list_files_with_repeated_images_warn_and_conflicting_labels_are_errors(tmp_path, caplog):
    from simclrv2.data import open_images
    from simclrv2.errors import UserError

    digit_images(tmp_path, count=4)
    (tmp_path / "twice.csv").write_text("path,label\n0/0.png,a\n1/1.png,b\n0/0.png,a\n")
    with caplog.at_level(logging.WARNING):
        images = open_images(str(tmp_path / "twice.csv"), labeled=True)
    assert len(images) == 2 and "names 1 image(s) again (first on line 4)" in caplog.text
    (tmp_path / "conflict.csv").write_text("path,label\n0/0.png,a\n1/1.png,b\n0/0.png,b\n")
    with pytest.raises(UserError, match=r"two labels: 'a' on line 2 and 'b' on line 4"):
        open_images(str(tmp_path / "conflict.csv"), labeled=True)


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_12_bit_images_in_16_or_32_bit_files_are_stretched_not_black(tmp_path, mode):
    from simclrv2.data.images import load_rgb

    values = np.array([[100, 1000, 2000, 4095]])  # a 12-bit microscope image
    image = Image.fromarray(values.astype(np.uint16 if mode == "I;16" else np.int32))
    image.save(tmp_path / "scan.png" if mode == "I;16" else tmp_path / "scan.tif")
    out = load_rgb(tmp_path / ("scan.png" if mode == "I;16" else "scan.tif"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 57, 121, 255])  # (v - 100) * 255 / 3995, rounded


def test_images_past_the_pixel_limit_are_refused_clearly_after_reduced_decoding(tmp_path, monkeypatch):
    from simclrv2.data import images

    Image.new("RGB", (64, 64), (10, 20, 30)).save(tmp_path / "big.png")
    Image.new("RGB", (64, 64), (10, 20, 30)).save(tmp_path / "big.jpg")
    monkeypatch.setattr(images, "max_pixels", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw Pillow DecompressionBombWarning
        with pytest.raises(images.BadImage, match=r"64 x 64 pixels .* more than --max-image-pixels 1000"):
            images.load_rgb(tmp_path / "big.png")
        assert images.load_rgb(tmp_path / "big.jpg", at_least=8).shape == (8, 8, 3)  # read at 1/8: 64 pixels
    assert "--max-image-pixels" in subprocess.run([sys.executable, "-m", "simclrv2", "pretrain", "--help"],
                                                  capture_output=True, text=True, env=ENV).stdout


def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path, capsys):
    model = small_classifier(tmp_path / "nan.pt", fill=float("nan"))
    image = digit_images(tmp_path / "images", count=3) / "0" / "0.png"
    for argv in (["evaluate", "--model", model, "--data", "digits"], ["predict", "--model", model, image]):
        assert cli.main(list(map(str, argv))) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "holds non-finite weights" in err[0], err


def test_run_refuses_a_folder_run_with_other_settings_and_keeps_its_pipeline_yaml(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "out": str(tmp_path / "run"), "data": "digits", "holdout": 0.2, "labels": ["2/class"],
        "skip": ["supervised", "linear_eval", "distill"],
        "common": {"image_size": 16, "workers": 0, "tensorboard": False},
        "pretrain": {"model": "r18_0.125x_sk0", "epochs": 1, "batch_size": 128}, "finetune": {"epochs": 1}}))
    assert simclrv2("run", config).returncode == 0
    saved = (tmp_path / "run" / "pipeline.yaml").read_text()
    line = one_line_error(simclrv2("run", config, "--set", "pretrain.epochs=2"), "was run with other settings")
    assert "pretrain.epochs 1 -> 2" in line and (tmp_path / "run" / "pipeline.yaml").read_text() == saved
    proc = simclrv2("run", config, "--set", "common.workers=1")  # how it runs is not a setting of the models
    assert proc.returncode == 0 and "finished earlier, skipped" in proc.stderr, proc.stderr[-2000:]


def test_a_killed_runs_lock_is_not_held_by_its_surviving_data_loader_worker(tmp_path):
    from simclrv2.engine.run_folder import RunFolder

    out = tmp_path / "run"
    args = [sys.executable, "-m", "simclrv2", "pretrain", *map(str, TINY), "--cache", "off", "--checkpoint-every", "2",
            "--log-every", "1", "--log-seconds", "0", "--out", str(out)]
    args[args.index("--workers") + 1] = "1"
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        for line in proc.stderr:
            if line.startswith("pretrain step 3/"):
                break
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert workers, "the run has no DataLoader worker"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert RunFolder(out)._holder() is None  # at once: no worker keeps the lock alive
    finally:
        proc.kill()
        proc.stderr.close()
    deadline = time.monotonic() + 30
    while any(subprocess.run(["kill", "-0", w], capture_output=True).returncode == 0 for w in workers):
        assert time.monotonic() < deadline, "the orphaned workers did not exit"
        time.sleep(0.5)
