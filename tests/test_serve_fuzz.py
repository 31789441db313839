"""Fuzzing POST /search with bad uploads: random bytes, truncated and bit-flipped real JPEG, PNG,
WebP, HEIC and AVIF, wrong extensions, huge declared dimensions, empty files. None may give a
5xx, and a good query still answers afterwards. HEIC and AVIF photos are searched like JPEGs."""

from __future__ import annotations

import struct
import zlib

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipelines.config import Config
from pipelines.serve.app import create_app
from tests.conftest import encode, real_photos

EXAMPLES = 520
# One small extractor keeps a decodable mutant cheap; the decode path (embed_upload) is the
# same for every extractor.
FUZZ_EXTRACTOR = "custom_cnn"
NAMES = [
    "a.jpg", "b.png", "c.webp", "IMG_1.HEIC", "f.avif", "d.txt", "e.exe", "noext",
    "../../etc/passwd", "", "x.JPG",
]  # fmt: skip
FORMATS = ("JPEG", "PNG", "WEBP", "HEIF", "AVIF")


def _seeds() -> list[bytes]:
    """A real photo as JPEG, PNG, WebP, HEIC and AVIF (small, so mutants decode fast)."""
    photo = Image.open(real_photos("shoes", 1, "test")[0]).convert("RGB")
    photo.thumbnail((96, 96))
    return [encode(photo, fmt) for fmt in FORMATS]


def _png_header(width: int, height: int, colour_type: int = 2) -> bytes:
    """A PNG whose header declares width x height, with one tiny (wrong) data chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """`jpeg` with the dimensions in its start-of-frame marker replaced."""
    at = jpeg.find(b"\xff\xc0")
    if at < 0:
        return jpeg
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


SEEDS = _seeds()


@st.composite
def bad_uploads(draw: st.DrawFn) -> tuple[str, bytes]:
    """(file name, bytes) of one malformed upload."""
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "huge", "empty", "header"]))
    name = draw(st.sampled_from(NAMES))
    seed = draw(st.sampled_from(SEEDS))
    if kind == "random":
        return name, draw(st.binary(min_size=1, max_size=4096))
    if kind == "truncated":
        return name, seed[: draw(st.integers(1, len(seed) - 1))]
    if kind == "flipped":
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 16))):
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
        return name, bytes(data)
    if kind == "huge":
        side = st.integers(1, 2**16 - 1)
        if draw(st.booleans()):
            return name, _jpeg_with_size(SEEDS[0], draw(side), draw(side))
        big = st.integers(1, 2**31 - 1)
        return name, _png_header(draw(big), draw(big), draw(st.sampled_from([0, 2, 6])))
    if kind == "header":  # a real magic number, then garbage
        magic = draw(
            st.sampled_from(
                [
                    b"\xff\xd8\xff",
                    b"\x89PNG\r\n\x1a\n",
                    b"RIFF\0\0\0\0WEBP",
                    b"\0\0\0\x18ftypheic",
                    b"\0\0\0\x1cftypavif",
                ]
            )
        )
        return name, magic + draw(st.binary(max_size=512))
    return name, b""


@pytest.fixture(scope="module")
def client(built: Config) -> TestClient:
    with TestClient(create_app(built, reload_interval=0)) as test_client:
        yield test_client


def test_bad_uploads_never_give_a_server_error(client: TestClient) -> None:
    statuses: list[int] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(upload=bad_uploads())
    def one(upload: tuple[str, bytes]) -> None:
        name, data = upload
        response = client.post(
            "/search",
            files=[("photo", (name, data, "application/octet-stream"))],
            params={"extractor": FUZZ_EXTRACTOR, "k": 3},
        )
        statuses.append(response.status_code)
        assert response.status_code < 500, (name, data[:64], response.text)
        body = response.json()
        if response.status_code == 200:  # a mutant that still decodes is a photo
            assert body["photos"][0]["searches"][0]["results"]
        else:
            assert response.status_code in (413, 415, 422), response.text
            assert isinstance(body["detail"], str) and "\n" not in body["detail"]

    one()
    assert len(statuses) >= 500
    # The mix really exercised the error paths (not only mutants that still decode).
    assert {415, 422} <= set(statuses)

    good = real_photos("hat", 1, "test")[0].read_bytes()
    response = client.post("/search", files=[("photo", ("hat.jpg", good, "image/jpeg"))])
    assert response.status_code == 200
    assert response.json()["photos"][0]["searches"][0]["results"][0]["label"] == "hat"


@pytest.mark.parametrize(("fmt", "name"), [("HEIF", "IMG_0042.HEIC"), ("AVIF", "shirt.avif")])
def test_heic_and_avif_photos_are_searched_and_damaged_ones_named(
    client: TestClient, fmt: str, name: str
) -> None:
    """An iPhone's HEIC and a web AVIF are searched as the same photo in JPEG is (415 before);
    cut short they get 422 with the reason."""
    photo = Image.open(real_photos("hat", 1, "test")[0]).convert("RGB")
    encoded = {kind: encode(photo, kind, quality=95) for kind in ("JPEG", fmt)}
    params = {"extractor": "inception_v3", "k": 5}
    bodies = []
    for data in encoded.values():
        response = client.post(
            "/search", files=[("photo", (name, data, "image/heic"))], params=params
        )
        assert response.status_code == 200, response.text
        bodies.append(response.json()["photos"][0])
    jpeg, other = bodies
    assert other["error"] is None and other["category"] == jpeg["category"] is not None
    ids = [[r["item_id"] for r in b["searches"][0]["results"]] for b in bodies]
    assert len(set(ids[0][:3]) & set(ids[1][:3])) >= 2, ids  # lossy copies: near, not equal
    cut = encoded[fmt][: len(encoded[fmt]) // 2]
    response = client.post("/search", files=[("photo", (name, cut, "image/heic"))], params=params)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"{name}: truncated or corrupt")
