"""GET /: the owners' home page."""

from __future__ import annotations

import pathlib

from aiohttp import web

_PAGE = (pathlib.Path(__file__).parent.parent / "static" / "index.html").read_bytes()


async def index(request: web.Request) -> web.Response:
    return web.Response(body=_PAGE, content_type="text/html", charset="utf-8")
