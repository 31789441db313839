"""The image loader: every Pillow mode to upright RGB; every bad file refused with its reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.images import ImageError, load_array, load_image
from tests.conftest import real_photos


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    """A JPEG stored sideways with EXIF orientation 6; upright it is 40x60, red on top."""
    upright = np.zeros((60, 40, 3), np.uint8)
    upright[:30] = (255, 0, 0)
    upright[30:] = (0, 0, 255)
    # Orientation 6 means "rotate 90 degrees clockwise to display", so store it turned back.
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def rgba_png() -> bytes:
    arr = np.zeros((20, 20, 4), np.uint8)
    arr[:, :10] = (0, 128, 0, 255)  # opaque green left half, fully transparent right half
    return _png(Image.fromarray(arr, mode="RGBA"))


def palette_png() -> bytes:
    img = Image.new("P", (16, 16))
    img.putpalette([0, 0, 255] * 256)
    return _png(img)


def grey16_png() -> bytes:
    return _png(Image.fromarray(np.full((24, 24), 40_000, np.uint16)))


def test_exif_orientation_is_applied() -> None:
    img = load_image(exif_rotated_jpeg())
    assert img.size == (40, 60)
    top, bottom = np.asarray(img)[5, 20], np.asarray(img)[55, 20]
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_cmyk_becomes_rgb_with_right_colour() -> None:
    img = load_image(cmyk_jpeg())
    assert img.mode == "RGB"
    r, g, b = np.asarray(img)[16, 16]
    assert r > 200 and g < 60 and b < 60


def test_alpha_is_composited_on_white() -> None:
    arr = np.asarray(load_image(rgba_png()))
    assert arr.shape == (20, 20, 3)
    assert tuple(arr[10, 15]) == (255, 255, 255)
    assert tuple(arr[10, 5]) == (0, 128, 0)


def test_palette_and_16_bit_greyscale() -> None:
    assert tuple(np.asarray(load_image(palette_png()))[0, 0]) == (0, 0, 255)
    grey = np.asarray(load_image(grey16_png()))
    # 40000 / 257 = 155.6: scaled to 8 bits, not clipped to white.
    assert grey.shape == (24, 24, 3)
    assert 150 <= grey[0, 0, 0] <= 157 and np.all(grey[0, 0] == grey[0, 0, 0])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is a text file, not a photo\n", "not a recognised image"),
    ],
)
def test_bad_bytes_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        load_image(data)


def test_truncated_jpeg_is_refused() -> None:
    data = real_photos("dress", 1)[0].read_bytes()
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])


def test_pixel_cap_refuses_before_decoding() -> None:
    data = _png(Image.new("RGB", (1000, 600)))
    with pytest.raises(ImageError, match=r"1000x600 = 600,000 pixels, over the cap of 500,000"):
        load_image(data, max_pixels=500_000)
    assert load_image(data, max_pixels=600_000).size == (1000, 600)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "nope.jpg")


def test_load_array_same_pixels_from_path_and_bytes() -> None:
    photo = real_photos("shirt", 1)[0]
    from_path = load_array(photo, 299)
    from_bytes = load_array(photo.read_bytes(), 299)
    assert from_path.shape == (299, 299, 3) and from_path.dtype == np.uint8
    np.testing.assert_array_equal(from_path, from_bytes)


def test_bbox_crop(tmp_path: Path) -> None:
    photo = real_photos("pants", 1)[0]
    img = load_image(photo, bbox=(10, 20, 110, 220))
    assert img.size == (100, 200)
    with pytest.raises(ImageError, match="bounding box"):
        load_image(photo, bbox=(50, 50, 50, 80))
