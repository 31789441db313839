"""The default catalog's download path, exercised against a server on this machine's loopback."""

from __future__ import annotations

import functools
import http.server
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.data.download import count_labels, download_catalog
from pipelines.errors import LookalikeError
from tests.conftest import copy_subset


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, dict[str, int]]]:
    """A zip laid out like GitHub's archive of clothing-small (subset), served on 127.0.0.1."""
    tree = copy_subset(tmp_path / "tree" / "clothing-dataset-small-abc", {"hat": 2, "skirt": 1})
    www = tmp_path / "www"
    www.mkdir()
    with zipfile.ZipFile(www / "archive.zip", "w") as zf:
        for path in sorted(tree.rglob("*.jpg")):
            zf.write(path, path.relative_to(tree.parent))
    (www / "broken.zip").write_bytes(b"PK not really a zip")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", dict(count_labels(tree))
    finally:
        server.shutdown()
        server.server_close()


def test_download_verifies_and_unpacks(served: tuple[str, dict[str, int]], tmp_path: Path) -> None:
    base, counts = served
    assert counts == {"hat": 6, "skirt": 3}
    dest = download_catalog(f"{base}/archive.zip", tmp_path / "out" / "clothing-small", counts)
    assert (dest / "train" / "hat").is_dir()
    assert dict(count_labels(dest)) == counts


def test_download_that_does_not_verify_leaves_nothing(
    served: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    base, counts = served
    dest = tmp_path / "out" / "clothing-small"
    with pytest.raises(LookalikeError, match="does not match the expected catalog"):
        download_catalog(f"{base}/archive.zip", dest, {**counts, "hat": 7})
    with pytest.raises(LookalikeError, match="not a valid zip"):
        download_catalog(f"{base}/broken.zip", dest, counts)
    with pytest.raises(LookalikeError, match="could not download .* pass --source PATH"):
        download_catalog(f"{base}/missing.zip", dest, counts)
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir()] == []


def test_download_removes_what_a_killed_download_left(
    served: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    from pipelines.artifacts import _host_tag, owner_tag
    from tests.test_artifacts import _dead_pid

    base, counts = served
    out = tmp_path / "out"
    # A killed download's work folder, half unpacked; a live one's (this process); another
    # host's; and a folder that only looks similar.
    dead = out / f".download-pid{_dead_pid()}@{_host_tag()}-k1ll3d"
    (dead / "unpacked" / "hat").mkdir(parents=True)
    (dead / "unpacked" / "hat" / "a.jpg").write_bytes(b"x" * 1000)
    live = out / f".download-{owner_tag()}-l1ve"
    elsewhere = out / f".download-pid{_dead_pid()}@another-host-0ther"
    mine = out / ".download-notes"
    for folder in (live, elsewhere, mine):
        folder.mkdir(parents=True)
    dest = download_catalog(f"{base}/archive.zip", out / "clothing-small", counts)
    assert dict(count_labels(dest)) == counts
    assert not dead.exists()
    assert live.is_dir() and elsewhere.is_dir() and mine.is_dir()
