"""``simclrv2 views`` (``simclrv2.commands.views``): the pixels pretraining's first step augments, as PNGs."""

from __future__ import annotations

import ast
import csv
import inspect
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simclrv2.cli import main
from simclrv2.commands import views as views_module
from simclrv2.commands.views import VIEW_OPTIONS, draw_views, write_views
from simclrv2.config import DataOptions, validate
from simclrv2.stages.configs import PretrainConfig

DIGITS = ["--data", "digits", "--image-size", "16", "--n", "4", "--device", "cpu"]


def run(out: Path, *extra: str) -> int:
    return main(["views", *DIGITS, "--out", str(out), *extra])


def rows(out: Path) -> list[dict]:
    with open(out / "views.csv", newline="") as f:
        return list(csv.DictReader(f))


def pixels(path: Path) -> np.ndarray:
    image = Image.open(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def written(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.fixture(scope="module")
def digits_views(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("views") / "seed0"
    assert run(out) == 0
    return out


def test_the_pngs_are_the_views_a_real_pretraining_step_draws(tmp_path):
    import torch

    from simclrv2.data.loader import Loader
    from simclrv2.distributed import single_process
    from simclrv2.engine.loop import step_generator
    from simclrv2.engine.stage import StepSettings
    from simclrv2.stages import pretrain

    # 36 px: every operation runs (crop, flip, colour at s = 1, blur with a 3-pixel kernel); a held-out
    # part, a batch larger than --n, another seed
    options = dict(data="digits", image_size=36, holdout=0.1, seed=3, color_strength=1.0, blur="on", device="cpu")
    out = tmp_path / "views"
    assert main(["views", "--out", str(out), "--n", "4", "--batch-size", "8",
                 *[f"--{k.replace('_', '-')}={v}" for k, v in options.items()]]) == 0

    cfg = validate(PretrainConfig(**options, out=str(tmp_path / "run"), model="r18_0.125x_sk0", batch_size=8,
                                  knn_monitor=False, workers=0))
    runtime = single_process("cpu")
    parts = pretrain.build(cfg, runtime, StepSettings.of(cfg, runtime))
    loader = Loader(parts.train_images, "train", cfg.resolved_load_size(), cfg.batch_size, runtime,  # as the engine
                    seed=cfg.seed, workers=cfg.workers, cache=cfg.cache, strict=cfg.strict_data)
    batch = next(iter(loader.epoch(0)))
    with torch.no_grad():
        both = parts.step.views(batch, step_generator(cfg.seed, 0, runtime.rank, runtime.device)).float()
    expected = {"a": both[:8][:4], "b": both[8:][:4]}
    table = rows(out)
    assert [r["source"] for r in table] == [parts.train_images.describe(int(i)) for i in batch.indices[:4]]
    for which, views in expected.items():
        got = np.stack([pixels(out / r[f"view_{which}"]) for r in table]).transpose(0, 3, 1, 2) / 255.0
        assert got.shape == (4, 3, 36, 36)
        # the stated rounding: round(255 v), so at most half a grey level from the view
        assert np.abs(got - views.numpy()).max() <= 0.5 / 255 + 1e-6
    assert not np.array_equal(pixels(out / table[0]["view_a"]), pixels(out / table[0]["view_b"]))


def test_the_same_seed_gives_the_same_files_and_another_seed_others(digits_views, tmp_path):
    assert run(tmp_path / "again") == 0
    assert written(tmp_path / "again") == written(digits_views)
    assert run(tmp_path / "other", "--seed", "1") == 0
    other = written(tmp_path / "other")
    assert other.keys() == written(digits_views).keys()
    assert all(other[name] != data for name, data in written(digits_views).items() if name.endswith(".png"))


def test_pngs_round_trip_losslessly_at_the_training_size(tmp_path):
    cfg = validate(PretrainConfig(data="digits", out="unused", image_size=20, device="cpu"))
    views = draw_views(cfg, 3)
    assert views.a.dtype == np.uint8 and views.a.shape == (3, 20, 20, 3)
    out = write_views(views, tmp_path / "views")
    table = rows(out)
    assert [(r["i"], r["view_a"], r["view_b"]) for r in table] == [(str(i), f"{i}_a.png", f"{i}_b.png")
                                                                     for i in range(3)]
    for i, r in enumerate(table):
        assert np.array_equal(pixels(out / r["view_a"]), views.a[i])
        assert np.array_equal(pixels(out / r["view_b"]), views.b[i])
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.mode == "RGB" and sheet.width > 2 * 96  # pairs side by side, small views blown up


def test_a_folder_of_png_and_jpeg_photos(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "photos"
    data.mkdir()
    for k, (h, w) in enumerate([(40, 60), (64, 32), (50, 50), (30, 90), (45, 41)]):
        y, x = np.mgrid[0:h, 0:w]
        image = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 40 * k)], -1) + rng.integers(0, 30, (h, w, 3))
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(data / f"photo{k}.{'png' if k % 2 else 'jpg'}")
    out = tmp_path / "views"
    # --n beyond the 5 images: all of them
    assert main(["views", "--data", str(data), "--out", str(out), "--image-size", "24", "--device", "cpu"]) == 0
    table = rows(out)
    assert sorted(Path(r["source"]).name for r in table) == sorted(p.name for p in data.iterdir())
    for r in table:
        assert pixels(out / r["view_a"]).shape == pixels(out / r["view_b"]).shape == (24, 24, 3)
    assert (out / "contact_sheet.png").is_file()


@pytest.mark.parametrize("extra, fragment", [
    (["--data", "no/such/folder"], "no/such/folder"),
    (["--image-size", "4"], "'image_size' must be >= 8"),
    (["--n", "8", "--batch-size", "4"], "--batch-size 4 is smaller than --n 8"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, fragment):
    out = tmp_path / "views"
    assert run(out, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no temporary folder left either


def test_an_existing_out_needs_overwrite_and_only_views_are_replaced(digits_views, tmp_path, capsys):
    out = tmp_path / "views"
    assert run(out) == 0
    before = written(out)
    capsys.readouterr()
    assert run(out, "--seed", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not empty: pass --overwrite" in err[0]
    assert written(out) == before
    assert run(out, "--seed", "1", "--overwrite") == 0
    assert written(out) != before and sorted(p.name for p in tmp_path.iterdir()) == ["views"]

    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("mine")
    assert run(other, "--overwrite") == 2
    assert "not a views folder" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["thesis.tex"]
    (tmp_path / "file").write_text("x")
    assert run(tmp_path / "file") == 2
    assert "is a file" in capsys.readouterr().err


def test_a_failure_leaves_the_earlier_views_and_no_half_written_folder(digits_views, tmp_path, monkeypatch):
    out = tmp_path / "views"
    assert run(out) == 0
    before = written(out)

    def broken(views):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(views_module, "contact_sheet", broken)
    assert run(out, "--seed", "1", "--overwrite") == 2
    assert written(out) == before
    assert run(tmp_path / "new") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["views"]


def test_every_option_that_shapes_the_views_is_a_flag():
    """The fields augment_config() and the load size read are all in VIEW_OPTIONS."""
    read = set()
    for function in (PretrainConfig.augment_config, DataOptions.resolved_load_size):
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        read |= {node.attr for node in ast.walk(tree)
                 if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"}
    fields = {f.name for f in __import__("dataclasses").fields(PretrainConfig)}
    assert read & fields and read & fields <= set(VIEW_OPTIONS)
    assert set(VIEW_OPTIONS) <= fields
