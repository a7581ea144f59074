"""Routes serving the studio page's static files from this folder (nothing is loaded from
outside the server)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse

from serving.http import error_response

STUDIO_DIR = Path(__file__).parent
#: The page's assets and their media types (nothing else in the folder is served).
ASSETS = {"studio.css": "text/css", "studio.js": "text/javascript"}


def add_studio_routes(app: FastAPI) -> None:
    """``GET /`` (the page) and ``GET /studio/{name}`` (its CSS and JS) on ``app``."""

    @app.get("/", include_in_schema=False)
    async def studio_page() -> FileResponse:
        return FileResponse(STUDIO_DIR / "index.html", media_type="text/html")

    @app.get("/studio/{name}", include_in_schema=False)
    async def studio_asset(name: str):
        if name not in ASSETS:
            return error_response(404, "not_found", f"no studio file {name!r}")
        return FileResponse(STUDIO_DIR / name, media_type=ASSETS[name])
