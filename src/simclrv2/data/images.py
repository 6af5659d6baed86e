"""Decode one image file into an RGB ``uint8`` array, whatever its mode, or fail cleanly.

Real image folders hold grayscale scans, palette PNGs with transparency, CMYK JPEGs from print
workflows, 16-bit medical or scientific TIFFs and phone photos whose pixels are stored sideways
with an EXIF orientation tag. ``load_rgb`` turns each of them into the (H, W, 3) array a viewer
would show (a 16- or 32-bit single-channel image stretched over its own range, as viewers
auto-contrast such images: ``_stretch``). A file that cannot be decoded completely (truncated, corrupt, empty, not an image,
a decompression bomb) raises :class:`BadImage`, a :class:`UserError` naming the file, so the
caller can skip it and count it instead of training on half an image.
"""

from __future__ import annotations

import os
from typing import Callable, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# The largest image decoded, in pixels (``--max-image-pixels``; set before the loader forks its workers).
# Pillow's own guard (a DecompressionBombWarning past 89 MP, an error past 179 MP) is replaced by this one,
# checked after a large JPEG's reduced decoding is chosen, so that a 200 MP photo read at 1/8 scale passes.
DEFAULT_MAX_PIXELS = 100_000_000
max_pixels = DEFAULT_MAX_PIXELS
Image.MAX_IMAGE_PIXELS = None


def set_max_pixels(count: int) -> None:
    global max_pixels
    max_pixels = int(count)
_SIXTEEN_BIT_MAX = 65535


class BadImage(UserError):
    """A file that cannot be decoded into an image; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str,
                 fix: str = "delete or replace the file") -> None:
        self.path = os.fspath(path)
        self.reason = _one_line(reason)
        self.fix = fix
        super().__init__(f"cannot read image {self.path}: {self.reason}; {fix}")

    def __reduce__(self):
        # Exceptions pickle through ``args`` (the message alone), which this __init__ cannot take;
        # DataLoader workers and multiprocessing send exceptions between processes.
        return (type(self), (self.path, self.reason, self.fix))


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown error"


# What a caller needs of the decoded size: a shorter side in pixels, or a function of the upright
# (height, width) read from the header that returns one (or None: full size) before the pixels are decoded.
AtLeast = Union[int, None, Callable[[int, int], Union[int, None]]]
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_ORIENTATION = 0x0112


def upright_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of the image as ``load_rgb`` returns it, read from the header alone."""
    path = os.fspath(path)
    try:
        with Image.open(path) as image:
            return _upright(image)
    except FileNotFoundError:
        raise BadImage(path, "no such file", "check the path or re-create the file list") from None
    except Exception as exc:  # noqa: BLE001 - a header Pillow cannot parse: the decode reports it in full
        raise BadImage(path, f"{type(exc).__name__}: {exc}") from None


def _upright(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block: exif_transpose ignores it too
        orientation = 1
    return (width, height) if orientation in _TRANSPOSED else (height, width)


def load_rgb(path: str | os.PathLike, at_least: AtLeast = None) -> np.ndarray:
    """Decode ``path`` fully into a writable ``uint8`` array of shape (H, W, 3), upright per EXIF.

    ``at_least``: the caller needs both sides of at least this many pixels. A JPEG that is twice that
    or more is then decoded at 1/2, 1/4 or 1/8 scale (the DCT scaling of libjpeg, Pillow's ``draft``:
    several times faster for the 3000-6000 px photos of phones, drones and slide scanners), the largest
    reduction that keeps both sides at ``at_least`` or more. Other formats decode in full. ``at_least``
    may be a function of the upright (height, width), called once with the header's size before any
    pixel is decoded (the random crops of training draw their boxes there).
    Raises :class:`BadImage` for anything that is not a complete, decodable image.
    """
    path = os.fspath(path)
    image = _decode(path, at_least)
    try:
        array = _to_rgb(image)
    except ValueError as exc:
        raise BadImage(path, f"cannot convert colour mode {image.mode} to RGB ({exc})",
                       "re-export it as an 8-bit RGB image") from None
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise BadImage(path, f"decoded to an empty or malformed array of shape {array.shape}")
    return array


def _decode(path: str, at_least: AtLeast = None) -> Image.Image:
    """Open, fully decode (at a reduced JPEG scale when ``at_least`` allows) and rotate upright; every
    failure becomes BadImage."""
    try:
        with Image.open(path) as image:
            if callable(at_least):
                at_least = at_least(*_upright(image))
            if at_least and image.format == "JPEG" and min(image.size) >= 2 * at_least:
                image.draft("RGB", (at_least, at_least))  # (a square request: rotation cannot matter)
            width, height = image.size
            if width * height > max_pixels:
                raise BadImage(path, f"{width} x {height} pixels ({width * height / 1e6:.0f} megapixels) is more than "
                               f"--max-image-pixels {max_pixels}", "raise --max-image-pixels if you trust the file "
                               "and have the memory, or downscale it")
            # Image.open only reads the header: load() decodes every pixel now, so a truncated
            # file fails here instead of yielding a partly grey image.
            image.load()
            return ImageOps.exif_transpose(image)
    except BadImage:
        raise
    except Image.DecompressionBombError as exc:
        raise BadImage(path, str(exc), "raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file, "
                       "or downscale it") from None
    except FileNotFoundError:
        raise BadImage(path, "no such file", "check the path or re-create the file list") from None
    except IsADirectoryError:
        raise BadImage(path, "is a folder, not an image file", "list image files only") from None
    except UnidentifiedImageError:
        reason = ("empty file (0 bytes)" if _size(path) == 0
                  else "not an image in a format Pillow reads (wrong extension or corrupt header)")
        raise BadImage(path, reason) from None
    except MemoryError:
        raise BadImage(path, "too large to decode in memory", "downscale it") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise OSError, SyntaxError,
        # ValueError, EOFError, struct.error, IndexError... on corrupt data; all mean a bad file.
        raise BadImage(path, f"{type(exc).__name__}: {exc}") from None


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Convert a decoded image of any Pillow mode to an RGB uint8 array."""
    mode = image.mode
    if mode == "RGB":
        return np.array(image, dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        # Pillow's convert() clips these at 255 instead of scaling, turning most pixels white.
        return _gray_to_rgb(_stretch(np.asarray(image)))
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        return _gray_to_rgb(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    if mode == "P" and "transparency" in image.info:
        # Straight to RGBA: converting to RGB would drop (and warn about) the transparency.
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in _ALPHA_MODES:
        return _composite_on_white(np.array(image.convert("RGBA"), dtype=np.uint8))
    # "1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV": Pillow's own conversions are correct.
    return np.array(image.convert("RGB"), dtype=np.uint8)


def _stretch(values: np.ndarray) -> np.ndarray:
    """A 16- or 32-bit single-channel image (Pillow modes I;16 and I) onto 0..255 by its own range: its
    smallest value becomes 0 and its largest 255, linearly, with rounding. Microscopes and scanners store
    12- or 14-bit data in 16-bit files (or 32-bit ones): scaled by the container's range (v / 257) such an
    image is nearly black. An image spanning 0..65535 gets exactly v / 257; a constant image keeps its
    value on the 16-bit scale (clipped to it)."""
    wide = values.astype(np.int64)
    lo, hi = int(wide.min()), int(wide.max())
    if hi == lo:
        return np.full(wide.shape, (min(max(lo, 0), _SIXTEEN_BIT_MAX) + 128) // 257, dtype=np.uint8)
    span = hi - lo
    return (((wide - lo) * 255 + span // 2) // span).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Blend RGBA over a white background: out = a*rgb + (1-a)*255, rounded."""
    rgb = rgba[:, :, :3].astype(np.uint32)
    alpha = rgba[:, :, 3:].astype(np.uint32)
    blended = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return blended.astype(np.uint8)
