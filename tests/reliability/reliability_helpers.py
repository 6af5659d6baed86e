"""Helpers of the reliability tests: the command line in a subprocess, as a user runs it."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TINY = ["--data", "digits", "--model", "r18_0.125x_sk0", "--image-size", "16", "--epochs", "1",
        "--batch-size", "128", "--workers", "0", "--no-tensorboard", "--no-knn-monitor"]


def simclrv2(*args, timeout=300, env=None, cwd=None):
    """``python -m simclrv2 ARGS`` with this interpreter; the finished process."""
    return subprocess.run([sys.executable, "-m", "simclrv2", *map(str, args)], capture_output=True, text=True,
                          env=env or ENV, timeout=timeout, cwd=cwd)


def one_line_error(proc, *fragments):
    """Exit code 2, no traceback, and one error line (the last on stderr; a training run logs its start
    above it) holding every fragment; returns that line."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("simclrv2: error:")]
    assert "Traceback" not in proc.stderr and errors == lines[-1:], proc.stderr[-3000:]
    assert all(f in errors[0] for f in fragments), proc.stderr[-3000:]
    return errors[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under a folder (hidden ones included) with its sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def small_classifier(path: Path, classes=("a", "b", "c"), image_size: int = 16, fill: float | None = None) -> Path:
    """A tiny classifier checkpoint (random weights; every float tensor ``fill`` when given)."""
    import torch

    from simclrv2.checkpoint import save_checkpoint
    from simclrv2.models import build_model, classifier_config
    from simclrv2.record import Record

    torch.manual_seed(0)
    config = classifier_config("r18_0.125x_sk0", num_classes=len(classes), small_images=True)
    state = build_model(config).state_dict()
    if fill is not None:
        state = {k: v.fill_(fill) if v.is_floating_point() else v for k, v in state.items()}
    record = Record("finetune", config, image_size, list(classes))
    save_checkpoint({"record": record.to_data(), "model": state}, path)
    return path


def digit_images(folder: Path, count: int = 30, names=None) -> Path:
    """``count`` digits as PNG files in class folders 0-2 (``names``: file names, str or bytes, in order)."""
    import numpy as np
    from PIL import Image

    from simclrv2.data import open_images

    digits = open_images("digits", labeled=True)
    for k in range(count):
        index = int(np.flatnonzero(digits.labels == k % 3)[k // 3])
        sub = os.path.join(os.fsencode(folder), str(k % 3).encode())
        os.makedirs(sub, exist_ok=True)
        name = names[k] if names is not None else f"{k}.png"
        with open(os.path.join(sub, os.fsencode(name)), "wb") as f:
            Image.fromarray(digits.load(index)).save(f, format="PNG")
    return folder
