"""SimCLR augmentations as batched tensor ops on the training device.

Chen et al. 2020 (SimCLR, Appendix A) and the official ``data_util.py``: random resized crop
(area [0.08, 1], aspect ratio [3/4, 4/3], bicubic), horizontal flip, colour jitter with p 0.8
(brightness, contrast, saturation, hue at strength s, in a random order per image, clipped to
[0, 1] after each), grayscale with p 0.2, Gaussian blur with p 0.5 (sigma in [0.1, 2], kernel
10% of the image size), pixels in [0, 1] without mean/std normalisation.

The crop is TF's ``sample_distorted_bounding_box`` on the original pixel grid, resampled from
source pixels (``simclrv2.crops``): the loader's workers crop the decoded full-resolution image
and hand over uint8 views, or, for small images cached at their own resolution, the crop is
drawn here. Every random number comes from the ``torch.Generator`` passed in (and, for the
workers' crops, from a generator seeded by (seed, epoch, position)); the training loops seed it
per step, so a resumed run draws the same augmentations as an uninterrupted one.

Deviations from the official TF code, all deliberate: blur draws one sigma per image as the
paper describes (the TF2 code draws one per batch); bicubic resampling uses PyTorch's kernel
(a = -0.75; TF's uses a = -0.5).

Colour jitter (SimCLR Appendix A; ``color_jitter_rand`` in the official ``data_util.py``, which
applies the four operations in a random order, clipping after each) has four evaluations with
the same random draws and the same pixels (``color_jitter``): by subset (CPU default), masked,
fused, and the fused one compiled (CUDA default). The fused one uses that brightness, contrast
and saturation are each ``c + a (x - c)`` with a per-image or per-pixel centre and scale: one
affine pass per position of the order, whatever operation each image drew there, and hue, the
one non-affine operation, in two whole-batch passes, with no host sync and no data-dependent
shape (``fused_color_jitter``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensor

from .crops import AREA_RANGE, RATIO_RANGE, min_covered_for, normalized, resized_crop, sample_boxes

log = logging.getLogger("simclrv2")

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # TF rgb_to_grayscale


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of one augmentation pipeline (see the presets below)."""

    size: int = 224
    crop_area: tuple[float, float] = AREA_RANGE
    crop_ratio: tuple[float, float] = RATIO_RANGE
    flip: bool = True
    color_strength: float = 1.0  # 0 disables colour jitter and grayscale
    color_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5  # 0 disables blur
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    @classmethod
    def pretrain(cls, size: int, **overrides) -> "AugmentConfig":
        """The ImageNet recipe; images of 32 px or less get the CIFAR recipe (s = 0.5, no blur)."""
        base = cls(size=size) if size > 32 else cls(size=size, color_strength=0.5, blur_p=0.0)
        return base.replace(**overrides)

    @classmethod
    def finetune(cls, size: int, **overrides) -> "AugmentConfig":
        """Crop and flip only: fine-tuning, linear evaluation and distillation."""
        return cls(size=size, color_strength=0.0, blur_p=0.0).replace(**overrides)

    def replace(self, **changes) -> "AugmentConfig":
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        fields.update({k: v for k, v in changes.items() if v is not None})
        return AugmentConfig(**fields)


def _uniform(shape, low, high, generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


def _hsv(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) RGB -> hue, saturation, value, each (N, H, W) (see ``rgb_to_hsv``)."""
    r, g, b = rgb.unbind(1)
    # amax/amin: the same values as max(1)/min(1) without the argmax, which is 30x slower on CPU
    v = rgb.amax(1)
    m = rgb.amin(1)
    delta = v - m
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), 0.0)
    safe = delta.clamp_min(1e-12)
    h = torch.where(v == r, (g - b) / safe, torch.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(delta > 0, h.div_(6).remainder_(1.0), 0.0)
    return h, s, v


def _rgb_from_hsv(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Hue, saturation, value (N, H, W) -> (N, 3, H, W) RGB (see ``hsv_to_rgb``)."""
    h6 = h * 6
    vs = v * s
    if torch.compiler.is_compiling():  # out= into a view breaks a traced graph; the compiler fuses the stack
        return torch.stack([v - _chroma(h6, vs, n) for n in (5.0, 3.0, 1.0)], 1)
    out = torch.empty((v.shape[0], 3, *v.shape[1:]), dtype=v.dtype, device=v.device)
    for channel, n in enumerate((5.0, 3.0, 1.0)):
        torch.sub(v, _chroma(h6, vs, n), out=out[:, channel])
    return out


def _chroma(h6: torch.Tensor, vs: torch.Tensor, n: float) -> torch.Tensor:
    """How far below v one RGB channel lies: (v s) clamp(min(k, 4 - k), 0, 1), k = (6 h + n) mod 6."""
    k = (h6 + n).remainder_(6)
    return torch.minimum(k, 4 - k).clamp_(0, 1).mul_(vs)  # (v s) k, as v * s * clamp(...)


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> HSV with hue in [0, 1), as ``tf.image.rgb_to_hsv``."""
    return torch.stack(_hsv(rgb), 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rgb_to_hsv`` (branch-free form: channel = v - v s clamp(min(k, 4 - k), 0, 1))."""
    return _rgb_from_hsv(*hsv.unbind(1))


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """SimCLRv2 brightness: multiply by the factor (v1 added a delta instead)."""
    return x * factor.view(-1, 1, 1, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``tf.image.adjust_contrast``: scale each channel's deviation from its spatial mean."""
    mean = x.mean((2, 3), keepdim=True)
    return (x - mean).mul_(factor.view(-1, 1, 1, 1)).add_(mean)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``tf.image.adjust_saturation``: HSV saturation times the factor, clipped to [0, 1].

    In HSV each channel is v - v s k(h), so scaling s scales every channel's distance to the
    maximum channel v: done directly in RGB, without the HSV round trip.
    """
    v, ratio = _saturation_ratio(x, factor)
    return (v - x).mul_(ratio).neg_().add_(v)  # v - (v - x) ratio


def _saturation_ratio(x: torch.Tensor, factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pixel's largest channel v and its new saturation / old saturation, both (N, 1, H, W)."""
    v = x.amax(1, keepdim=True)
    m = x.amin(1, keepdim=True)
    s = torch.where(v > 0, (v - m).div_(v.clamp_min(1e-12)), 0.0)
    new_s = (s * factor.view(-1, 1, 1, 1)).clamp_(0, 1)
    ratio = torch.where(s > 0, new_s.div_(s.clamp_min(1e-12)), 1.0)
    return v, ratio


def adjust_hue(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``tf.image.adjust_hue``: rotate the hue by ``delta`` (a fraction of the colour circle)."""
    h, s, v = _hsv(x)
    return _rgb_from_hsv((h + delta.view(-1, 1, 1)).remainder_(1.0), s, v)


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    # Python floats, not a tensor built from a host list: no host-to-device copy (a sync on CUDA) per call
    r, g, b = GRAY_WEIGHTS
    return (x[:, 0:1] * r + x[:, 1:2] * g + x[:, 2:3] * b).expand_as(x)


def sample_jitter(n: int, strength: float, generator: torch.Generator,
                  device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-image factors (brightness, contrast, saturation, hue delta) and the order of the ops.

    At strength s: brightness in [max(0, 1 - 0.8s), 1 + 0.8s], contrast and saturation in
    [1 - 0.8s, 1 + 0.8s], hue delta in [-0.2s, 0.2s]; ``order[i]`` is a permutation of 0..3.
    """
    s = strength
    params = [
        _uniform(n, max(0.0, 1 - 0.8 * s), 1 + 0.8 * s, generator, device),
        _uniform(n, 1 - 0.8 * s, 1 + 0.8 * s, generator, device),
        _uniform(n, 1 - 0.8 * s, 1 + 0.8 * s, generator, device),
        _uniform(n, -0.2 * s, 0.2 * s, generator, device),
    ]
    order = torch.rand(n, 4, generator=generator, device=device).argsort(1)
    return params, order


JITTER_METHODS = ("subset", "masked", "fused", "compiled")


def color_jitter(x: torch.Tensor, strength: float, apply: torch.Tensor, generator: torch.Generator,
                 by_subset: bool | None = None, method: str | None = None) -> torch.Tensor:
    """Brightness, contrast, saturation, hue in a random order per image, clipped after each.

    Images with ``apply`` False are returned unchanged. Every evaluation draws the same random
    numbers (``sample_jitter``) and gives the same pixels, up to float rounding (every operation
    acts on each image alone); ``method`` picks one:

    - ``"subset"`` (the default on CPU, where reading a data-dependent size costs no device sync):
      each operation runs only on the images that drew it at that position, a quarter of the
      arithmetic of running it on the whole batch;
    - ``"masked"``: at each position of the order every operation runs on the whole batch and each
      image keeps the result of the one it drew there; four times the arithmetic, no host sync;
    - ``"fused"``: brightness, contrast and saturation as one affine pass per position, hue in two
      passes in all (``fused_color_jitter``); no host sync, no data-dependent shape;
    - ``"compiled"`` (the default on CUDA): ``fused`` through ``torch.compile`` (``CompiledJitter``),
      compiled on first use; where compiling fails, the eager ``fused`` runs instead.

    ``by_subset`` is the older switch, read when ``method`` is None: True is ``"subset"``, False the
    accelerator default (``"compiled"`` on CUDA, ``"fused"`` on other devices). Tensors without
    data (``FakeTensor``, as in the memory estimate) take ``"fused"`` instead of ``"subset"`` or
    ``"compiled"``.
    """
    params, order = sample_jitter(x.shape[0], strength, generator, x.device)
    method = _jitter_method(x, by_subset, method)
    if method == "subset":
        return _jitter_by_subset(x, params, order, apply)
    if method == "masked":
        return _jitter_masked(x, params, order, apply)
    if method == "compiled":
        return COMPILED_JITTER(x, params, order, apply)
    return fused_color_jitter(x, params, order, apply)


def _jitter_method(x: torch.Tensor, by_subset: bool | None, method: str | None) -> str:
    """The evaluation ``color_jitter`` runs (see there)."""
    if method is None:
        accelerator = "compiled" if x.device.type == "cuda" else "fused"
        if by_subset is None:
            by_subset = x.device.type == "cpu"
        method = "subset" if by_subset else accelerator
    elif method not in JITTER_METHODS:
        raise ValueError(f"colour jitter method {method!r}: expected one of {', '.join(JITTER_METHODS)}")
    if isinstance(x, FakeTensor) and method in ("subset", "compiled"):
        return "fused"  # a tensor without data can be neither indexed by a mask nor run by compiled code
    return method


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def _jitter_by_subset(x: torch.Tensor, params: list[torch.Tensor], order: torch.Tensor,
                      apply: torch.Tensor) -> torch.Tensor:
    """Each operation on the images that drew it at each position (reads subset sizes: a host sync on CUDA)."""
    x = x.clone()
    for position in range(4):
        for op_index, op in enumerate(_JITTER_OPS):
            idx = ((order[:, position] == op_index) & apply).nonzero().squeeze(1)
            if idx.numel():
                x[idx] = op(x.index_select(0, idx), params[op_index][idx]).clamp_(0, 1)
    return x


def _jitter_masked(x: torch.Tensor, params: list[torch.Tensor], order: torch.Tensor,
                   apply: torch.Tensor) -> torch.Tensor:
    """Every operation on the whole batch at each position; each image keeps the one it drew there."""
    for position in range(4):
        for op_index, op in enumerate(_JITTER_OPS):
            chosen = ((order[:, position] == op_index) & apply).view(-1, 1, 1, 1)
            y = op(x, params[op_index]).clamp_(0, 1)
            x = torch.where(chosen, y, x, out=y)  # y is a fresh tensor: reuse it
    return x


# The fused evaluation's passes: "A" one affine pass (brightness, contrast or saturation, whichever an
# image does next), "H" one hue pass. Each image's order (three affine operations and hue at one of
# four places) is a subsequence of this string, so walking it in order and letting each image take
# a pass whenever its next operation is of that kind applies every image's operations in its order.
# "AHAAHA" is a shortest such string (HAAA, AHAA, AAHA and AAAH all fit in it): 4 affine and 2 hue
# passes, against the 6 and 1 of "AAAHAAA"; eager on CPU it was the faster of the two (510 vs 590 ms
# for 64 images of 224 px), and compiled an affine pass moves more memory than a hue pass.
FUSED_SCHEDULE = "AHAAHA"
_HUE = 3  # the index of hue in ``sample_jitter``'s params and order


def fused_color_jitter(x: torch.Tensor, params: list[torch.Tensor], order: torch.Tensor,
                       apply: torch.Tensor, schedule: str = FUSED_SCHEDULE) -> torch.Tensor:
    """``color_jitter``'s operations from its draws in ``len(schedule)`` whole-batch passes.

    Brightness (f x), contrast (mean + f (x - mean), mean per image and channel) and saturation
    (v + r (x - v), v the pixel's largest channel, r its new / old saturation) are each
    ``c + a (x - c)``: an affine pass computes every image's centre ``c`` and scale ``a`` for the
    operation that image does next (reductions and 1-channel maps) and applies them in one pointwise
    expression; idle images get ``c = 0, a = 1`` and no clipping, which leaves them bit-identical
    (pixels in [0, 1] or not). Hue, the one operation that is not affine in the pixel, runs on the
    whole batch in each ``H`` pass and is kept by the images whose next operation it is. In all 4
    affine and 2 hue passes where the masked evaluation runs 12 and 4. The same float operations as
    ``adjust_brightness``, ``adjust_contrast`` and ``adjust_saturation`` in the same order, so
    eager results equal the masked evaluation's. No host sync and no data-dependent shape:
    ``torch.compile(fullgraph=True)`` and CUDA graphs can take it.
    """
    factors = torch.stack(params[:_HUE], 1)  # (N, 3): brightness, contrast, saturation
    done = torch.zeros_like(order[:, 0])  # how many of its operations each image has had
    for kind in schedule:
        upcoming = order.gather(1, done.clamp(max=3).unsqueeze(1)).squeeze(1)
        pending = apply & (done < 4)
        if kind == "H":
            active = pending & (upcoming == _HUE)
            x = _hue_pass(x, params[_HUE], active)
        else:
            active = pending & (upcoming != _HUE)
            x = _affine_pass(x, factors, upcoming.clamp(max=_HUE - 1), active)
        done = done + active.long()
    return x


def _affine_pass(x: torch.Tensor, factors: torch.Tensor, op: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast or saturation (``op`` 0, 1, 2) on each ``active`` image: ``c + a (x - c)``, clipped.

    The centre is a per-channel part plus a per-pixel part, one of them 0 for every image, so
    subtracting and adding both gives the same floats as the single ``adjust_*`` operation,
    without a full-size centre tensor.
    """
    channel_center, pixel_center, scale = _affine_coefficients(x, factors, op, active)
    y = (x - channel_center).sub_(pixel_center).mul_(scale).add_(pixel_center).add_(channel_center)
    low = torch.where(active, 0.0, -torch.inf).view(-1, 1, 1, 1).to(x.dtype)
    return y.clamp_(low, 1 - low)  # [0, 1] where active, (-inf, inf) elsewhere


def _affine_coefficients(x: torch.Tensor, factors: torch.Tensor, op: torch.Tensor,
                         active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre per channel (N, 3, 1, 1), centre per pixel and scale (N, 1, H, W) of each image's operation.

    Brightness: centre 0, scale its factor; contrast: the channel means and its factor; saturation:
    the pixel's largest channel and the ratio of new to old saturation; idle images: 0 and 1.
    """
    factor = factors.gather(1, op.unsqueeze(1)).squeeze(1)
    is_contrast = (active & (op == 1)).view(-1, 1, 1, 1)
    is_saturation = (active & (op == 2)).view(-1, 1, 1, 1)
    v, ratio = _saturation_ratio(x, factors[:, 2])
    image_scale = torch.where(active, factor, 1.0).view(-1, 1, 1, 1).to(x.dtype)
    channel_center = torch.where(is_contrast, x.mean((2, 3), keepdim=True), 0.0)
    pixel_center = torch.where(is_saturation, v, 0.0)
    scale = torch.where(is_saturation, ratio, image_scale)
    return channel_center, pixel_center, scale


def _hue_pass(x: torch.Tensor, delta: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Hue rotation (clipped) on the whole batch, kept by the ``active`` images."""
    return torch.where(active.view(-1, 1, 1, 1), adjust_hue(x, delta).clamp_(0, 1), x)


class CompiledJitter:
    """``fused_color_jitter`` through ``torch.compile(fullgraph=True)``, compiled on the first call.

    Falls back to the eager function, for good, when compiling or running the compiled one fails
    (no Triton, no C++ compiler, a graph break; a warning names the error), and calls the eager one
    inside a region already being traced (an outer ``torch.compile`` inlines it) or a CUDA graph
    capture that would have to compile. Out-of-memory errors propagate.
    """

    def __init__(self, backend: str = "inductor"):
        self.backend = backend
        self.compiled = None
        self.error: str | None = None

    def __call__(self, x: torch.Tensor, params: list[torch.Tensor], order: torch.Tensor,
                 apply: torch.Tensor) -> torch.Tensor:
        if self.error is None and not self._must_stay_eager(x):
            try:
                if self.compiled is None:
                    self.compiled = torch.compile(fused_color_jitter, fullgraph=True, backend=self.backend)
                return self.compiled(x, params, order, apply)
            except torch.OutOfMemoryError:
                raise
            except Exception as error:  # noqa: BLE001 - any compiler failure: the eager function computes the same
                self.error = f"{type(error).__name__}: {error}".splitlines()[0][:300]
                log.warning("colour jitter: torch.compile failed (%s); the eager fused evaluation runs instead",
                            self.error)
        return fused_color_jitter(x, params, order, apply)

    def _must_stay_eager(self, x: torch.Tensor) -> bool:
        if torch.compiler.is_compiling():
            return True
        capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
        return capturing and self.compiled is None


COMPILED_JITTER = CompiledJitter()


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image and zero "SAME" padding (as TF)."""
    radius = kernel_size // 2
    if radius < 1:
        return x
    n, c, height, width = x.shape
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-offsets.view(1, -1) ** 2 / (2 * sigma.view(-1, 1).to(x.dtype) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)
    kernel = kernel.repeat_interleave(c, 0)  # (n * c, taps)
    flat = x.reshape(1, n * c, height, width)
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), padding=(0, radius), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), padding=(radius, 0), groups=n * c)
    return flat.view(n, c, height, width)


class SimCLRAugment:
    """A batched augmentation pipeline on the training device: uint8 images -> float (N, 3, size, size).

    ``AugmentConfig.pretrain(size)`` gives the contrastive views; ``AugmentConfig.finetune(size)``
    crop + flip only. The images come from the data loader in one of two forms (``data.loader``):

    - already cropped: uint8 (N, V, 3, size, size), view ``view`` of each image's V crops, which the
      loader's workers resampled from the full-resolution image (``crops.crop_pixels``); the flip,
      colour and blur are drawn here;
    - whole: uint8 (N, 3, S, S), each image at S x S (an in-memory cache of images no larger than S,
      so nothing was lost), with ``sizes`` (N, 2) their original height and width: the box is drawn
      here on the original pixel grid (``crops.sample_boxes``) and resampled from these pixels.
    """

    def __init__(self, config: AugmentConfig):
        self.config = config

    def __call__(self, images: torch.Tensor, sizes: torch.Tensor, generator: torch.Generator,
                 view: int = 0) -> torch.Tensor:
        # Always in fp32, also inside the training step's autocast region: under bf16 autocast the
        # sampling grid of the crop (a bmm in affine_grid) and the blur would run in bf16, moving pixels.
        with torch.autocast(images.device.type, enabled=False):
            return self._views(images, sizes, generator, view)

    def _views(self, images: torch.Tensor, sizes: torch.Tensor, generator: torch.Generator,
               view: int) -> torch.Tensor:
        cfg = self.config
        n, device = images.shape[0], images.device
        if images.dim() == 5:  # cropped by the loader
            if tuple(images.shape[-2:]) != (cfg.size, cfg.size):
                raise ValueError(f"the loader cropped views of {tuple(images.shape[-2:])} px, the augmentation "
                                 f"makes {cfg.size} px")
            x = _to_float(images[:, view])
            if cfg.flip:
                flip = torch.rand(n, generator=generator, device=device) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        else:
            height, width = sizes[:, 0], sizes[:, 1]
            boxes = sample_boxes(height, width, generator, cfg.crop_area, cfg.crop_ratio,
                                 min_covered_for(cfg.crop_area[0]))
            flip = torch.rand(n, generator=generator, device=device) < 0.5 if cfg.flip else None
            x = resized_crop(_to_float(images), normalized(boxes, height, width), cfg.size, flip)
        if cfg.color_strength > 0:
            apply = torch.rand(n, generator=generator, device=device) < cfg.color_p
            x = color_jitter(x, cfg.color_strength, apply, generator)
            gray = torch.rand(n, generator=generator, device=device) < cfg.gray_p
            x = torch.where(gray.view(-1, 1, 1, 1), to_grayscale(x), x)
        if cfg.blur_p > 0:
            sigma = _uniform(n, cfg.blur_sigma[0], cfg.blur_sigma[1], generator, device)
            blur = torch.rand(n, generator=generator, device=device) < cfg.blur_p
            x = torch.where(blur.view(-1, 1, 1, 1), gaussian_blur(x, sigma, cfg.size // 10), x)
        return x.clamp_(0, 1)


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()
