"""The random crop against TF's ``sample_distorted_bounding_box``, and its pixels from the source.

``tf_box`` below is a scalar float64 transcription of ``GenerateRandomCrop`` and the attempt loop of
tensorflow/core/kernels/image/sample_distorted_bounding_box_op.cc (with the whole image as the only
bounding box, as the official ``crop_and_resize`` passes), fed with explicit uniform numbers so that it
can be compared with ``crops.sample_boxes`` draw for draw.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from simclrv2.crops import crop_pixels, min_covered_for, normalized, sample_boxes
from simclrv2.data.loader import ImageDataset, Loader, TrainCrops, item_seed, reduced_side
from simclrv2.data.sources import open_images
from simclrv2.distributed import Runtime


def rint(x: float) -> int:
    """lrintf: round half to even (Python's round)."""
    return int(round(x))


def tf_box(H, W, ratios, heights, u_top, u_left, area=(0.08, 1.0), ratio=(0.75, 4 / 3), covered=0.1):
    """One box (top, left, h, w) of the TF kernel; ``ratios``/``heights``: the attempts' uniforms."""
    min_area, max_area = area[0] * W * H, area[1] * W * H
    for u_r, u_h in zip(ratios, heights):
        r = u_r * (ratio[1] - ratio[0]) + ratio[0]
        height = rint(math.sqrt(min_area / r))
        max_height = rint(math.sqrt(max_area / r))
        if rint(max_height * r) > W:
            max_height = int((W + 0.5 - 1e-7) / r)
            if rint(max_height * r) > W:
                max_height -= 1
        max_height = min(max_height, H)
        height = min(height, max_height)
        if height < max_height:
            height += int(u_h * (max_height - height + 1))  # Uniform(n): an integer in [0, n)
        width = rint(height * r)
        if width * height < min_area:
            height += 1
            width = rint(height * r)
        if width * height > max_area:
            height -= 1
            width = rint(height * r)
        if width * height < min_area or width * height > max_area or width > W or height > H \
                or width <= 0 or height <= 0:
            continue
        if width * height < 1 or width * height / (W * H) < covered:  # SatisfiesOverlapConstraints
            continue
        top = int(u_top * (H - height)) if height < H else 0
        left = int(u_left * (W - width)) if width < W else 0
        return top, left, height, width
    return 0, 0, H, W


def uniforms(generator: torch.Generator, n: int, attempts: int = 100):
    """The four draws ``sample_boxes`` makes, in its order."""
    r = torch.rand((n, attempts), generator=generator, dtype=torch.float64)
    h = torch.rand((n, attempts), generator=generator, dtype=torch.float64)
    return r, h, torch.rand(n, generator=generator, dtype=torch.float64), \
        torch.rand(n, generator=generator, dtype=torch.float64)


SHAPES = [(600, 800), (375, 500), (800, 600), (1000, 333), (200, 600), (8, 8), (33, 31), (3, 97), (1, 50), (4000, 3000)]


@pytest.mark.parametrize("H,W", SHAPES)
@pytest.mark.parametrize("area", [(0.08, 1.0), (0.5, 1.0), (0.9, 1.0)])
def test_boxes_equal_the_tf_kernel_draw_for_draw(H, W, area):
    n = 300
    heights, widths = torch.full((n,), H), torch.full((n,), W)
    got = sample_boxes(heights, widths, torch.Generator().manual_seed(H * W), area=area,
                       min_covered=min_covered_for(area[0]))
    r, h, top, left = uniforms(torch.Generator().manual_seed(H * W), n)
    expected = [tf_box(H, W, r[i].tolist(), h[i].tolist(), top[i].item(), left[i].item(), area=area)
                for i in range(n)]
    assert got.dtype == torch.int64
    assert got.tolist() == [list(box) for box in expected]


def test_each_image_of_a_batch_gets_its_own_geometry():
    sizes = torch.tensor([[600, 800], [100, 300], [37, 29], [5, 5]])
    got = sample_boxes(sizes[:, 0], sizes[:, 1], torch.Generator().manual_seed(1))
    r, h, top, left = uniforms(torch.Generator().manual_seed(1), 4)
    for i, (H, W) in enumerate(sizes.tolist()):
        assert got[i].tolist() == list(tf_box(H, W, r[i].tolist(), h[i].tolist(), top[i].item(), left[i].item()))
        t, l, bh, bw = got[i].tolist()
        assert 0 <= t and t + bh <= H and 0 <= l and l + bw <= W


def _tf_areas(H, W, n, seed):
    rng = random.Random(seed)
    boxes = [tf_box(H, W, [rng.random() for _ in range(100)], [rng.random() for _ in range(100)],
                    rng.random(), rng.random()) for _ in range(n)]
    return np.array([b[2] * b[3] / (H * W) for b in boxes]), np.array([b[3] / b[2] for b in boxes])


def test_the_distribution_matches_an_independent_stream_and_rejects_the_area_uniform_draw():
    """Two-sample tests of area and aspect (KS) against the transcription driven by Python's own
    generator; the area-uniform draw of torchvision-style samplers must fail the same test."""
    H, W, n = 600, 800, 4000
    boxes = sample_boxes(torch.full((n,), H), torch.full((n,), W), torch.Generator().manual_seed(7))
    area = (boxes[:, 2] * boxes[:, 3]).double().numpy() / (H * W)
    aspect = (boxes[:, 3] / boxes[:, 2]).double().numpy()
    tf_area, tf_aspect = _tf_areas(H, W, n, seed=11)
    assert stats.ks_2samp(area, tf_area).pvalue > 1e-3
    assert stats.ks_2samp(aspect, tf_aspect).pvalue > 1e-3
    # the SPEC's figures: median area 0.36 on a 4:3 image, never below the 10% cover
    assert abs(np.median(area) - 0.36) < 0.02 and area.min() >= 0.1 - 1e-12
    rng = np.random.default_rng(0)
    uniform_area = rng.uniform(0.08, 1.0, n)  # the area-uniform draw, before its fits/fallback
    assert stats.ks_2samp(uniform_area, tf_area).pvalue < 1e-6


def test_a_long_image_rarely_falls_back_to_the_whole_image():
    n = 2000
    boxes = sample_boxes(torch.full((n,), 300), torch.full((n,), 900), torch.Generator().manual_seed(3))
    whole = ((boxes[:, 2] == 300) & (boxes[:, 3] == 900)).float().mean().item()
    assert whole < 0.005  # 100 attempts (10 attempts of an area-uniform draw: about 3%)


def test_min_covered_is_the_official_value_at_the_official_area_and_scales_below_it():
    assert min_covered_for(0.08) == pytest.approx(0.1)
    assert min_covered_for(0.5) == 0.1
    assert min_covered_for(0.02) == pytest.approx(0.025)


def test_normalized_boxes_cover_the_same_pixels():
    boxes = torch.tensor([[10, 20, 30, 40], [0, 0, 50, 100]])
    cx, cy, w, h = normalized(boxes, torch.tensor([50, 50]), torch.tensor([100, 100])).unbind(1)
    torch.testing.assert_close(cx, torch.tensor([0.4, 0.5]))
    torch.testing.assert_close(cy, torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(w, torch.tensor([0.4, 1.0]))
    torch.testing.assert_close(h, torch.tensor([0.6, 1.0]))


def photo_like(height, width, seed=0):
    g = np.random.default_rng(seed)
    coarse = g.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float64)
    return torch.from_numpy(np.clip(field + g.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8))


def test_crop_pixels_resizes_each_crop_alone_as_tf_does():
    """Each box cut out, then resized (bicubic, edges extended): the float64 reference of that, within
    the uint8 resize's rounding (mean <= 0.3 grey levels, a few at overshoots)."""
    array = photo_like(375, 500)
    boxes = torch.tensor([[0, 0, 375, 500], [10, 5, 31, 40], [60, 100, 300, 280], [3, 7, 20, 17]], dtype=torch.float64)
    got = crop_pixels(array, boxes, 48)
    assert got.shape == (4, 3, 48, 48) and got.dtype == torch.uint8 and got.is_contiguous()
    for view, (top, left, h, w) in zip(got, boxes.int().tolist()):
        crop = array[top:top + h, left:left + w].permute(2, 0, 1).unsqueeze(0).double()
        reference = torch.nn.functional.interpolate(crop, size=(48, 48), mode="bicubic", align_corners=False)
        diff = (view.double() - reference[0].clamp(0, 255).round()).abs()
        assert diff.mean() <= 0.3 and diff.max() <= 6
    # a fractional box (a reduced decode's) is rounded to whole pixels
    assert torch.equal(crop_pixels(array, torch.tensor([[9.6, 5.4, 31.2, 39.8]]), 48)[0], got[1])


def coordinate_image(path, height, width, quality=None):
    """R encodes the column and G the row (255 at the last), B a constant: a view's pixels show which
    source pixels it came from."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, np.full_like(x, 128)], 2).round().astype(np.uint8)
    Image.fromarray(rgb).save(path, **({"quality": quality} if quality else {}))
    return rgb


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_views_come_from_the_source_footprint_of_the_official_box(tmp_path, suffix):
    """A large image's views: the worker draws the official boxes on the full-resolution grid (replayed
    here from the item's seed), decodes a JPEG at most as reduced as keeps every box at the training size
    in decoded pixels, and each view shows exactly its box's region of the source."""
    H, W, size = 1200, 1600, 64
    folder = tmp_path / "data"
    folder.mkdir()
    coordinate_image(folder / f"big.{suffix}", H, W, quality=95 if suffix == "jpg" else None)
    crops = TrainCrops(size, views=2)
    dataset = ImageDataset(open_images(str(folder), labeled=False), "train", size, crops=crops)
    for seed in range(12):
        item = dataset[(0, seed)]
        assert item["image"].shape == (2, 3, size, size) and item["image"].dtype == torch.uint8
        assert item["size"] == (H, W)
        boxes = crops.boxes(H, W, torch.Generator().manual_seed(seed))
        for view, (top, left, h, w) in zip(item["image"].double(), boxes.tolist()):
            # column and row of the view's corners in the source: R and G of the edge pixels
            first_col, last_col = view[0, :, 0].mean() / 255 * (W - 1), view[0, :, -1].mean() / 255 * (W - 1)
            first_row, last_row = view[1, 0, :].mean() / 255 * (H - 1), view[1, -1, :].mean() / 255 * (H - 1)
            step_x, step_y = w / size, h / size  # source pixels per view pixel
            tolerance = 8 + 0.01 * max(w, h)  # an 8-bit ramp over 1600 columns: 6.3 columns per grey level
            assert abs(first_col - (left + step_x / 2 - 0.5)) < tolerance
            assert abs(last_col - (left + w - step_x / 2 - 0.5)) < tolerance
            assert abs(first_row - (top + step_y / 2 - 0.5)) < tolerance
            assert abs(last_row - (top + h - step_y / 2 - 0.5)) < tolerance


@pytest.mark.parametrize("box_side,expected", [(100, None), (128, 1200), (200, 768), (256, 600), (600, 256),
                                               (1200, 128)])
def test_reduced_decode_keeps_the_smallest_box_at_the_training_size(box_side, expected):
    """The shorter side asked of the decode: the image's shorter side scaled so that the box keeps
    ``size`` pixels; None (no reduction) once the box is no larger than the size."""
    side = reduced_side(1200, box_side, 128)
    assert side == (None if box_side <= 128 else expected)
    if side is not None:
        for factor in (1, 2, 4, 8):  # Pillow's draft keeps both sides >= the request
            if math.ceil(1200 / factor) >= side:
                assert box_side * math.ceil(1200 / factor) / 1200 >= 128


def test_reduced_jpeg_decode_is_close_to_the_full_decode(tmp_path):
    """Where the DCT-domain reduction is used (every box >= 2x the size in source pixels), the views
    are those of the full-resolution decode up to the reduction's own smoothing."""
    H, W, size = 1536, 2048, 32
    folder = tmp_path / "data"
    folder.mkdir()
    y, x = np.mgrid[0:H, 0:W]
    smooth = np.stack([128 + 100 * np.sin(x / 90), 128 + 100 * np.cos(y / 70), 128 + 60 * np.sin((x + y) / 150)], 2)
    Image.fromarray(smooth.round().astype(np.uint8)).save(folder / "a.jpg", quality=95)
    decoded = []
    images = open_images(str(folder), labeled=False)
    loaded = images.load

    def load(i, at_least=None):  # records the decoded size (the real decode runs)
        array = loaded(i, at_least)
        decoded.append(array.shape[:2])
        return array

    images.load = load
    crops = TrainCrops(size, views=2, area=(0.5, 1.0))
    dataset = ImageDataset(images, "train", size, crops=crops)
    full = torch.from_numpy(loaded(0))
    assert full.shape == (H, W, 3)
    for seed in range(4):
        item = dataset[(0, seed)]
        assert decoded[-1] == (H // 8, W // 8)  # every box >= 0.5 of the image: 1/8 keeps 32 px
        boxes = crops.boxes(H, W, torch.Generator().manual_seed(seed)).double()
        reference = crop_pixels(full, boxes, size).double()
        assert (item["image"].double() - reference).abs().mean() < 1.5  # the DCT reduction's smoothing


def _folder_of_photos(tmp_path, n=12, H=150, W=200):
    folder = tmp_path / "photos"
    folder.mkdir()
    g = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(g.integers(0, 256, (H + 7 * i, W, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def test_larger_images_are_cropped_by_the_workers_the_same_with_any_worker_count_and_on_resume(tmp_path):
    images = open_images(str(_folder_of_photos(tmp_path)), labeled=False)
    runtime = Runtime(0, 1, 0, torch.device("cpu"))
    crops = TrainCrops(48, views=2)

    def batches(workers, epoch, start=0):
        loader = Loader(images, "train", 55, 4, runtime, seed=3, workers=workers, crops=crops)
        assert loader.cache is None and loader.crops == crops  # 150+ px images > load size 55: not cached
        return [(b.images.clone(), b.sizes.clone(), b.indices.clone()) for b in loader.epoch(epoch, start)]

    alone, two = batches(0, 1), batches(2, 1)
    assert len(alone) == 3 and alone[0][0].shape == (4, 2, 3, 48, 48)
    for (a, sa, ia), (b, sb, ib) in zip(alone, two):
        assert torch.equal(a, b) and torch.equal(sa, sb) and torch.equal(ia, ib)
    resumed = batches(0, 1, start=1)
    for (a, _, _), (b, _, _) in zip(alone[1:], resumed):
        assert torch.equal(a, b)
    other_epoch = batches(0, 2)
    assert not torch.equal(torch.cat([a for a, _, _ in alone]), torch.cat([a for a, _, _ in other_epoch]))
    assert alone[0][1][0].tolist() in [[150.0 + 7 * i, 200.0] for i in range(12)]


def test_small_images_stay_cached_whole_and_are_cropped_on_the_device(tmp_path):
    images = open_images(str(_folder_of_photos(tmp_path, n=6, H=30, W=40)), labeled=False)
    runtime = Runtime(0, 1, 0, torch.device("cpu"))
    loader = Loader(images, "train", 80, 2, runtime, crops=TrainCrops(64, views=2))
    assert loader.cache is not None and loader.crops is None
    batch = next(iter(loader.epoch(0)))
    assert batch.images.shape == (2, 3, 80, 80)
    assert sorted(batch.sizes[:, 1].tolist()) == [40.0, 40.0]


def test_item_seeds_differ_by_position_epoch_and_seed():
    seeds = {item_seed(s, e, p) for s in range(3) for e in range(3) for p in range(50)}
    assert len(seeds) == 450 and all(0 <= s < 2 ** 63 for s in seeds)
