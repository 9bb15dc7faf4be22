"""The console's one stylesheet and one script, shipped in the package (no build step, no CDN)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from starlette.responses import Response

from scheduler.errors import NotFound

router = APIRouter(tags=["console"], include_in_schema=False)

ASSETS = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
# An hour: the assets change only with a release, and a stale copy for an hour after one is harmless.
MAX_AGE_S = 3600


@router.get("/ui/static/{name}")
async def asset(name: str) -> Response:
    """One of the console's assets, read from the installed package."""
    if name not in ASSETS:
        raise NotFound(f"no asset {name}", "name")
    body = resources.files("api.console").joinpath("static", name).read_bytes()
    return Response(
        body,
        media_type=ASSETS[name],
        headers={"cache-control": f"max-age={MAX_AGE_S}", "x-content-type-options": "nosniff"},
    )
