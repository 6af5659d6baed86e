"""The Loader with unreadable images: training batches keep their size on every process."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from simclrv2.data import open_images
from simclrv2.data.loader import Loader
from simclrv2.distributed import Runtime
from simclrv2.errors import UserError


def mostly_corrupt(folder, good: int, bad: int) -> None:
    """``good`` readable PNGs, each one flat colour (its index), and ``bad`` empty .jpg files."""
    folder.mkdir()
    for i in range(good):
        Image.fromarray(np.full((8, 8, 3), 10 * (i + 1), dtype=np.uint8)).save(folder / f"good_{i}.png")
    for i in range(bad):
        (folder / f"bad_{i:02d}.jpg").write_bytes(b"")


def runtime(rank: int = 0, world_size: int = 1) -> Runtime:
    return Runtime(rank, world_size, rank, torch.device("cpu"))


def test_training_batches_keep_their_size_with_copies_of_readable_images(tmp_path, caplog):
    mostly_corrupt(tmp_path / "imgs", good=4, bad=60)
    images = open_images(str(tmp_path / "imgs"), labeled=False)
    for world_size in (1, 2):
        loader = Loader(images, "train", 8, global_batch=16, runtime=runtime(world_size - 1, world_size),
                        workers=0, cache="off")
        batches = list(loader.epoch(0))
        assert len(batches) == len(loader) == 4
        good = {i for i, p in enumerate(images.paths) if "good_" in p}
        for batch in batches:
            assert batch.images.shape == (16 // world_size, 3, 8, 8)
            assert set(batch.indices.tolist()) <= good  # substitutes and copies are readable images only
            for image, index in zip(batch.images, batch.indices.tolist()):  # each row is the image it names
                name = images.paths[index].rsplit("good_", 1)[1]
                assert int(image[0, 0, 0]) == 10 * (int(name.split(".")[0]) + 1)
    assert any("skipping unreadable image" in r.getMessage() for r in caplog.records)


def test_evaluation_leaves_unreadable_images_out(tmp_path):
    mostly_corrupt(tmp_path / "imgs", good=4, bad=60)
    images = open_images(str(tmp_path / "imgs"), labeled=False)
    loader = Loader(images, "eval", 8, global_batch=16, runtime=runtime(), shuffle=False, drop_last=False,
                    workers=0, cache="off")
    indices = [i for batch in loader.epoch(0) for i in batch.indices.tolist()]
    assert len(indices) <= 64 and len(set(indices)) <= 4  # no copies padded in (substitutes may repeat)


def test_a_whole_unreadable_batch_under_several_processes_is_a_one_line_error(tmp_path, monkeypatch):
    mostly_corrupt(tmp_path / "imgs", good=1, bad=15)
    images = open_images(str(tmp_path / "imgs"), labeled=False)
    good = images.paths.index(next(p for p in images.paths if "good_" in p))
    original = images.load

    def nothing_readable(i, *args, **kwargs):  # the one good image fails too
        return original(i if i != good else (good + 1) % len(images), *args, **kwargs)

    monkeypatch.setattr(images, "load", nothing_readable)
    loader = Loader(images, "train", 8, global_batch=8, runtime=runtime(0, 2), workers=0, cache="off")
    with pytest.raises(UserError, match="no image of a whole batch"):
        list(loader.epoch(0))
    alone = Loader(images, "train", 8, global_batch=8, runtime=runtime(), workers=0, cache="off")
    assert list(alone.epoch(0)) == []  # one process: the empty batch is skipped, as before
