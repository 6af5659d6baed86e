"""How good are pretrained features from a few labels? A probe of the demo's pretraining recipe.

For each setting, pretrain on scikit-learn digits (the demo's recipe, one setting changed), then
on the frozen features of the held-out images measure:
  - 1-NN (cosine) and logistic regression from 2 labeled images per class (mean of 5 label draws),
  - logistic regression from all training labels,
for the encoder output h0 and the first projection-head layer h1 (what fine-tuning starts from).
Raw pixels give the floor a representation has to beat.

    python benchmarks/fewshot_probe.py                           # temperatures 0.1 0.2 0.5 1.0 (~6 min)
    python benchmarks/fewshot_probe.py --set crop_min_area=0.08 --set 'epochs=60 temperature=0.5'
    python benchmarks/fewshot_probe.py --quick                   # seconds-long smoke run
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, markdown_table  # noqa: E402

from simclrv2.data.sources import open_images  # noqa: E402
from simclrv2.data.subsets import holdout_split  # noqa: E402
from simclrv2.distributed import single_process  # noqa: E402
from simclrv2.metrics import eval_loader, extract_features  # noqa: E402
from simclrv2.models.checkpoints import load_model  # noqa: E402
from simclrv2.commands.run import load_pipeline_config, packaged_config, plan  # noqa: E402
from simclrv2.engine import train  # noqa: E402

DRAWS = 5
PER_CLASS = 2


def demo_pretrain_config(out: Path, overrides: list[str]):
    """The pretraining stage of configs/demo.yaml with ``pretrain.KEY=VALUE`` overrides."""
    cfg = load_pipeline_config(str(packaged_config("demo")), [f"pretrain.{o}" for o in overrides],
                               {"out": str(out), "skip": ["linear_eval", "supervised", "distill"]})
    return plan(cfg)[0].cfg


def features(model_path: Path, size: int) -> dict[str, tuple[np.ndarray, ...]]:
    """{name: (train features, train labels, held-out features, held-out labels)} for h0, h1, pixels."""
    model, _ = load_model(model_path)
    runtime = single_process("cpu")
    images = open_images("digits", labeled=True)
    train, held = holdout_split(images.labels, 0.2, 0)

    def extract(fn, idx):
        f, y = extract_features(fn, eval_loader(images.subset(idx), size, runtime, workers=0))
        return f.numpy(), y.numpy()

    def h0(x):
        return model.encoder(x)

    def h1(x):
        return model.projection_head.layers[0](model.encoder(x))

    out = {}
    for name, fn in (("h0", h0), ("h1", h1)):
        out[name] = (*extract(fn, train), *extract(fn, held))
    return out


def raw_pixels() -> tuple[np.ndarray, ...]:
    images = open_images("digits", labeled=True)
    pixels = np.stack([images.load(i)[..., 0].ravel() for i in range(len(images))]).astype(np.float64)
    train, held = holdout_split(images.labels, 0.2, 0)
    return pixels[train], images.labels[train], pixels[held], images.labels[held]


def probe(a: np.ndarray, ya: np.ndarray, b: np.ndarray, yb: np.ndarray) -> tuple[float, float, float]:
    """(1-NN, logistic regression) from 2 labels per class (mean of 5 draws), logistic regression from all."""
    mean, std = a.mean(0), a.std(0) + 1e-6
    za, zb = (a - mean) / std, (b - mean) / std
    unit_b = b / np.linalg.norm(b, axis=1, keepdims=True)
    nearest, logistic = [], []
    for draw in range(DRAWS):
        rng = np.random.default_rng(draw)
        idx = np.concatenate([rng.choice(np.flatnonzero(ya == c), PER_CLASS, replace=False)
                              for c in np.unique(ya)])
        unit_a = a[idx] / np.linalg.norm(a[idx], axis=1, keepdims=True)
        nearest.append(float((ya[idx][np.argmax(unit_b @ unit_a.T, 1)] == yb).mean()))
        logistic.append(LogisticRegression(max_iter=3000).fit(za[idx], ya[idx]).score(zb, yb))
    full = LogisticRegression(max_iter=3000).fit(za, ya).score(zb, yb)
    return float(np.mean(nearest)), float(np.mean(logistic)), float(full)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.1, 0.2, 0.5, 1.0])
    parser.add_argument("--set", action="append", default=[], metavar="'KEY=VALUE ...'",
                        help="probe this pretraining setting instead of the temperatures; repeat it for "
                             "several runs, several KEY=VALUE in one --set change them together")
    parser.add_argument("--quick", action="store_true", help="1 epoch, one temperature: a smoke run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    settings = [s.split() for s in args.set] or [[f"temperature={t}"] for t in args.temperatures]
    if args.quick:
        settings = settings[:1]
    rows = [["raw pixels (8x8)", "-", *(f"{v:.3f}" for v in probe(*raw_pixels()))]]
    with tempfile.TemporaryDirectory() as tmp:
        for i, setting in enumerate(settings):
            overrides = setting + (["epochs=1"] if args.quick else [])
            cfg = demo_pretrain_config(Path(tmp) / f"run{i}", overrides + ["knn_monitor=false"])
            start = time.perf_counter()
            train(cfg)
            seconds = time.perf_counter() - start
            for name, data in features(Path(cfg.out) / "model.pt", cfg.image_size).items():
                rows.append([f"{', '.join(setting)}: {name}", f"{seconds:.0f}",
                             *(f"{v:.3f}" for v in probe(*data))])
    print(f"machine: {machine_line(torch.device('cpu'))}")
    print(f"demo pretraining (configs/demo.yaml) with one setting changed{' (--quick: 1 epoch)' if args.quick else ''};"
          f" features of the 359 held-out digits")
    print()
    print(markdown_table(["setting: features", "pretrain s", f"1-NN, {PER_CLASS}/class",
                          f"logistic, {PER_CLASS}/class", "logistic, all labels"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
