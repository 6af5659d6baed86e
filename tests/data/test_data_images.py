"""load_rgb: every format and colour mode real folders contain, and every kind of bad file."""

import pickle

import numpy as np
import pytest
from PIL import Image

from simclrv2.data import IMAGE_EXTENSIONS, BadImage, load_rgb
from simclrv2.errors import UserError


def pattern(height=12, width=20):
    """An RGB image whose every pixel differs, so any flip, rotation or channel swap shows."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 12, y * 20, (x + y) * 7 % 256], axis=2).astype(np.uint8)


def quadrants(height=64, width=96):
    """Four flat colours (red, green / blue, white), big enough to survive JPEG."""
    img = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    img[:h, :w] = (255, 0, 0)
    img[:h, w:] = (0, 255, 0)
    img[h:, :w] = (0, 0, 255)
    img[h:, w:] = (255, 255, 255)
    return img


def block_means(img, rows=2, cols=2):
    """Mean colour of each block's central half, as (rows, cols, 3) ints."""
    h, w = img.shape[0] // rows, img.shape[1] // cols
    return np.array([[img[r * h + h // 4:(r + 1) * h - h // 4, c * w + w // 4:(c + 1) * w - w // 4]
                      .reshape(-1, 3).mean(0) for c in range(cols)] for r in range(rows)]).round()


def mode_of(path):
    with Image.open(path) as image:
        return image.mode


def test_extensions_cover_the_common_formats():
    assert IMAGE_EXTENSIONS == {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
    assert all(e == e.lower() for e in IMAGE_EXTENSIONS)


@pytest.mark.parametrize("suffix,options", [
    (".png", {}), (".bmp", {}), (".tif", {}), (".tiff", {"compression": "tiff_lzw"}),
    (".webp", {"lossless": True}),
])
def test_lossless_formats_round_trip_exactly(tmp_path, suffix, options):
    img = pattern()
    path = tmp_path / f"img{suffix}"
    Image.fromarray(img).save(path, **options)
    out = load_rgb(path)
    assert out.dtype == np.uint8 and out.shape == (12, 20, 3)
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".webp"])
def test_lossy_formats_keep_the_colours(tmp_path, suffix):
    img = quadrants()
    path = tmp_path / f"img{suffix}"
    Image.fromarray(img).save(path, quality=95)
    out = load_rgb(path)
    assert out.shape == img.shape
    np.testing.assert_allclose(block_means(out), block_means(img), atol=6)


def test_result_is_a_writable_contiguous_copy(tmp_path):
    Image.fromarray(pattern()).save(tmp_path / "a.png")
    out = load_rgb(str(tmp_path / "a.png"))
    assert out.flags.writeable and out.flags.c_contiguous
    out[0, 0] = 1  # must not raise


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.array([[0, 77, 200], [255, 1, 128]], np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = load_rgb(tmp_path / "g.png")
    assert out.shape == (2, 3, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], gray)


def test_bilevel_maps_to_black_and_white(tmp_path):
    bits = Image.new("1", (2, 1))
    bits.putpixel((1, 0), 1)
    bits.save(tmp_path / "b.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "b.png")[0], [[0, 0, 0], [255, 255, 255]])


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 128], [0, 0, 0, 0], [10, 20, 30, 255], [0, 0, 255, 51]]], np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    # out = a*c + (1-a)*255, rounded: 128/255 red -> (255, 127, 127); 51/255 blue -> (204, 204, 255)
    expected = [[[255, 127, 127], [255, 255, 255], [10, 20, 30], [204, 204, 255]]]
    np.testing.assert_array_equal(load_rgb(tmp_path / "a.png"), expected)


def test_gray_with_alpha_is_composited_over_white(tmp_path):
    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (100, 255))
    la.putpixel((1, 0), (100, 0))
    la.save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "la.png")[0], [[100] * 3, [255] * 3])


def test_palette_image(tmp_path):
    pal = Image.new("P", (3, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    for x in range(3):
        pal.putpixel((x, 0), x)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "p.png")[0], [[255, 0, 0], [0, 255, 0], [0, 0, 255]])


def test_palette_transparency_becomes_white(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "pt.png", transparency=1)
    assert mode_of(tmp_path / "pt.png") == "P"
    np.testing.assert_array_equal(load_rgb(tmp_path / "pt.png")[0], [[255, 0, 0], [255, 255, 255]])


def test_cmyk_jpeg(tmp_path):
    # (C, M, Y, K) = (0, 255, 255, 0) is pure red; K = 128 alone is mid grey.
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "red.jpg", quality=95)
    Image.new("CMYK", (16, 16), (0, 0, 0, 128)).save(tmp_path / "grey.jpg", quality=95)
    assert mode_of(tmp_path / "red.jpg") == "CMYK"
    np.testing.assert_allclose(load_rgb(tmp_path / "red.jpg").reshape(-1, 3).mean(0), [255, 0, 0], atol=3)
    np.testing.assert_allclose(load_rgb(tmp_path / "grey.jpg").reshape(-1, 3).mean(0), [127] * 3, atol=3)


def test_ycbcr_image(tmp_path):
    # A JPEG stored as YCbCr decodes as RGB in Pillow, so feed a YCbCr TIFF (Y=128, no chroma).
    Image.new("YCbCr", (4, 4), (128, 128, 128)).save(tmp_path / "y.tif")
    assert mode_of(tmp_path / "y.tif") == "YCbCr"
    np.testing.assert_allclose(load_rgb(tmp_path / "y.tif"), np.full((4, 4, 3), 128), atol=1)


SIXTEEN = np.array([[0, 1000, 25700, 32896, 65535]], np.uint16)
# v / 257 rounded: 1000 -> 3.89 -> 4; 25700 = 100 * 257; 32896 = 128 * 257; 65535 -> 255.
EIGHT = np.array([0, 4, 100, 128, 255], np.uint8)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    Image.fromarray(SIXTEEN).save(tmp_path / "d.png")
    assert mode_of(tmp_path / "d.png").startswith("I")
    out = load_rgb(tmp_path / "d.png")
    np.testing.assert_array_equal(out[0], np.repeat(EIGHT[:, None], 3, axis=1))


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16bit_and_32bit_integer_tiffs(tmp_path, mode):
    if mode == "I":
        image = Image.fromarray(SIXTEEN.astype(np.int32))
    else:
        dtype = ">u2" if mode == "I;16B" else "<u2"
        image = Image.frombytes(mode, (5, 1), SIXTEEN.astype(dtype).tobytes())
    image.save(tmp_path / "d.tif")
    assert mode_of(tmp_path / "d.tif") == mode
    np.testing.assert_array_equal(load_rgb(tmp_path / "d.tif")[0, :, 0], EIGHT)


def test_float_tiff_is_clipped_to_0_255(tmp_path):
    values = np.array([[-5.0, 0.0, 100.4, 300.0, np.nan]], np.float32)
    Image.fromarray(values).save(tmp_path / "f.tif")
    assert mode_of(tmp_path / "f.tif") == "F"
    np.testing.assert_array_equal(load_rgb(tmp_path / "f.tif")[0, :, 1], [0, 0, 100, 255, 0])


@pytest.mark.parametrize("orientation,turns", [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_is_applied(tmp_path, orientation, turns):
    img = quadrants()  # 64 x 96, landscape
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(img).save(tmp_path / "r.jpg", quality=95, exif=exif)
    out = load_rgb(tmp_path / "r.jpg")
    # 6: rotate 90 degrees clockwise to display (np.rot90 k=-1); 8: counter-clockwise; 3: 180.
    expected = np.rot90(img, turns)
    assert out.shape == expected.shape
    np.testing.assert_allclose(block_means(out), block_means(expected), atol=6)


def test_exif_orientation_6_puts_the_left_edge_on_top(tmp_path):
    img = quadrants()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(img).save(tmp_path / "r.jpg", quality=95, exif=exif)
    out = load_rgb(tmp_path / "r.jpg")
    assert out.shape == (96, 64, 3)
    # Left column of the stored image (red over blue) becomes the top row, blue first (left).
    assert tuple(block_means(out)[0, 0]) == pytest.approx((0, 0, 255), abs=6)
    assert tuple(block_means(out)[0, 1]) == pytest.approx((255, 0, 0), abs=6)


def bad_message(path):
    with pytest.raises(BadImage) as info:
        load_rgb(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert isinstance(info.value, UserError)
    return message


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert "truncated" in bad_message(tmp_path / "cut.jpg")


def test_truncated_png(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    bad_message(tmp_path / "cut.png")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.jpg").touch()
    assert "empty file" in bad_message(tmp_path / "empty.jpg")


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("these are not pixels\n")
    assert "not an image" in bad_message(tmp_path / "notes.jpg")


def test_corrupt_bytes_after_a_valid_header(tmp_path):
    Image.fromarray(pattern(64, 64)).save(tmp_path / "ok.png")
    data = bytearray((tmp_path / "ok.png").read_bytes())
    data[60:200] = bytes(140)  # zero the compressed pixel data
    (tmp_path / "bad.png").write_bytes(bytes(data))
    bad_message(tmp_path / "bad.png")


def test_missing_file_and_folder(tmp_path):
    assert "no such file" in bad_message(tmp_path / "gone.png")
    (tmp_path / "dir.png").mkdir()
    bad_message(tmp_path / "dir.png")


def test_decompression_bomb_becomes_bad_image(tmp_path, monkeypatch):
    Image.fromarray(pattern(20, 20)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 400 pixels > 2 * limit: an error
    assert "MAX_IMAGE_PIXELS" in bad_message(tmp_path / "big.png")


def test_bad_image_survives_pickling(tmp_path):
    error = BadImage(tmp_path / "x.jpg", "image file is truncated")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is BadImage and str(copy) == str(error) and copy.path == str(tmp_path / "x.jpg")


def _photo(path, width, height, seed=0, exif_orientation=None):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    pixels = np.clip(field + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if exif_orientation:
        exif = image.getexif()
        exif[0x0112] = exif_orientation
        image.save(path, quality=92, exif=exif)
    else:
        image.save(path, quality=92)
    return path


@pytest.mark.parametrize("at_least, shape", [(None, (1200, 1600)), (200, (300, 400)), (500, (600, 800)),
                                             (700, (1200, 1600))])
def test_large_jpegs_decode_at_the_largest_reduction_that_keeps_the_needed_side(tmp_path, at_least, shape):
    path = _photo(tmp_path / "big.jpg", 1600, 1200)
    assert load_rgb(path, at_least).shape == (*shape, 3)


def test_reduced_decoding_gives_the_same_training_and_evaluation_inputs_up_to_rounding(tmp_path):
    from simclrv2.data.loader import needed_side, preprocess

    path = _photo(tmp_path / "big.jpg", 1600, 1200)
    for mode, size, crop in [("train", 146, 1.0), ("eval", 128, 0.875)]:
        full, (h_full, w_full) = preprocess(load_rgb(path), mode, size, crop)
        fast, (h_fast, w_fast) = preprocess(load_rgb(path, needed_side(mode, size, crop)), mode, size, crop)
        assert fast.shape == full.shape == (3, size, size) and w_fast / h_fast == pytest.approx(w_full / h_full)
        # within 3 grey levels on average (the photo's own pixel noise has a std of 6): the DCT's scaling
        # and the bicubic filter average the noise slightly differently
        assert np.abs(fast.astype(int) - full.astype(int)).mean() < 3.0


def test_reduced_decoding_keeps_exif_rotation_and_leaves_other_formats_whole(tmp_path):
    rotated = _photo(tmp_path / "rotated.jpg", 1600, 1200, exif_orientation=6)  # stored sideways
    assert load_rgb(rotated, 200).shape == (400, 300, 3)
    png = tmp_path / "big.png"
    Image.open(rotated).save(png)
    assert load_rgb(png, 200).shape == (1200, 1600, 3)
