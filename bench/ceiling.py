"""The ceiling: an aiohttp handler that only decodes and encodes JSON, two processes on one port.

    PORT=18070 python -m bench.ceiling

Not a design anyone would ship (it stores nothing); it shows what aiohttp itself costs on
this machine, so the product's numbers can be read against it.
"""

from __future__ import annotations

import asyncio
import os

import msgspec
import uvloop
from aiohttp import web


async def echo(request: web.Request) -> web.Response:
    sale = msgspec.json.decode(await request.read())
    return web.Response(
        body=msgspec.json.encode({"id": 1, "sale_time": "2026-01-01T00:00:00+00:00", **sale}),
        status=202,
        content_type="application/json",
    )


def main() -> None:
    app = web.Application()
    app.router.add_post("/sales/", echo)
    app.router.add_get("/", lambda _request: asyncio.sleep(0, web.Response(text="ceiling")))
    for _ in range(int(os.environ.get("CEILING_PROCESSES", "2")) - 1):
        if os.fork() == 0:
            break
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(app, port=int(os.environ.get("PORT", "18070")), reuse_port=True, access_log=None, print=None)


if __name__ == "__main__":
    main()
