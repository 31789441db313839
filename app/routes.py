"""HTTP routes the app's server adds beside its pages (`app/server.py`): the tiles of a large
catalog's photo map, the photo in one of its cells, an item's photo (the hover photos of
a large catalog's maps, `app/ui/hover.py`), and a smaller catalog's whole photo map image
(`mosaic_source`). The browser's tiled viewer
(`app/ui/tiled_map.py`) asks for the tiles in view only; each URL names the build's key, so a
tile is cached for good and a rebuilt map is fetched anew.

Routes present what `pipelines.explore.tiles` reads; they never build anything.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from app.ui import loaders
from pipelines.config import EXTRACTORS, Config
from pipelines.errors import LookalikeError
from pipelines.explore.tiles import TiledMap

PREFIX = "/lookalike"
_FOREVER = {"Cache-Control": "public, max-age=31536000, immutable"}
# Set by `app/server.py` as it starts: these routes answer in this process. Under
# `streamlit run app/streamlit_app.py` (no routes) the pages inline what they would link.
_SERVING = {"routes": False}


def serving() -> None:
    """Record that this process's server answers these routes (`app/server.py`'s lifespan)."""
    _SERVING["routes"] = True


def mosaic_source(extractor: str, mosaic: dict) -> str:
    """Where a page's browser gets `extractor`'s photo map image (`loaders.mosaic`): this
    server's route, named by the image's hash so the browser keeps it across reruns and pages,
    when the routes answer; else the image inlined as a data URI (2.8 MB on the default
    catalog, sent with every rerun of every page that shows a map)."""
    if not _SERVING["routes"]:
        return str(mosaic["uri"])
    return f"{PREFIX}/mosaic/{extractor}/{str(mosaic['sha'])[:16]}.jpg"


def _map(extractor: str) -> TiledMap | None:
    if extractor not in EXTRACTORS:
        return None
    return loaders.tiled_map(Config(), extractor)


def _not_found(what: str) -> Response:
    return Response(f"{what} not found", status_code=404, media_type="text/plain")


def tile(request: Request) -> Response:
    """GET {PREFIX}/tiles/{extractor}/{key}/{level}/{x}_{y}.jpg: one tile of the pyramid."""
    params = request.path_params
    found = _map(params["extractor"])
    if found is None or found.key != params["key"]:
        return _not_found("photo map (rebuilt or not built)")
    path = found.tile(params["level"], params["x"], params["y"])
    if path is None:
        return _not_found("tile")  # a tile without photos is not written: the viewer skips it
    return FileResponse(path, media_type="image/jpeg", headers=_FOREVER)


def cell_photo(request: Request) -> Response:
    """GET {PREFIX}/cell/{extractor}/{key}/{col}/{row}.jpg: the photo of the item in one cell
    (its item id and label in the X-Item-Id and X-Item-Label headers)."""
    params = request.path_params
    found = _map(params["extractor"])
    if found is None or found.key != params["key"]:
        return _not_found("photo map (rebuilt or not built)")
    row = found.row_at(params["col"], params["row"])
    if row is None or not found.thumb(row).is_file():
        return _not_found("photo")
    headers = {
        **_FOREVER,
        "X-Item-Id": str(found.item_ids[row]),
        "X-Item-Label": str(found.labels[row]).encode("ascii", "replace").decode(),
    }
    return FileResponse(found.thumb(row), media_type="image/jpeg", headers=headers)


def mosaic_image(request: Request) -> Response:
    """GET {PREFIX}/mosaic/{extractor}/{sha}.jpg: a photo map's whole image (`mosaic_source`)."""
    params = request.path_params
    if params["extractor"] not in EXTRACTORS:
        return _not_found("extractor")
    path = Config().mosaic_image_path(params["extractor"])
    if not path.is_file() or loaders.sha(path)[:16] != params["sha"]:
        return _not_found("photo map (rebuilt or not built)")
    return FileResponse(path, media_type="image/jpeg", headers=_FOREVER)


def photo_base(cfg: Config) -> str:
    """The URL prefix of the item photos of `cfg`'s catalog (append "<item_id>.jpg"); it names
    the catalog's version, so a photo is cached for good and a new catalog's is fetched anew."""
    return f"{PREFIX}/photo/{loaders.sha(cfg.catalog_path)[:16]}/"


def item_photo(request: Request) -> Response:
    """GET {PREFIX}/photo/{catalog}/{item_id}.jpg: one item's thumbnail."""
    cfg = Config()
    try:
        if not request.url.path.startswith(photo_base(cfg)):
            return _not_found("catalog (rebuilt or not built)")
        catalog = loaders.catalog(cfg)
    except LookalikeError:  # no catalog (yet): the pages say how to build it
        return _not_found("catalog")
    row = loaders.item_index(catalog).get_indexer([request.path_params["item_id"]])[0]
    if row < 0:
        return _not_found("item")
    path = Path(str(catalog["thumb_file"].iloc[row]))
    if not path.is_file():
        return _not_found("photo")
    return FileResponse(path, media_type="image/jpeg", headers=_FOREVER)


ROUTES = [
    Route(PREFIX + "/photo/{catalog}/{item_id}.jpg", item_photo, methods=["GET"]),
    Route(PREFIX + "/mosaic/{extractor}/{sha}.jpg", mosaic_image, methods=["GET"]),
    Route(
        PREFIX + "/tiles/{extractor}/{key}/{level:int}/{x:int}_{y:int}.jpg", tile, methods=["GET"]
    ),
    Route(PREFIX + "/cell/{extractor}/{key}/{col:int}/{row:int}.jpg", cell_photo, methods=["GET"]),
]
