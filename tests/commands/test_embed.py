"""``simclrv2 embed`` (``simclrv2.commands.embed``): features of every image, in order, from any checkpoint."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import save_random_model
from simclrv2.cli import main
from simclrv2.data import open_images
from simclrv2.data.loader import preprocess
from simclrv2.commands.embed import embed_checkpoint, share
from simclrv2.errors import UserError
from simclrv2.metrics import eval_crop_fraction
from simclrv2.models import classifier_config
from simclrv2.models.checkpoints import load_model


def reference(path, images, layer: int) -> np.ndarray:
    """Each image preprocessed on its own and the network run in float64."""
    model, record = load_model(path)
    size = record.image_size
    x = torch.stack([torch.from_numpy(preprocess(images.load(i), "eval", size, eval_crop_fraction(size))[0])
                     for i in range(len(images))]).double() / 255
    model.double()
    with torch.no_grad():
        h = model.encoder(x)
        layers = model.projection_head.layers if hasattr(model, "projection_head") else model.head_layers
        for block in list(layers)[:layer]:
            h = block(h)
    return h.numpy()


@pytest.mark.parametrize("layer", [0, 1, 3])
def test_features_equal_the_models_features(tiny_pretrained, layer):
    images = open_images("digits", labeled=False).subset(np.arange(0, 300, 3))
    got = embed_checkpoint(str(tiny_pretrained), images, layer, batch_size=32, workers=0, device="cpu")
    assert got.features.dtype == np.float32 and got.ok.all()
    np.testing.assert_allclose(got.features, reference(tiny_pretrained, images, layer), rtol=1e-4, atol=1e-4)


def test_classifier_checkpoints_embed_up_to_their_head_layer(tmp_path):
    config = classifier_config("r18_0.125x_sk0", 10, head_layer=1, small_images=True)
    path = save_random_model(tmp_path / "finetuned.pt", config, class_names=[str(i) for i in range(10)])
    images = open_images("digits", labeled=False).subset(np.arange(20))
    got = embed_checkpoint(str(path), images, 1, workers=0, device="cpu")
    np.testing.assert_allclose(got.features, reference(path, images, 1), rtol=1e-4, atol=1e-4)
    with pytest.raises(UserError, match="--layer 2: .* keeps 1 layer"):
        embed_checkpoint(str(path), images, 2, workers=0, device="cpu")


def test_cli_writes_features_and_index_with_a_nan_row_for_an_unreadable_image(tiny_pretrained, tmp_path):
    data = tmp_path / "photos"
    for k, name in enumerate(["cats/a.png", "cats/b.png", "dogs/c.png", "dogs/d.png"]):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((20, 24, 3), 40 * k, np.uint8)).save(data / name)
    (data / "dogs" / "d.png").write_bytes(b"not a png")
    out = tmp_path / "emb"
    assert main(["embed", "--from", str(tiny_pretrained), "--data", str(data), "--out", str(out),
                 "--workers", "0", "--device", "cpu"]) == 0
    features = np.load(out / "features.npy", allow_pickle=False)
    rows = list(csv.DictReader(open(out / "index.csv")))
    assert features.shape[0] == len(rows) == 4
    assert [r["label"] for r in rows] == ["cats", "cats", "dogs", "dogs"]
    assert rows[3]["path"].endswith("d.png") and rows[3]["error"] and np.isnan(features[3]).all()
    assert np.isfinite(features[:3]).all() and not any(r["error"] for r in rows[:3])


def test_cli_errors_are_one_line(tiny_pretrained, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for args, fragment in [(["--out", str(tmp_path / "file")], "is a file"),
                           (["--out", str(tmp_path / "o"), "--layer", "9"], "--layer 9"),
                           (["--out", str(tmp_path / "o"), "--from", str(tmp_path / "none.pt")], "none.pt")]:
        argv = ["embed", "--from", str(tiny_pretrained), "--data", "digits", "--workers", "0", "--device", "cpu"]
        assert main(argv + args) == 2
        err = capsys.readouterr().err
        assert fragment in err and len(err.strip().splitlines()) == 1, err


def test_shares_cover_every_row_once():
    for n in (0, 1, 7, 100):
        for world in (1, 2, 3, 8):
            rows = [r for k in range(world) for r in range(*share(n, k, world))]
            assert rows == list(range(n))


def test_torchrun_two_processes_write_the_same_features_as_one(tiny_pretrained, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["-m", "simclrv2", "embed", "--from", str(tiny_pretrained), "--data", "digits", "--workers", "0",
            "--device", "cpu", "--batch-size", "500"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *args, "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(args[2:] + ["--out", str(tmp_path / "one")]) == 0
    two, one = np.load(tmp_path / "two" / "features.npy"), np.load(tmp_path / "one" / "features.npy")
    assert two.shape == (1797, one.shape[1])
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-5)
