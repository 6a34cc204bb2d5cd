"""The dashboard under /ui: server-rendered pages over the API's own stores and route functions.

``install(app)`` adds its routes (kept out of the OpenAPI document) and its static files;
the session cookie is described in ``service.ui.session``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from service.ui import pages, signin, submit

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    for module in (signin, pages, submit):
        app.include_router(module.router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")


__all__ = ["install"]
