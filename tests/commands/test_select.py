"""``simclrv2 select``: outputs, no labels seen, exact budgets, rounds of labeling, the --labels round trip."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from simclrv2.cli import main
from simclrv2.config import from_mapping
from simclrv2.data import ImageSet, holdout_split, open_images
from simclrv2.data.splits import open_labeled_splits
from simclrv2.commands import select as command
from simclrv2.commands.select import run_selection
from simclrv2.stages.finetune import FinetuneConfig


def lines(path):
    return path.read_text().splitlines()


def selected_indices(path, images):
    index = {images.describe(i): i for i in range(len(images))}
    return [index[line] for line in lines(path)]


@pytest.fixture(scope="module")
def round_one(tiny_pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("select") / "round1"
    summary = run_selection(str(tiny_pretrained), "digits", "20", out, "typiclust", seed=0, holdout=0.2,
                            workers=0, device="cpu")
    return out, summary


def test_outputs(round_one):
    out, summary = round_one
    assert len(lines(out / "selected.txt")) == 20 == summary["budget"] == summary["selected"]
    rows = list(csv.DictReader(open(out / "selection.csv")))
    assert [r["rank"] for r in rows] == [str(k) for k in range(1, 21)]
    assert [r["path"] for r in rows] == lines(out / "selected.txt")
    assert all(r["cluster"] != "" and float(r["score"]) > 0 for r in rows)
    for name in ("contact_sheet.png", "map.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 100
    assert np.load(out / "features.npy").shape[0] == 1797
    assert json.loads((out / "selection.json").read_text())["method"] == "typiclust"


def test_selected_txt_round_trips_through_labels_and_avoids_the_held_out_images(round_one):
    out, _ = round_one
    images = open_images("digits", labeled=True)
    want = sorted(selected_indices(out / "selected.txt", images))
    _, held = holdout_split(images.labels, 0.2, 0)
    assert not np.isin(want, held).any()
    cfg = from_mapping(FinetuneConfig, {"from": "x", "data": "digits", "holdout": 0.2, "seed": 0,
                                        "labels": str(out / "selected.txt"), "out": "unused"})
    splits = open_labeled_splits(cfg, cfg.labels)
    assert splits.chosen.tolist() == want
    np.testing.assert_array_equal(splits.labeled.labels, images.labels[want])


def test_the_selection_never_sees_labels(tiny_pretrained, tmp_path, monkeypatch):
    seen = []
    real_embed = command.embed_checkpoint

    def spy(model, images, *args, **kwargs):
        seen.append(images)
        return real_embed(model, images, *args, **kwargs)

    monkeypatch.setattr(command, "embed_checkpoint", spy)
    digits = open_images("digits", labeled=True)
    shuffled = ImageSet(None, digits.arrays, np.random.default_rng(0).permutation(digits.labels),
                        ["z" + n for n in digits.class_names], "digits")
    outs = []
    for k, data in enumerate([digits, shuffled]):
        monkeypatch.setattr(command, "open_images", lambda spec, labeled, data=data: data)
        outs.append(tmp_path / str(k))
        run_selection(str(tiny_pretrained), "digits", "15", outs[-1], "typiclust", seed=1, workers=0,
                      device="cpu", figures_on=False)
    assert all((s.labels == -1).all() and s.class_names == [] for s in seen)
    assert lines(outs[0] / "selected.txt") == lines(outs[1] / "selected.txt")
    assert "label" not in (outs[0] / "index.csv").read_text().split("\n", 1)[1]


def test_same_seed_same_selection(tiny_pretrained, round_one, tmp_path):
    out, _ = round_one
    run_selection(str(tiny_pretrained), "digits", "20", tmp_path, "typiclust", seed=0, holdout=0.2, workers=0,
                  device="cpu", figures_on=False)
    assert lines(tmp_path / "selected.txt") == lines(out / "selected.txt")


@pytest.mark.parametrize("method", ["typiclust", "probcover", "kcenter", "random"])
def test_next_round_never_reselects_a_labeled_image(tiny_pretrained, round_one, tmp_path, method):
    out, _ = round_one
    before = lines(out / "selected.txt")
    run_selection(str(tiny_pretrained), "digits", "10%", tmp_path, method, labeled=str(out / "selected.txt"),
                  seed=0, holdout=0.2, workers=0, device="cpu", figures_on=False)
    after = lines(tmp_path / "selected.txt")
    new = [r["path"] for r in csv.DictReader(open(tmp_path / "selection.csv"))]
    assert after[:20] == before and after[20:] == new
    assert len(new) == round(0.1 * (1438 - 20)) and not set(new) & set(before) and len(set(new)) == len(new)


def test_labeled_csv_from_annotation_is_accepted_as_the_earlier_round(tiny_pretrained, round_one, tmp_path):
    out, _ = round_one
    annotated = tmp_path / "annotated.csv"
    annotated.write_text("path,label\n" + "".join(f"{p},x\n" for p in lines(out / "selected.txt")))
    run_selection(str(tiny_pretrained), "digits", "5", tmp_path / "o", labeled=str(annotated), seed=0,
                  holdout=0.2, workers=0, device="cpu", figures_on=False)
    assert lines(tmp_path / "o" / "selected.txt")[:20] == lines(out / "selected.txt")


@pytest.mark.parametrize("extra, fragment", [
    (["--budget", "1439"], "more than the 1438 images"),
    (["--budget", "ten"], "--budget 'ten'"),
    (["--budget", "5", "--labeled", "nowhere.txt"], "nowhere.txt does not exist"),
    (["--budget", "5", "--holdout", "1.5"], "--holdout 1.5"),
])
def test_bad_input_is_a_one_line_error(tiny_pretrained, tmp_path, capsys, extra, fragment):
    argv = ["select", "--from", str(tiny_pretrained), "--data", "digits", "--out", str(tmp_path / "o"),
            "--holdout", "0.2", "--workers", "0", "--device", "cpu", "--no-figures", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1, err


def test_labeled_images_that_are_held_out_are_an_error(tiny_pretrained, tmp_path, capsys):
    images = open_images("digits", labeled=True)
    _, held = holdout_split(images.labels, 0.2, 0)
    (tmp_path / "labeled.txt").write_text(f"digits[{held[0]}]\n")
    argv = ["select", "--from", str(tiny_pretrained), "--data", "digits", "--out", str(tmp_path / "o"), "--budget",
            "5", "--holdout", "0.2", "--labeled", str(tmp_path / "labeled.txt"), "--workers", "0", "--device", "cpu"]
    assert main(argv) == 2
    assert "holds out" in capsys.readouterr().err
