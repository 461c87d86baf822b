"""`python -m worker`: the arq worker (`arq worker.settings.WorkerSettings`, but surviving Redis outages)."""
from __future__ import annotations

import asyncio
import logging
import os

import uvloop
from arq.worker import get_kwargs

from worker.settings import ResilientWorker, WorkerSettings


def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    ResilientWorker(**get_kwargs(WorkerSettings)).run()  # arq's run_worker, Redis outages survived


if __name__ == "__main__":
    main()
