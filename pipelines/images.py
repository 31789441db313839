"""Reads image files or uploaded bytes into upright RGB pixels; the one loader every stage uses."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from pipelines.errors import LookalikeError

# A truncated file must be refused, never padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

DEFAULT_MAX_PIXELS = 40_000_000
BBox = tuple[int, int, int, int]
ImageSource = str | Path | bytes | BinaryIO


class ImageError(LookalikeError):
    """An image that cannot be used; `reason` says why in a few words."""

    def __init__(self, reason: str, name: str = "") -> None:
        self.reason = reason
        super().__init__(f"{name}: {reason}" if name else reason)


def _name_of(source: ImageSource) -> str:
    if isinstance(source, str | Path):
        return str(source)
    return getattr(source, "name", "") or ""


def _open(source: ImageSource) -> Image.Image:
    """Open lazily (header only), turning every failure into an ImageError with its reason."""
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise ImageError("file not found", str(path))
        if path.stat().st_size == 0:
            raise ImageError("empty file (0 bytes)", str(path))
        handle: BinaryIO = open(path, "rb")  # noqa: SIM115 - PIL keeps it until load()
    else:
        data = source if isinstance(source, bytes) else source.read()
        if not data:
            raise ImageError("empty file (0 bytes)", _name_of(source))
        handle = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            # Our own pixel cap (below) decides; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(handle)
    except Image.DecompressionBombError as err:
        handle.close()
        raise ImageError(f"too large to decode safely ({err})", _name_of(source)) from err
    except UnidentifiedImageError as err:
        handle.close()
        raise ImageError(
            "not a recognised image (jpg, png or webp expected)", _name_of(source)
        ) from err
    except OSError as err:
        handle.close()
        raise ImageError(f"unreadable image ({err})", _name_of(source)) from err


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: alpha composited on white, 16-bit scaled to 8-bit, CMYK converted."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # convert("L") would clip 16-bit values at 255 (a white image); scale instead.
        arr = np.asarray(img).astype(np.float64)
        scale = 257.0 if arr.max(initial=0) > 255 else 1.0
        arr = np.clip(arr / scale, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(
    source: ImageSource,
    *,
    bbox: BBox | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode an image file or bytes into an upright RGB image.

    Parameters
    ----------
    source:
        A path, raw bytes or a binary file object (an upload).
    bbox:
        Optional (x1, y1, x2, y2) crop in the upright image's pixel coordinates (DeepFashion).
    max_pixels:
        Images with more pixels are refused before decoding (decompression-bomb guard).
    draft_size:
        When set and no bbox is given, JPEGs are decoded at the smallest power-of-two
        reduction still at least this many pixels on each side: the same pixels at a
        fraction of the decode time, for callers that downsize anyway.

    Raises
    ------
    ImageError
        With the reason: missing, empty, not an image, truncated, too large, bad bbox.
    """
    name = _name_of(source)
    img = _open(source)
    try:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageError(
                f"too large: {width}x{height} = {width * height:,} pixels, over the cap of "
                f"{max_pixels:,} (decompression-bomb guard; raise max_pixels to allow it)",
                name,
            )
        if draft_size and bbox is None and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        try:
            img.load()
            img = ImageOps.exif_transpose(img)
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageError(f"truncated or corrupt image data ({err})", name) from err
        img = to_rgb(img)
        if bbox is not None:
            img = crop(img, bbox, name)
        return img
    finally:
        fp = getattr(img, "fp", None)
        if fp is not None:
            fp.close()


def crop(img: Image.Image, bbox: BBox, name: str = "") -> Image.Image:
    """Crop to (x1, y1, x2, y2), clipped to the image; an empty box is an ImageError."""
    x1, y1, x2, y2 = (int(v) for v in bbox)
    x1, y1 = max(0, x1), max(0, y1)
    x2, y2 = min(img.width, x2), min(img.height, y2)
    if x2 <= x1 or y2 <= y1:
        raise ImageError(
            f"bounding box {tuple(bbox)} is empty inside the {img.width}x{img.height} image", name
        )
    return img.crop((x1, y1, x2, y2))


def load_array(
    source: ImageSource,
    size: int,
    *,
    bbox: BBox | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode, crop and resize to a (size, size, 3) uint8 array: the model input of every path.

    The batch embedding stage and live uploads both call this, so a catalog photo embedded
    live gives the row the stage stored.
    """
    img = load_image(source, bbox=bbox, max_pixels=max_pixels, draft_size=size)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(img, dtype=np.uint8)


def thumbnail(img: Image.Image, size: int) -> Image.Image:
    """A copy at most `size` pixels on its long side, aspect kept."""
    thumb = img.copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    return thumb
