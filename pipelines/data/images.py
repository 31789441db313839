"""Reads image files or uploaded bytes into upright RGB pixels; the one loader every stage uses."""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pi_heif import register_heif_opener
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin

from pipelines.errors import LookalikeError

# A truncated file must be refused, never padded with grey (load_image re-asserts this, in case
# some other import turned it on).
ImageFile.LOAD_TRUNCATED_IMAGES = False
# HEIC/HEIF (what iPhones save) through pi-heif's plugin (decode only); AVIF through Pillow's
# own, built into the pinned wheel (`PIL.features.check("avif")`). Both decode lazily like the
# others, so the pixel cap and the memory budget below are checked on the header before any
# decoding.
register_heif_opener()

DEFAULT_MAX_PIXELS = 40_000_000
# The only formats opened: Pillow's other ~40 plugins (PPM, SGI, EPS via Ghostscript, JPEG 2000,
# TIFF, DDS, ...) are code a photo catalog never needs and each fails in its own way.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "HEIF", "AVIF")
ACCEPTED_TEXT = "jpg, png, webp, heic or avif"
# What an upload form offers (Streamlit's file_uploader `type=`, the HTTP docs): MIME types for
# the browser's file picker, and the HEIC/AVIF extensions, whose MIME type many browsers do not
# know (Chrome on Windows and Linux sends an empty one for .heic).
UPLOAD_MIME_TYPES = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/heic",
    "image/heif",
    "image/avif",
)
UPLOAD_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".avif")
# Largest image file read from disk: catalog photos are a few MB; a row pointing at /dev/zero or
# a 4 GB video must not be read into memory.
MAX_FILE_BYTES = 100 * 2**20
# Memory one decode may take (estimated before decoding, see `decode_cost`): 1 GiB lets a
# 40-megapixel RGBA photo through in the batch stages; uploads pass a much smaller budget.
DEFAULT_MAX_DECODE_BYTES = 2**30
# A baseline or progressive JPEG that runs out of scan data is padded by libjpeg with blocks of
# exactly this value (all-zero DCT coefficients), so a grey tail of rows marks a truncated file.
_JPEG_PAD = 128
# Tail rows of exact padding grey that prove truncation: one 8-px block row cannot be a fluke of
# a smooth photo region as easily as a single row could.
_MIN_PAD_ROWS = 8

BBox = tuple[int, int, int, int]
ImageSource = str | Path | bytes | BinaryIO


def printable(text: str) -> str:
    """`text` with control and other non-printing characters escaped (`\\x1b`, `\\n`), so a
    hostile file name cannot move the cursor or recolour a terminal when it is printed."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


class ImageError(LookalikeError):
    """An image that cannot be used; `reason` says why in a few words, `name` which file."""

    def __init__(self, reason: str, name: str = "") -> None:
        self.reason = reason
        self.name = name
        super().__init__(f"{printable(name)}: {reason}" if name else reason)


def _name_of(source: ImageSource) -> str:
    if isinstance(source, str | Path):
        return str(source)
    return getattr(source, "name", "") or ""


def _size_text(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.1f} KB"


def file_problem(path: Path, max_bytes: int = MAX_FILE_BYTES) -> str | None:
    """Why `path` cannot be read as an image file, or None for a regular file within the cap.

    Never opens the file, so a FIFO cannot hang the caller and /dev/zero is not read.
    """
    if not str(path) or str(path) == ".":
        return "empty path — give the image's file path"
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return (
            "broken symbolic link (its target is missing)"
            if path.is_symlink()
            else ("file not found")
        )
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop — the link points back at itself"
        return f"cannot read file ({err.strerror or err})"
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        return "is a folder, not an image file"
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO (named pipe)"
            if stat.S_ISFIFO(mode)
            else "a character device"
            if stat.S_ISCHR(mode)
            else "a block device"
            if stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        return f"not a regular file ({kind}) — point at an image file"
    if info.st_size == 0:
        return "empty file (0 bytes)"
    if info.st_size > max_bytes:
        return (
            f"file is {_size_text(info.st_size)}, over the {_size_text(max_bytes)} cap for one "
            f"image — is it really a photo?"
        )
    return None


def read_image_file(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of one image file; refuses FIFOs, devices, folders, links to nowhere and files
    over `max_bytes` with an ImageError naming the file and the reason."""
    path = Path(path)
    problem = file_problem(path, max_bytes)
    if problem:
        raise ImageError(problem, str(path))
    try:
        with open(path, "rb") as handle:
            # Read one byte past the cap so a file that grew since stat() is still caught.
            data = handle.read(max_bytes + 1)
    except OSError as err:
        raise ImageError(f"cannot read file ({err.strerror or err})", str(path)) from err
    if len(data) > max_bytes:
        raise ImageError(f"file is over the {_size_text(max_bytes)} cap for one image", str(path))
    if not data:
        raise ImageError("empty file (0 bytes)", str(path))
    return data


def _open(source: ImageSource) -> Image.Image:
    """Open lazily (header only) as one of ACCEPTED_FORMATS; every failure is an ImageError."""
    name = _name_of(source)
    if isinstance(source, str | Path):
        problem = file_problem(Path(source))
        if problem:
            raise ImageError(problem, name)
        try:
            handle: BinaryIO = open(source, "rb")  # noqa: SIM115 - PIL keeps it until load()
        except OSError as err:
            raise ImageError(f"cannot read file ({err.strerror or err})", name) from err
    else:
        data = source if isinstance(source, bytes) else source.read()
        if not data:
            raise ImageError("empty file (0 bytes)", name)
        handle = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            # Our own pixel cap and memory budget decide; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(handle, formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as err:
        handle.close()
        raise ImageError(f"too large to decode safely ({err})", name) from err
    except Exception as err:  # noqa: BLE001 - any plugin error is a bad file, said as such
        brand = _heif_brand(handle)
        handle.close()
        if isinstance(err, Image.UnidentifiedImageError):
            reason = f"not a recognised image ({ACCEPTED_TEXT} expected)"
            if brand:  # a HEIC/AVIF container whose image header is cut off or damaged
                reason = (
                    f"truncated or corrupt {brand} image (its header cannot be read) — "
                    f"re-export or re-download it"
                )
        else:
            reason = f"unreadable image header ({_why(err)})"
        raise ImageError(reason, name) from err


# ISO base media file brands of HEIC/HEIF and AVIF (bytes 8-12, after "ftyp").
_HEIF_BRANDS = {
    b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC", b"hevx": "HEIC", b"heim": "HEIC",
    b"heis": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF",
}  # fmt: skip


def _heif_brand(handle: BinaryIO) -> str | None:
    """The container's name (HEIC, HEIF or AVIF) when the file starts as one, else None."""
    try:
        handle.seek(0)
        head = handle.read(12)
    except (OSError, ValueError):
        return None
    return _HEIF_BRANDS.get(head[8:12]) if head[4:8] == b"ftyp" else None


def _why(err: BaseException) -> str:
    """A one-line reason from any exception: its message, or its type when it has none."""
    text = " ".join(str(err).split())[:200]
    return text or type(err).__name__


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )


def decode_cost(img: Image.Image) -> int:
    """An upper estimate of the bytes `load_image` holds at its peak for this opened image.

    The decoded pixels and an upright copy, in Pillow's storage (1 byte a pixel for 1/L/P,
    2 for 16-bit, 4 for everything else: Pillow pads RGB to 4), plus the 4-byte-a-pixel
    images of the conversion to RGB (two; four when alpha is composited on white; three more
    for the numpy scaling of 16/32-bit greys). Computed from the header, before decoding.
    """
    width, height = img.size
    mode = img.mode
    stored = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    copies = 4 if _has_alpha(img) else 2
    if mode in ("I", "F") or mode.startswith("I;16"):
        copies += 3
    return width * height * (2 * stored + 4 * copies)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: alpha composited on white, 16-bit scaled to 8-bit, CMYK converted."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # convert("L") would clip 16-bit values at 255 (a white image); scale instead, in the
        # image's own dtype (float64 would take 8 bytes a pixel).
        arr = np.asarray(img)
        if arr.dtype.kind == "f":
            arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        scale = 257 if arr.max(initial=0) > 255 else 1
        arr = np.clip(arr // scale, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _padded_rows(img: Image.Image) -> int:
    """How many rows at the bottom are libjpeg's padding grey in every pixel and channel."""
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    flat = (arr == _JPEG_PAD).reshape(arr.shape[0], -1).all(axis=1)
    if flat.all():
        return arr.shape[0]
    return int(np.argmin(flat[::-1]))


def load_image(
    source: ImageSource,
    *,
    bbox: BBox | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    max_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> Image.Image:
    """Decode an image file or bytes into an upright RGB image.

    Parameters
    ----------
    source:
        A path, raw bytes or a binary file object (an upload). Only JPEG, PNG, WebP, HEIC/HEIF
        and AVIF are opened (ACCEPTED_FORMATS).
    bbox:
        Optional (x1, y1, x2, y2) crop in the upright image's pixel coordinates (DeepFashion).
    max_pixels:
        Images with more pixels (as declared in the header) are refused before decoding
        (decompression-bomb guard).
    draft_size:
        When set and no bbox is given, JPEGs are decoded at the smallest power-of-two
        reduction still at least this many pixels on each side: the same pixels at a
        fraction of the decode time and memory, for callers that downsize anyway.
    max_bytes:
        Memory budget of the decode (`decode_cost`, after any draft reduction): a small file
        declaring a large RGBA or 16-bit image is refused before it is decoded.

    Raises
    ------
    ImageError
        The only exception for a bad image, with the file's name and the reason: missing,
        not a regular file, empty, not an accepted format, truncated (including a JPEG whose
        missing data was padded with grey), too large, over the memory budget, bad bbox.
    """
    name = _name_of(source)
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    img = _open(source)
    try:
        return _decode(img, name, bbox, max_pixels, draft_size, max_bytes)
    except ImageError:
        raise
    except MemoryError as err:
        raise ImageError("ran out of memory decoding it — use a smaller image", name) from err
    except Exception as err:  # noqa: BLE001 - a plugin's failure is a bad file, said as such
        raise ImageError(f"truncated or corrupt image data ({_why(err)})", name) from err
    finally:
        fp = getattr(img, "fp", None)
        if fp is not None:
            fp.close()


def _decode(
    img: Image.Image,
    name: str,
    bbox: BBox | None,
    max_pixels: int,
    draft_size: int | None,
    max_bytes: int,
) -> Image.Image:
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(
            f"too large: {width}x{height} = {width * height:,} pixels, over the cap of "
            f"{max_pixels:,} (decompression-bomb guard; raise max_pixels to allow it)",
            name,
        )
    is_jpeg = isinstance(img, JpegImagePlugin.JpegImageFile)
    if draft_size and bbox is None and is_jpeg:
        img.draft("RGB", (draft_size, draft_size))
    cost = decode_cost(img)
    if cost > max_bytes:
        raise ImageError(
            f"too large to decode safely: {img.size[0]}x{img.size[1]} {img.mode} needs about "
            f"{_size_text(cost)} of memory, over the {_size_text(max_bytes)} budget — "
            f"resize the image (fewer pixels) and try again",
            name,
        )
    img.load()
    if is_jpeg:
        pad = _padded_rows(img)
        if pad >= _MIN_PAD_ROWS:
            raise ImageError(
                f"truncated JPEG: the last {pad} of {img.size[1]} rows are padding grey, the "
                f"file ends before its image data does — re-export or re-download it",
                name,
            )
    img = ImageOps.exif_transpose(img)
    img = to_rgb(img)
    if bbox is not None:
        img = crop(img, bbox, name)
    return img


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
    max_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> np.ndarray:
    """Decode, crop and resize to a (size, size, 3) uint8 array: the model input of every path.

    The batch embedding stage and live uploads both call this, so a catalog photo embedded
    live gives the row the stage stored.
    """
    img = load_image(source, bbox=bbox, max_pixels=max_pixels, draft_size=size, max_bytes=max_bytes)
    return square_array(img, size)


def square_array(img: Image.Image, size: int) -> np.ndarray:
    """The centred square of a decoded RGB image, resized to (size, size, 3) uint8.

    Every model input is square. Of the three ways to make one, a centre crop found the most
    right neighbours: InceptionV3 P@10 over 290 validation photos was 0.632 squashed, 0.658
    padded and 0.692 centre-cropped. Catalog photos frame the garment in the middle, and
    squashing distorts its cut while padding spends a third of the input on background.
    """
    width, height = img.size
    side = min(width, height)
    if width != height:
        # A real crop, not resize(box=...): the filter must not reach outside the square.
        left, top = (width - side) // 2, (height - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(img, dtype=np.uint8)


def thumbnail(img: Image.Image, size: int) -> Image.Image:
    """A copy at most `size` pixels on its long side, aspect kept."""
    thumb = img.copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    return thumb
