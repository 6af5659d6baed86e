"""The random crop of SimCLR's augmentation: where the box lies, and its pixels at the training size.

The official ``crop_and_resize`` (``data_util.py``) draws the box with TensorFlow's
``sample_distorted_bounding_box`` on the decoded full-resolution image (area_range (0.08, 1),
aspect_ratio_range (3/4, 4/3), min_object_covered 0.1, max_attempts 100) and resizes the crop's
source pixels to the training size with a bicubic kernel. TF's sampler
(``tensorflow/core/kernels/image/sample_distorted_bounding_box_op.cc``) is not the area-uniform
draw of torchvision's ``RandomResizedCrop``: per attempt it draws the aspect ratio r uniformly,
then the crop's *height* as a uniform integer between the heights the area range allows, the
width as round(h r); it rejects a box covering less than ``min_object_covered`` of the image and
falls back to the whole image after ``max_attempts``. Its offsets are uniform integers in
[0, H - h) (the last row is only reached by a full-height crop). ``sample_boxes`` draws exactly
that distribution, batched and in float64 (TF computes in float32: a box can differ where a
rounding lands on .5, a set of draws of measure zero in practice); tests/test_crops.py checks it
draw for draw against a scalar float64 transcription of the kernel and by a two-sample test.

``crop_pixels`` cuts each box out of a decoded full-resolution image and resizes it (the data
loader's workers, ``data.loader``); ``resized_crop`` resamples the boxes of a batch of images cached at
their own resolution with one ``grid_sample`` on the device (``augment``). Both are bicubic with
PyTorch's kernel (a = -0.75, where TF's has a = -0.5), without antialiasing as TF's, and both take
source pixels, never a downscaled copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The official crop_and_resize's settings (SPEC "Augmentations" 1).
AREA_RANGE = (0.08, 1.0)
RATIO_RANGE = (3 / 4, 4 / 3)
MIN_OBJECT_COVERED = 0.1
MAX_ATTEMPTS = 100
_EPS = 1e-7  # the kernel's kEps


def min_covered_for(area_low: float) -> float:
    """``min_object_covered`` for a crop area range starting at ``area_low``: the official 0.1 at the
    official 0.08, scaled with a lower bound below it (so that ``--crop-min-area 0.02`` can draw the
    small crops it asks for), never above 0.1."""
    return min(MIN_OBJECT_COVERED, area_low * MIN_OBJECT_COVERED / AREA_RANGE[0])


def sample_boxes(height: torch.Tensor, width: torch.Tensor, generator: torch.Generator,
                 area: tuple[float, float] = AREA_RANGE, ratio: tuple[float, float] = RATIO_RANGE,
                 min_covered: float = MIN_OBJECT_COVERED, attempts: int = MAX_ATTEMPTS) -> torch.Tensor:
    """Crop boxes as TF's ``sample_distorted_bounding_box`` draws them, one per image.

    ``height``/``width``: each image's size in pixels, (N,) tensors on the generator's device.
    Returns int64 (N, 4) boxes (top, left, box height, box width) in whole pixels.
    Four draws from ``generator`` per call: aspect ratios (N, attempts), height positions
    (N, attempts), then the top and left offsets (N) of the box kept.
    """
    device = height.device
    H = height.to(torch.float64).view(-1, 1)
    W = width.to(torch.float64).view(-1, 1)
    n = H.shape[0]
    u_ratio = torch.rand((n, attempts), generator=generator, device=device, dtype=torch.float64)
    u_height = torch.rand((n, attempts), generator=generator, device=device, dtype=torch.float64)
    u_top = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    u_left = torch.rand(n, generator=generator, device=device, dtype=torch.float64)

    r = ratio[0] + u_ratio * (ratio[1] - ratio[0])
    min_area, max_area = area[0] * W * H, area[1] * W * H
    h = torch.round(torch.sqrt(min_area / r))
    h_max = torch.round(torch.sqrt(max_area / r))
    # the largest height whose rounded width fits: floor((W + 0.5 - eps) / r), one less if rounding disagrees
    too_wide = torch.round(h_max * r) > W
    fitted = torch.floor((W + 0.5 - _EPS) / r)
    fitted = torch.where(torch.round(fitted * r) > W, fitted - 1, fitted)
    h_max = torch.where(too_wide, fitted, h_max)
    h_max = torch.minimum(h_max, H)
    h = torch.minimum(h, h_max)
    h = h + torch.floor(u_height * (h_max - h + 1))  # a uniform integer in [h, h_max]
    w = torch.round(h * r)
    small = w * h < min_area  # rounding left it below the range: one row taller
    h = torch.where(small, h + 1, h)
    w = torch.where(small, torch.round(h * r), w)
    large = w * h > max_area  # above it: one row shorter
    h = torch.where(large, h - 1, h)
    w = torch.where(large, torch.round(h * r), w)
    a = w * h
    ok = (a >= min_area) & (a <= max_area) & (w <= W) & (h <= H) & (w > 0) & (h > 0)
    ok &= (a >= 1) & (a / (W * H) >= min_covered)  # the box covers enough of the image (the whole image's box)

    found = ok.any(1)
    first = ok.to(torch.int8).argmax(1, keepdim=True)
    h = torch.where(found, h.gather(1, first).squeeze(1), H.squeeze(1))
    w = torch.where(found, w.gather(1, first).squeeze(1), W.squeeze(1))
    top = torch.where(h < H.squeeze(1), torch.floor(u_top * (H.squeeze(1) - h)), 0.0)
    left = torch.where(w < W.squeeze(1), torch.floor(u_left * (W.squeeze(1) - w)), 0.0)
    return torch.stack([top, left, h, w], 1).to(torch.int64)


def normalized(boxes: torch.Tensor, height: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Pixel boxes (top, left, h, w) on images of ``height`` x ``width`` -> (cx, cy, w, h) in [0, 1]."""
    H = height.to(torch.float32)
    W = width.to(torch.float32)
    top, left, h, w = boxes.to(torch.float32).unbind(1)
    return torch.stack([(left + w / 2) / W, (top + h / 2) / H, w / W, h / H], 1)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int,
                 flip: torch.Tensor | None = None) -> torch.Tensor:
    """Crop each image to its box and resize to ``size`` x ``size`` (bicubic), mirroring where ``flip``.

    ``images``: float (N, C, H, W) in [0, 1]; ``boxes``: (N, 4) normalised (cx, cy, w, h) of each
    image's own extent (so an image squashed to a square crops what its original would). One
    ``grid_sample`` does crop, resize and flip for the whole batch; samples outside the image take
    the nearest edge pixel.
    """
    n = images.shape[0]
    cx, cy, w, h = boxes.to(images.dtype).unbind(1)
    sx = w if flip is None else torch.where(flip, -w, w)
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = 2 * cx - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * cy - 1
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    out = F.grid_sample(images, grid, mode="bicubic", padding_mode="border", align_corners=False)
    return out.clamp_(0, 1)


def crop_pixels(array: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """The views of one decoded image: uint8 (H, W, 3) and pixel boxes (V, 4) (top, left, h, w) in its own
    grid -> uint8 (V, 3, size, size).

    As the official ``crop_and_resize`` (``crop_to_bounding_box`` then ``resize``): each box is cut out
    and resized alone (bicubic, its edge pixels extended past the border), from the source pixels.
    Fractional boxes (those of a reduced JPEG decode) are rounded to whole pixels of ``array``. The resize
    is PyTorch's uint8 one (separable, rounded and clamped to 0..255 between its two passes): about ten
    times faster than in float on a CPU core, within 0.25 grey levels on average of a float64 resize on
    photographs (up to a few levels where a sharp edge overshoots; tests/test_crops.py).
    """
    height, width = array.shape[:2]
    views = []
    for top, left, h, w in boxes.tolist():
        y0, x0 = min(max(0, round(top)), height - 1), min(max(0, round(left)), width - 1)
        y1, x1 = min(height, max(y0 + 1, round(top + h))), min(width, max(x0 + 1, round(left + w)))
        region = array[y0:y1, x0:x1].unsqueeze(0).permute(0, 3, 1, 2)  # (1, 3, h, w), a view
        views.append(F.interpolate(region, size=(size, size), mode="bicubic", align_corners=False)[0])
    return torch.stack(views).contiguous()
