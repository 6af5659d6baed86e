"""Label Studio files without a server: the exports a real Label Studio 1.23.2 wrote (in
label_studio_1.23.2/: JSON, JSON with the unannotated tasks, JSON-min, CSV of one project: image i0
labeled 'a'; i1 'b' by user 1 then 'a' by user 2; i2 skipped with a non-empty result; i3 not annotated),
and the tasks and labelling config ``select --label-studio`` writes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simclrv2.config import from_mapping
from simclrv2.data import open_images
from simclrv2.data.annotations import listed_indices
from simclrv2.data.label_studio import export_labels, is_export, labeling_config, make_tasks, read_export
from simclrv2.data.splits import open_labeled_splits
from simclrv2.errors import UserError
from simclrv2.stages.finetune import FinetuneConfig

SAVED = Path(__file__).parent / "label_studio_1.23.2"
EXPORTS = ["export.json", "export_all_tasks.json", "export_min.json", "export.csv"]


@pytest.fixture
def imgs(tmp_path):
    """The four images of the saved project, where its tasks' local-file URLs (?d=imgs/iK.png) point."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(4):
        Image.fromarray(np.full((8, 8, 3), 60 * k, np.uint8)).save(folder / f"i{k}.png")
    return folder


@pytest.mark.parametrize("name", EXPORTS)
def test_real_exports_skip_cancelled_and_unannotated_tasks_and_settle_by_rule(imgs, name):
    images = open_images(str(imgs), labeled=False)
    assert is_export(SAVED / name)
    with pytest.raises(UserError, match=r"annotators disagree on .*i1.png \(.*\): .*--label-conflicts") as info:
        export_labels(images, SAVED / name)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="i1.png has a tie"):
        export_labels(images, SAVED / name, "majority")
    found = export_labels(images, SAVED / name, "latest")
    assert [Path(images.describe(i)).name for i in found.items] == ["i0.png", "i1.png"]
    assert found.labels == ["a", "a"]  # i1: user 2's later 'a' over user 1's 'b'
    # the skipped task (was_cancelled, result not empty) is never a label; JSON keeps it as seen
    assert [Path(images.describe(i)).name for i in found.skipped] == (["i2.png"] if "json" in name and "min"
                                                                       not in name else [])


def test_unknown_fields_are_ignored_and_majority_settles(imgs, tmp_path):
    tasks = json.loads((SAVED / "export.json").read_text())
    extra = json.loads(json.dumps(tasks[1]["annotations"][0]))
    extra.update(id=99, completed_by=3, something_new={"x": 1})
    extra["result"][0]["value"]["choices"] = ["b"]
    tasks[1]["annotations"].append(extra)
    tasks[1]["brand_new_field"] = [1, 2]
    (tmp_path / "three.json").write_text(json.dumps(tasks))
    found = export_labels(open_images(str(imgs), labeled=False), tmp_path / "three.json", "majority")
    assert found.labels == ["a", "b"]


def test_finetune_splits_and_select_read_an_export(imgs):
    cfg = from_mapping(FinetuneConfig, {"from": "x", "data": str(imgs), "labels": str(SAVED / "export.json"),
                                        "label_conflicts": "latest", "out": "unused"})
    with pytest.raises(UserError, match="1 class"):  # i0 and i1 are both 'a' by the latest rule
        open_labeled_splits(cfg, cfg.labels)
    cfg.label_conflicts = "error"
    with pytest.raises(UserError, match="annotators disagree"):
        open_labeled_splits(cfg, cfg.labels)
    images = open_images(str(imgs), labeled=False)
    seen = listed_indices(images, SAVED / "export.json", "--labeled")
    assert [Path(images.describe(i)).name for i in seen] == ["i0.png", "i1.png", "i2.png"]


def test_images_not_in_the_data_are_one_line_errors(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(other / "x.png")
    with pytest.raises(UserError, match="not found in data") as info:
        export_labels(open_images(str(other), labeled=False), SAVED / "export_min.json", "latest")
    assert "\n" not in str(info.value)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="is not valid JSON"):
        read_export(tmp_path / "bad.json")


def test_a_plain_path_label_csv_is_not_taken_for_an_export(tmp_path):
    (tmp_path / "labels.csv").write_text("path,label\na.png,x\n")
    assert not is_export(tmp_path / "labels.csv")


def test_tasks_and_config_are_what_label_studio_imports(imgs, tmp_path):
    config = labeling_config(["cat", 'say "hi" & <bye>'])
    root = ET.fromstring(config)
    assert [c.get("value") for c in root.iter("Choice")] == ["cat", 'say "hi" & <bye>']
    assert root.find("Choices").get("name") == "label" and root.find("Image").get("value") == "$image"
    paths = [str(imgs / "i1.png"), str(imgs / "i0.png")]
    tasks = make_tasks(paths, tmp_path, 2, [("cat", 0.25), ("dog", 0.75)], "ft.pt")
    assert tasks[0]["data"] == {"image": "/data/local-files/?d=imgs/i1.png", "path": paths[0], "round": 2,
                                "guess": "cat"}
    assert tasks[1]["predictions"][0] == {"model_version": "ft.pt", "score": 0.75, "result": [
        {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["dog"]}}]}
    with pytest.raises(UserError, match="not under the Label Studio document root"):
        make_tasks(paths, imgs / "elsewhere")
    with pytest.raises(UserError, match="at least two class names"):
        labeling_config(["only"])
