"""`python -m worker`: the arq worker (`arq worker.settings.WorkerSettings`, but surviving Redis outages)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

import uvloop
from arq.worker import get_kwargs

from shared.settings import Settings


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    try:
        Settings.from_env()  # a configuration mistake is one clear line, not a traceback at import
    except ValueError as exc:
        logging.getLogger("worker").error("configuration error: %s", exc)
        sys.exit(2)
    from worker.settings import ResilientWorker, WorkerSettings

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # arq's own types are wrong here: get_kwargs answers dict[str, NameError], and takes a protocol that a
    # settings class as arq documents it (on_startup = a function) does not satisfy
    kwargs: dict[str, Any] = get_kwargs(WorkerSettings)  # type: ignore[arg-type]
    ResilientWorker(**kwargs).run()  # arq's run_worker, Redis outages survived


if __name__ == "__main__":
    main()
