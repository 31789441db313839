"""The image loader: every Pillow mode to upright RGB; every bad file refused with its reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.data.images import ImageError, load_array, load_image
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


# --- issue 11: every bad input gets a clear answer ------------------------------------------


def _real_jpeg() -> bytes:
    return real_photos("dress", 1)[0].read_bytes()


@pytest.mark.parametrize(
    "data",
    [
        b"P6",  # PPM: ValueError "Reached EOF while reading header" escaped before
        b"\x01\xda" + b"\x00" * 20,  # SGI: ValueError "Unsupported SGI image mode"
        b"#define w 8x\n#define h 8\n",  # XBM: ValueError
        b"DDS " + b"\x7c\x00\x00\x00" + b"\x00" * 120,  # DDS: NotImplementedError/ValueError
        b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 40,  # JPEG 2000
    ],
)
def test_plugin_errors_become_image_errors_naming_the_file(data: bytes) -> None:
    """Defect 1: other plugins' ValueError/NotImplementedError/RuntimeError never escape."""
    from pipelines.search.photos import embed_upload

    with pytest.raises(ImageError, match=r"^a\.jpg: not a recognised image"):
        load_image(_named(data), draft_size=64)
    result = embed_upload("a.jpg", data, {})
    assert result.error is not None and result.error.startswith("a.jpg: not a recognised image")


def _named(data: bytes, name: str = "a.jpg") -> io.BytesIO:
    buf = io.BytesIO(data)
    buf.name = name
    return buf


def test_corrupt_data_of_an_accepted_format_is_an_image_error_with_the_reason() -> None:
    """Defect 1: an error raised while decoding (not opening) is an ImageError too."""
    data = bytearray(_real_jpeg())
    sof = data.find(b"\xff\xc0")
    data[sof + 9] = 7  # seven components in the frame header: libjpeg refuses it
    with pytest.raises(ImageError, match=r"^a\.jpg: "):
        load_image(_named(bytes(data)))


def _grey_padded(cut: float) -> bytes:
    data = _real_jpeg()
    return data[: int(len(data) * cut)] + b"\xff\xd9"


def test_truncated_jpeg_with_an_end_marker_is_not_padded_with_grey_and_accepted() -> None:
    """Defect 3: libjpeg pads a file cut short (then closed with FF D9) with grey rows."""
    for draft in (None, 96, 299):
        with pytest.raises(ImageError, match=r"truncated JPEG: the last \d+ of \d+ rows"):
            load_image(_named(_grey_padded(0.3)), draft_size=draft)
    # The whole file decodes: the check reads padding, not any grey.
    assert load_image(_real_jpeg()).size == Image.open(real_photos("dress", 1)[0]).size


def test_jpeg_with_a_patched_header_size_is_refused_not_grey_filled() -> None:
    """Defect 3: a header patched to 6000x6000 over ~500 rows of data is refused."""
    data = bytearray(_real_jpeg())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (6000).to_bytes(2, "big") * 2
    with pytest.raises(ImageError, match="truncated JPEG"):
        load_image(_named(bytes(data)))


def test_truncated_images_stay_refused_even_if_another_module_turns_padding_on() -> None:
    """Defect 3: Pillow's global LOAD_TRUNCATED_IMAGES is forced off at every decode."""
    from PIL import ImageFile

    data = _real_jpeg()
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(ImageError, match="truncated"):
            load_image(data[: len(data) // 2])
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF", "PPM", "TGA", "ICO", "PCX"])
def test_only_jpeg_png_and_webp_are_opened(fmt: str) -> None:
    """Defect 4: a valid image in another Pillow format is refused, and the message lists the
    formats really accepted."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, format=fmt)
    expected = r"not a recognised image \(jpg, png, webp, heic or avif expected\)"
    with pytest.raises(ImageError, match=expected):
        load_image(buf.getvalue())
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, format="WEBP", lossless=True)
    assert tuple(np.asarray(load_image(buf.getvalue()))[8, 8]) == (200, 10, 10)


def test_eps_is_never_handed_to_ghostscript(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 4: an EPS file is refused without running any program."""
    import subprocess

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("a subprocess was started to decode an upload")

    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    monkeypatch.setattr(subprocess, "check_call", no_subprocess)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n"
    with pytest.raises(ImageError, match="not a recognised image"):
        load_image(eps)


def _bomb_png(width: int, depth: int, colour: int) -> bytes:
    """A tiny PNG of a huge, valid, all-zero image."""
    import struct
    import zlib

    bands = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    row = b"\x00" * (1 + width * bands * depth // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(width)) + comp.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, width, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("depth", "colour"), [(16, 0), (8, 6), (16, 2)])
def test_small_file_of_a_huge_image_is_refused_before_decoding(depth: int, colour: int) -> None:
    """Defect 5: a ~100 KB PNG of a 6300x6300 16-bit or RGBA image is under the pixel cap but
    would take ~1 GB to decode; the upload's memory budget refuses it first."""
    from pipelines.config import Config
    from pipelines.search.photos import UPLOAD_MAX_DECODE_BYTES, decode_upload

    data = _bomb_png(6300, depth, colour)
    # Under the pixel cap uploads are decoded with (the service and the app pass the
    # config's; the decoder's default is the same), so the budget, not the cap, refuses it.
    cap = Config().max_pixels
    assert len(data) < 2**20 and cap > 6300 * 6300
    for given in ({"max_pixels": cap}, {}):
        with pytest.raises(ImageError, match=r"^big\.png: too large to decode safely: 6300x"):
            decode_upload("big.png", data, **given)
    # The estimate is the one that decides, and it is over the budget by design.
    assert UPLOAD_MAX_DECODE_BYTES < 6300 * 6300 * 8


def test_decode_cost_is_an_upper_bound_of_the_real_peak() -> None:
    """Defect 5: the budget is only a bound if the estimate is not below what decoding takes
    (checked against the pixels' own sizes: decoded image plus its RGB copy)."""
    from pipelines.data.images import decode_cost

    for mode in ("L", "RGB", "RGBA", "I;16", "P", "LA"):
        img = Image.open(io.BytesIO(_png(Image.new(mode, (300, 200)))))
        loaded = Image.new(mode, (300, 200))
        rgb_bytes = 300 * 200 * 4
        real = len(loaded.tobytes()) + rgb_bytes
        assert decode_cost(img) >= real, mode


def test_jpeg_upload_decodes_reduced_so_a_huge_photo_is_cheap() -> None:
    """Defect 5: a JPEG is decoded at a reduced size (draft), far below its header's size."""
    from pipelines.search.photos import decode_upload

    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), (90, 90, 200)).save(buf, format="JPEG", quality=50)
    img = decode_upload("phone.jpg", buf.getvalue())
    assert img.size == (500, 375)  # 1/8 scale: still >= 256 px a side for the preview


def test_upload_size_message_is_truthful_at_the_limit() -> None:
    """Defect 9: 20 MiB + 1 byte is not '20.0 MB over the 20.0 MB limit'."""
    from pipelines.search.photos import MAX_UPLOAD_BYTES, check_upload

    message = check_upload("big.jpg", b"\0" * (MAX_UPLOAD_BYTES + 1))
    assert message == (
        "big.jpg: 20,971,521 bytes is over the 20.0 MB upload limit (20,971,520 bytes) — "
        "upload a smaller photo"
    )
    message = check_upload("big.jpg", b"\0" * (MAX_UPLOAD_BYTES + 30_000))
    assert message is not None and message.startswith("big.jpg: 20.03 MB is over the 20.0 MB")
    assert check_upload("ok.jpg", b"\0" * MAX_UPLOAD_BYTES) is None


def test_control_characters_in_a_file_name_are_escaped_in_messages() -> None:
    """Defect 8: a name holding ESC or a newline cannot drive the terminal it is printed to."""
    from pipelines.search.photos import decode_upload

    with pytest.raises(ImageError) as err:
        decode_upload("evil\x1b[2J\n.jpg", b"not an image")
    assert str(err.value).startswith("evil\\x1b[2J\\n.jpg: not a recognised image")
    assert "\x1b" not in str(err.value) and "\n" not in str(err.value)


def test_paths_that_are_not_regular_files_are_refused_without_reading(tmp_path: Path) -> None:
    """Defect 6 (loader side): /dev/zero, a FIFO, a folder and a dangling link each get their
    reason, and nothing is read (a FIFO with no writer would block forever)."""
    import os

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    (tmp_path / "dir.jpg").mkdir()
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    cases = {
        Path("/dev/zero"): "character device",
        fifo: "FIFO",
        tmp_path / "dir.jpg": "is a folder",
        tmp_path / "dangling.jpg": "broken symbolic link",
        tmp_path / "loop.jpg": "symbolic link loop",
    }
    for path, reason in cases.items():
        with pytest.raises(ImageError, match=reason):
            load_image(path)


@pytest.mark.parametrize("shape", [(300, 100), (100, 300)])
def test_model_input_is_the_centred_square_not_a_squash(shape: tuple[int, int]) -> None:
    """A wide (or tall) photo in three colour bands: only the middle band is the model input."""
    width, height = shape
    img = Image.new("RGB", shape, (255, 0, 0))
    middle = (100, 0, 200, 100) if width > height else (0, 100, 100, 200)
    img.paste((0, 0, 255), middle)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    pixels = load_array(buffer.getvalue(), 32)
    assert pixels.shape == (32, 32, 3)
    # A squash would keep the red bands at the edges; the centre crop is all blue.
    assert (pixels[..., 2] == 255).all() and (pixels[..., 0] == 0).all()
