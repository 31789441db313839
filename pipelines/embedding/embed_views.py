"""Stage views: one shifted view (`pipelines/models/views.py`) of each chosen training photo,
embedded with InceptionV3 into models/views_inception_v3.npz with a manifest, keyed on the
training set and InceptionV3's model. Reads catalog photos."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pipelines import artifacts
from pipelines.config import Config
from pipelines.data.images import ImageError, load_image
from pipelines.models.views import (
    BASE,
    FIT_SHARE,
    STAGE,
    VERSION,
    shifted_view,
    view_rows,
    views_path,
)
from pipelines.stage import StageResult

# Photos decoded and embedded at a time.
BATCH = 64


def _photos(paths: list[str], rows: np.ndarray, seed: int, max_pixels: int) -> list[bytes | None]:
    """One view per photo, each from its own generator (seed, row); None when undecodable."""

    def one(i: int) -> bytes | None:
        try:
            image = load_image(paths[i], max_pixels=max_pixels)
        except ImageError:
            return None
        return shifted_view(image, np.random.default_rng([seed, 26, int(rows[i])]))

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(len(paths))))


def run_views(config: Config, force: bool = False) -> StageResult:
    """Stage: embed one shifted view of each chosen training photo with InceptionV3.
    Skipped (with a note) for a catalog without labels."""
    from tqdm import tqdm

    from pipelines.models import training_set
    from pipelines.models.extractors import get_extractor
    from pipelines.models.head import labelled_rows
    from pipelines.readers import model_id, read_catalog

    start = time.perf_counter()
    catalog, _ = read_catalog(config)
    fit, val, labelled = labelled_rows(catalog, config.seed)
    if not labelled:
        note = "views skipped: the catalog has no labels (only trained parts use views)"
        print(note)
        return StageResult(STAGE, seconds=time.perf_counter() - start, skipped=True, note=note)
    snapshot = training_set.ensure(config, catalog)
    known = training_set.in_training_set(config, catalog)
    rows = view_rows(fit & known, val & known, config.seed)
    path = views_path(config)
    params = {
        "version": VERSION,
        "fit_share": FIT_SHARE,
        "seed": config.seed,
        "max_pixels": config.max_pixels,
    }
    inputs = {"training_set": snapshot, f"model/{BASE}": model_id(config, BASE)}
    if not force and artifacts.is_fresh(path, STAGE, params, inputs):
        print(f"{path} is up to date")
        return StageResult(STAGE, rows=len(rows), seconds=time.perf_counter() - start, skipped=True)
    extractor = get_extractor(BASE, config)
    paths = catalog["path"].astype(str).to_numpy()[rows].tolist()
    ids = catalog["item_id"].astype(str).to_numpy()[rows]
    vectors, kept = [], []
    with tqdm(total=len(rows), desc=f"views {BASE}", unit="img") as bar:
        for lo in range(0, len(rows), BATCH):
            photos = _photos(paths[lo : lo + BATCH], rows[lo : lo + BATCH], config.seed,
                             config.max_pixels)  # fmt: skip
            ok = [i for i, p in enumerate(photos) if p is not None]
            if ok:
                vectors.append(extractor.embed_images([photos[i] for i in ok]))
                kept.extend(lo + i for i in ok)
            bar.update(len(photos))
    vectors_all = np.concatenate(vectors) if vectors else np.zeros((0, 2048), np.float32)
    with artifacts.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, item_id=ids[kept].astype(str), vectors=vectors_all.astype(np.float32))
    seconds = time.perf_counter() - start
    note = f"{len(kept)} views ({len(rows) - len(kept)} photos unreadable), {seconds:.0f} s"
    artifacts.write_manifest(path, STAGE, params, inputs, extra={"n_views": len(kept)})
    print(f"views: {note} -> {path}")
    return StageResult(STAGE, wrote=(path,), rows=len(kept), seconds=seconds, note=note)
