"""A throwaway Citus cluster on this machine: a coordinator and two workers on free local ports.

Used by the Citus test suite (tests/citus) and the Citus benchmark (bench/citus.py); by hand:

    python -m tests.citus.cluster          # builds Citus if citus.so is missing, starts the
                                           # cluster, prints its DATABASE_URL, stops on Ctrl-C

Citus is built from ../shared/vendor/citus by scripts/build-citus.sh when the machine's
PostgreSQL has no citus.so (about 3 minutes, once per machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable

import asyncpg

from tests.servers import PgServer

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build-citus.sh"

# Citus's own advice for a node; fsync off because the data is thrown away.
NODE_SETTINGS = {
    "shared_preload_libraries": "citus",
    "max_connections": "300",
    "max_prepared_transactions": "300",  # two-phase commit of multi-node transactions
    "wal_level": "logical",
    "shared_buffers": "128MB",
}


def citus_installed() -> bool:
    libdir = subprocess.run(["pg_config", "--pkglibdir"], capture_output=True, text=True).stdout.strip()
    return (pathlib.Path(libdir) / "citus.so").exists()


def ensure_citus_built() -> None:
    if citus_installed():
        return
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1800)
    if result.returncode != 0 or not citus_installed():
        raise RuntimeError(f"building Citus failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")


_DISCONNECT = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"


class CitusCluster:
    """Coordinator + `workers` worker nodes, each a PgServer with Citus preloaded."""

    def __init__(self, workers: int = 2, settings: dict[str, str] | None = None):
        ensure_citus_built()
        node_settings = {**NODE_SETTINGS, **(settings or {})}
        self.coordinator = PgServer(settings=node_settings, prefix="citus-coord-")
        self.workers = [PgServer(settings=node_settings, prefix=f"citus-worker{n}-") for n in range(workers)]
        self.databases: list[str] = []

    @property
    def nodes(self) -> list[PgServer]:
        return [self.coordinator, *self.workers]

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        asyncio.run(self._setup_database("postgres"))

    async def _setup_database(self, name: str) -> None:
        """CREATE EXTENSION citus in `name` on every node, then register the workers."""
        for node in self.nodes:
            conn = await asyncpg.connect(node.url(name), timeout=30)
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
            finally:
                await conn.close()
        conn = await asyncpg.connect(self.coordinator.url(name), timeout=30)
        try:
            await conn.execute("SELECT citus_set_coordinator_host('127.0.0.1', $1)", self.coordinator.port)
            for worker in self.workers:
                await conn.execute("SELECT citus_add_node('127.0.0.1', $1)", worker.port)
        finally:
            await conn.close()

    async def create_database(self, name: str) -> str:
        """A new database with Citus set up on every node (Citus 13 propagates CREATE DATABASE,
        but each node's extension and the node list are per database); its coordinator URL."""
        conn = await asyncpg.connect(self.coordinator.url(), timeout=30)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        for worker in self.workers:  # when CREATE DATABASE was not propagated
            conn = await asyncpg.connect(worker.url(), timeout=30)
            try:
                if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name):
                    await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()
        await self._setup_database(name)
        self.databases.append(name)
        return self.coordinator.url(name)

    async def make_template(self, name: str, prepare: Callable[[str], Awaitable[None]]) -> None:
        """A database made and prepared once (`prepare(url)`: migrated, so distributed) for
        `copy_database` to copy on every node. A copy takes a tenth of the time of making and
        migrating one: each worker's copy holds its shards, and the coordinator's metadata names
        the nodes, not the database, so a copy's queries go to the copies beside it."""
        url = await self.create_database(name)
        await prepare(url)
        for node in self.nodes:
            conn = await asyncpg.connect(node.url(), timeout=30)
            try:
                # A template in use cannot be copied, and Citus's maintenance daemon (and its own
                # connections) would come back at once: nobody may connect to it from now on.
                await conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
                await conn.execute(_DISCONNECT, name)
            finally:
                await conn.close()

    async def copy_database(self, template: str, name: str) -> str:
        """A copy of `template` (`make_template`) on every node; its coordinator URL."""
        for node in self.nodes:
            conn = await asyncpg.connect(node.url(), timeout=30)
            try:
                await conn.execute("SET citus.enable_create_database_propagation = off")
                for attempt in range(50):
                    try:
                        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
                        break
                    except asyncpg.ObjectInUseError:  # a connection of before the ALTER, ending
                        if attempt == 49:
                            raise
                        await conn.execute(_DISCONNECT, template)
                        await asyncio.sleep(0.1)
            finally:
                await conn.close()
        self.databases.append(name)
        return self.coordinator.url(name)

    async def drop_database(self, name: str) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                conn = await asyncpg.connect(node.url(), timeout=30)
                try:
                    await conn.execute("SET citus.enable_create_database_propagation = off")
                    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                finally:
                    await conn.close()

    def destroy(self) -> None:
        for node in self.nodes:
            node.destroy()


def main() -> None:
    cluster = CitusCluster()
    try:
        cluster.start()
        print(f"coordinator: DATABASE_URL={cluster.coordinator.url()}")
        for n, worker in enumerate(cluster.workers, start=1):
            print(f"worker {n}:    {worker.url()}")
        print("Ctrl-C stops the cluster and deletes its data")
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.destroy()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    sys.exit(main())
