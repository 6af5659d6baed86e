"""Labels from annotation: ``--labels FILE.csv`` of path,label rows labels images of an unlabeled folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from simclrv2.cli import main
from simclrv2.config import from_mapping
from simclrv2.data import open_images
from simclrv2.data.splits import open_labeled_splits
from simclrv2.errors import UserError
from simclrv2.commands.evaluate import training_eval_split
from simclrv2.models.checkpoints import read_trained
from simclrv2.stages.finetune import FinetuneConfig


@pytest.fixture
def unlabeled(tmp_path):
    """24 images in one folder, no class folders; the 'true' class of image k is k % 3."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(24):
        tone = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]][k % 3], np.uint8)
        pixels = np.clip(tone + rng.integers(-20, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{k:02d}.png")
    return folder


NAMES = ["red", "green", "blue"]


def write_csv(path, rows, header=True):
    path.write_text(("path,label\n" if header else "") + "".join(f"{p},{label}\n" for p, label in rows))
    return path


def config(data, labels, **extra):
    return from_mapping(FinetuneConfig, {"from": "x", "data": str(data), "labels": str(labels), "out": "unused",
                                         **extra})


def test_csv_labels_an_unlabeled_folder_and_names_the_classes(unlabeled, tmp_path):
    rows = [(f"img{k:02d}.png", NAMES[k % 3]) for k in range(12)]  # relative to the data folder
    rows[0] = (str(unlabeled / "img00.png"), "red")  # absolute works too
    splits = open_labeled_splits(config(unlabeled, write_csv(tmp_path / "a.csv", rows)),
                                 str(tmp_path / "a.csv"))
    assert splits.labeled.class_names == ["blue", "green", "red"]
    assert [splits.labeled.describe(i).rsplit("/", 1)[1] for i in range(12)] == [f"img{k:02d}.png" for k in range(12)]
    assert [splits.labeled.class_names[c] for c in splits.labeled.labels] == [NAMES[k % 3] for k in range(12)]
    assert len(splits.unlabeled) == 12 and (splits.unlabeled.labels == -1).all()
    assert splits.holdout is None


def test_paths_relative_to_the_csvs_folder_work(unlabeled, tmp_path):
    sub = tmp_path / "notes"
    sub.mkdir()
    rows = [(f"../photos/img{k:02d}.png", NAMES[k % 3]) for k in range(6)]
    splits = open_labeled_splits(config(unlabeled, write_csv(sub / "b.csv", rows)), str(sub / "b.csv"))
    assert len(splits.labeled) == 6


@pytest.mark.parametrize("rows, fragment", [
    ([("img00.png", "red"), ("nope.png", "blue")], "1 file(s) not found in data"),
    ([("img00.png", "red"), ("img01.png", "blue"), ("./img00.png", "red")], "more than once (img00.png)"),
    ([("img00.png", "red"), ("img01.png", "red")], "a single class (red)"),
    ([("img00.png", "red"), ("img01.png", "")], "have no label (first on line 3)"),
    ([("../outside.png", "red"), ("img01.png", "blue")], "outside data"),
])
def test_bad_annotation_files_are_one_line_errors(unlabeled, tmp_path, rows, fragment):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "outside.png")
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(UserError) as info:
        open_labeled_splits(config(unlabeled, path), str(path))
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_holdout_comes_from_the_annotated_images_and_evaluate_finds_it_again(unlabeled, tmp_path, tiny_pretrained):
    path = write_csv(tmp_path / "a.csv", [(f"img{k:02d}.png", NAMES[k % 3]) for k in range(18)])
    splits = open_labeled_splits(config(unlabeled, path, holdout=0.34), str(path))
    assert len(splits.holdout) == 6 and len(splits.labeled) == 12
    assert set(splits.holdout.labels.tolist()) == {0, 1, 2} and len(splits.unlabeled) == 6
    out = tmp_path / "tuned"
    assert main(["finetune", "--from", str(tiny_pretrained), "--data", str(unlabeled), "--labels", str(path),
                 "--holdout", "0.34", "--epochs", "1", "--image-size", "16", "--workers", "0", "--out", str(out),
                 "--no-tensorboard", "--device", "cpu"]) == 0
    record = read_trained(out / "model.pt").record
    assert record.class_names == ["blue", "green", "red"] and record.held_out.annotations == str(path)
    again = training_eval_split(record, str(out / "model.pt"))
    assert sorted(again.paths) == sorted(splits.holdout.paths)
    assert json.loads((out / "result.json").read_text())["labeled_images"] == 12
    assert main(["evaluate", "--model", str(out / "model.pt"), "--device", "cpu", "--workers", "0"]) == 0


def test_eval_data_must_have_the_annotated_classes(unlabeled, tmp_path):
    path = write_csv(tmp_path / "a.csv", [(f"img{k:02d}.png", NAMES[k % 3]) for k in range(6)])
    other = tmp_path / "eval"
    for name in ("cat", "dog"):
        (other / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(other / name / "x.png")
    with pytest.raises(UserError, match="label the same classes in both"):
        open_labeled_splits(config(unlabeled, path, eval_data=str(other)), str(path))


def test_class_folders_of_the_data_are_replaced_by_the_files_labels(tmp_path):
    folder = tmp_path / "data"
    for k in range(6):
        (folder / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 20 * k, np.uint8)).save(folder / f"c{k % 2}" / f"{k}.png")
    images = open_images(str(folder), labeled=True)
    path = write_csv(tmp_path / "a.csv", [(images.describe(i), "yes" if i < 3 else "no") for i in range(6)])
    splits = open_labeled_splits(config(folder, path), str(path))
    assert splits.labeled.class_names == ["no", "yes"]


def test_selection_csv_with_a_label_column_added_by_an_annotator(unlabeled, tmp_path):
    path = tmp_path / "selection.csv"
    path.write_text("path,cluster,score,rank,label\n" + "".join(
        f"{unlabeled / f'img{k:02d}.png'},{k},0.5,{k + 1},{NAMES[k % 3]}\n" for k in range(6)))
    splits = open_labeled_splits(config(unlabeled, path), str(path))
    assert [splits.labeled.class_names[c] for c in splits.labeled.labels] == [NAMES[k % 3] for k in range(6)]
    path.write_text("path,cluster,label\n" + f"{unlabeled / 'img00.png'},1\n")
    with pytest.raises(UserError, match="2 fields under a header of 3"):
        open_labeled_splits(config(unlabeled, path), str(path))
