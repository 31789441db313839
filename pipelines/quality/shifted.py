"""A shifted-domain check built from the catalog itself: photos shrunk to 60x80, re-encoded and
padded onto a plain background (a small phone-like photo against studio-like originals).
Reads catalog photos; `python -m pipelines.quality.shifted` writes cached vectors for the check."""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.config import Config
from pipelines.data.images import ImageSource, load_image

# The photo is shrunk to fit 60x80 (w x h), saved as a JPEG of this quality, and pasted at a
# random place on a plain canvas of CANVAS pixels a side, in a random light or dark flat colour.
SHRINK = (60, 80)
JPEG_QUALITY = 50
CANVAS = 160


def shift(image: Image.Image, rng: np.random.Generator) -> bytes:
    """One seeded shifted copy of an RGB photo, as JPEG bytes."""
    small = image.copy()
    small.thumbnail(SHRINK, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    small = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    base = rng.integers(30, 90) if rng.random() < 0.3 else rng.integers(170, 235)
    tint = np.clip(base + rng.integers(-15, 16, size=3), 0, 255)
    canvas = Image.new("RGB", (CANVAS, CANVAS), tuple(int(v) for v in tint))
    x0 = int(rng.integers(0, CANVAS - small.width + 1))
    y0 = int(rng.integers(0, CANVAS - small.height + 1))
    canvas.paste(small, (x0, y0))
    out = io.BytesIO()
    canvas.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def shifted_copies(sources: Sequence[ImageSource], seed: int, max_pixels: int) -> list[bytes]:
    """`shift` of each photo with its own generator (seed, position)."""
    return [
        shift(load_image(s, max_pixels=max_pixels), np.random.default_rng([seed, 1, i]))
        for i, s in enumerate(sources)
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """Cache vectors of shifted (or altered) copies of catalog rows for offline checks."""
    import pandas as pd

    from pipelines.models.extractors import get_extractor
    from pipelines.quality.likeness import BATCH, altered_copies

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--extractor", default="inception_v3")
    parser.add_argument("--transform", choices=("shift", "alter"), default="shift")
    parser.add_argument("--split", required=True)
    parser.add_argument("--per-class", type=int, default=0, help="0 = every row of the split")
    parser.add_argument(
        "--as-uploads",
        action="store_true",
        help="embed every base extractor as the photo search does (the garment crop included): "
        "writes inception_v3 and custom_cnn files at once, --extractor is ignored",
    )
    args = parser.parse_args(argv)
    config = Config(artifacts_dir=args.artifacts)
    catalog = pd.read_parquet(config.catalog_path)
    rows = np.flatnonzero(catalog["split"].to_numpy() == args.split)
    if args.per_class:
        rng = np.random.default_rng(config.seed)
        labels = catalog["label"].to_numpy()[rows]
        rows = np.sort(
            np.concatenate(
                [rng.permutation(rows[labels == v])[: args.per_class] for v in sorted(set(labels))]
            )
        )
    paths = catalog["path"].to_numpy()[rows].tolist()
    make = shifted_copies if args.transform == "shift" else altered_copies
    photos = make(paths, config.seed, config.max_pixels)
    if args.as_uploads:
        found = upload_vectors(config, photos, ("inception_v3", "custom_cnn"))
    else:
        found = {
            args.extractor: get_extractor(args.extractor, config).embed_images(photos, batch=BATCH)
        }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, vectors in found.items():
        stem = f"{args.transform}_{args.split}_{name}"
        np.save(args.out / f"{stem}.npy", vectors)
        np.save(args.out / f"{stem}_rows.npy", rows)
        print(f"{stem}: {vectors.shape}")


def upload_vectors(
    config: Config, photos: Sequence[bytes], extractors: Sequence[str]
) -> dict[str, np.ndarray]:
    """{extractor: (n, d)} vectors of photos embedded exactly as the photo search embeds an
    upload (`embed_upload`, then `choose_view` against the catalog's InceptionV3 index)."""
    from pipelines.models.extractors import get_extractor
    from pipelines.readers import load_index
    from pipelines.search.photos import choose_view, embed_upload

    models = {name: get_extractor(name, config) for name in extractors}
    index = load_index(config, "inception_v3")
    out: dict[str, list[np.ndarray]] = {name: [] for name in extractors}
    cropped = 0
    for i, data in enumerate(photos):
        embedding = choose_view(embed_upload(f"photo {i}", data, models), index)
        if embedding.error:
            raise SystemExit(embedding.error)
        cropped += embedding.cropped
        for name in extractors:
            out[name].append(embedding.vectors[name])
    print(f"{cropped} of {len(photos)} searched with their garment's crop")
    return {name: np.stack(rows) for name, rows in out.items()}


if __name__ == "__main__":
    main()
