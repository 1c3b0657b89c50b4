"""Image loading: odd modes convert correctly, bad files fail with clear errors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zsris.errors import ImageError
from zsris.images import load_image


def _gradient(width: int = 40, height: int = 30) -> np.ndarray:
    xs = np.linspace(0, 255, width, dtype=np.float32)
    ys = np.linspace(0, 255, height, dtype=np.float32)
    return np.stack([np.add.outer(ys, xs) / 2, np.tile(xs, (height, 1)), np.tile(ys[:, None], (1, width))],
                    -1).astype(np.uint8)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a JPEG")
    with pytest.raises(ImageError, match="not an image"):
        load_image(path)


def test_truncated_jpeg(tmp_path, real_image_path):
    data = real_image_path.read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(path)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_rgb_jpeg_loads_as_uint8_rgb(real_image_path):
    image = load_image(real_image_path)
    assert image.dtype == np.uint8 and image.shape == (427, 640, 3)


def test_greyscale_l_becomes_three_equal_channels(tmp_path):
    grey = _gradient()[..., 0]
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    image = load_image(tmp_path / "g.png")
    assert image.shape == (30, 40, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], grey)


def test_la_and_rgba_composite_over_white(tmp_path):
    rgba = np.zeros((10, 12, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, :6, 3] = 255  # left half opaque red, right half transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(image[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(image[0, -1], [255, 255, 255])
    la = Image.fromarray(rgba[..., [0, 3]], mode="LA")
    la.save(tmp_path / "la.png")
    image = load_image(tmp_path / "la.png")
    np.testing.assert_array_equal(image[0, 0], [200, 200, 200])
    np.testing.assert_array_equal(image[0, -1], [255, 255, 255])


def test_palette_image(tmp_path):
    rgb = _gradient()
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "p.png")
    image = load_image(tmp_path / "p.png")
    assert image.shape == (30, 40, 3)
    assert np.abs(image.astype(int) - rgb.astype(int)).mean() < 20


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red in CMYK
    image = load_image(tmp_path / "c.jpg")
    assert image.shape == (8, 16, 3)
    red, green, blue = image[4, 8].astype(int)
    assert red > 200 and green < 60 and blue < 60


def test_sixteen_bit_png_is_rescaled_not_clipped(tmp_path):
    values = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16).repeat(3, axis=0)
    Image.fromarray(values).save(tmp_path / "16.png")
    with Image.open(tmp_path / "16.png") as check:
        assert check.mode.startswith("I")
    image = load_image(tmp_path / "16.png")
    np.testing.assert_array_equal(image[0, :, 0], [0, 64, 128, 255])


def test_exif_rotated_jpeg_is_shown_upright(tmp_path):
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = 255  # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif, quality=100)
    image = load_image(tmp_path / "r.jpg")
    assert image.shape == (40, 20, 3)  # displayed portrait
    assert image[5, 10].mean() > 200 and image[35, 10].mean() < 50  # white half is now on top


def test_one_pixel_image(tmp_path):
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "1.png")
    np.testing.assert_array_equal(load_image(tmp_path / "1.png"), [[[10, 20, 30]]])


def test_huge_image_is_refused_before_decoding(tmp_path):
    Image.new("L", (20000, 20000)).save(tmp_path / "huge.png")
    with pytest.raises(ImageError, match="over the limit"):
        load_image(tmp_path / "huge.png")
    Image.new("L", (8000, 6000)).save(tmp_path / "big.png")  # 48 MP: under Pillow's limit, over ours
    with pytest.raises(ImageError, match="48 MP, over the limit of 40 MP"):
        load_image(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png", max_pixels=50_000_000).shape == (6000, 8000, 3)


def test_arrays_and_pil_images(real_image_path):
    from_path = load_image(real_image_path)
    np.testing.assert_array_equal(load_image(Image.open(real_image_path)), from_path)
    np.testing.assert_array_equal(load_image(from_path), from_path)
    np.testing.assert_array_equal(load_image(from_path.astype(np.float32) / 255.0, float_scale=1.0), from_path)
    np.testing.assert_array_equal(load_image(from_path.astype(np.float32), float_scale=255.0), from_path)
    assert load_image(from_path[..., 0]).shape == from_path.shape
    with pytest.raises(ImageError, match="must be HxW"):
        load_image(np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(ImageError, match="NaN"):
        load_image(np.full((4, 4, 3), np.nan, dtype=np.float32), float_scale=1.0)


def test_a_float_images_scale_is_given_never_guessed():
    """A near-black 0..255 image has every value under 1: read as 0..1 it would turn bright."""
    dark = np.full((4, 4, 3), 0.8, dtype=np.float32)
    with pytest.raises(ImageError, match="ambiguous.*float_scale=1.0"):
        load_image(dark)
    assert int(load_image(dark, float_scale=255.0).max()) == 1
    assert int(load_image(dark, float_scale=1.0).max()) == 204
    with pytest.raises(ImageError, match=r"must hold values in 0..1, not 3..3"):
        load_image(dark * 3.75, float_scale=1.0)
    with pytest.raises(ImageError, match="float_scale must be 1.0 or 255.0"):
        load_image(dark, float_scale=100.0)
