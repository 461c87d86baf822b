"""`python -m worker`: the arq worker (same as `arq worker.settings.WorkerSettings`)."""
from __future__ import annotations

import asyncio
import logging
import os

import uvloop
from arq import run_worker

from worker.settings import WorkerSettings


def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    run_worker(WorkerSettings)


if __name__ == "__main__":
    main()
