"""What every benchmark script shares: databases, processes, wrk, memory, tables.

Everything a script starts is stopped and everything it creates is dropped at exit
(databases, the keys of its Redis DB), unless --keep is given.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import redis as redis_sync

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
# Where the product's processes (and its seeding CLI) run from: another checkout to measure an
# earlier revision with this checkout's scripts (bench.reports_under_ingest --before).
PRODUCT_ROOT = ROOT
PYTHON = sys.executable

PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# Without BENCH_REDIS_URL the benchmarks start their own Redis configured as in
# docker-compose.yml (AOF, fsync before every reply), so the numbers include durability.
REDIS_BASE = os.environ.get("BENCH_REDIS_URL")
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "12"))
REDIS_PREFIX = "bench:"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--baseline-port", type=int, default=18090)
    parser.add_argument("--product-port", type=int, default=18080)
    parser.add_argument("--keep", action="store_true", help="leave the databases and Redis keys behind")
    # the catalogue size issue 4 names, the same in every benchmark
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--stores", type=int, default=1_000)
    return parser


def command_line() -> str:
    module = Path(sys.argv[0]).resolve()
    try:
        name = "python -m " + ".".join(module.relative_to(ROOT).with_suffix("").parts)
    except ValueError:
        name = "python " + sys.argv[0]
    return " ".join([name, *map(shlex.quote, sys.argv[1:])])


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, load average at start {load[0]:.2f}"
    )


def ensure_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        log(f"installing {' '.join(missing)}")
        subprocess.run(["apt-get", "install", "-y", *missing], check=True)


# ---------------------------------------------------------------------------------------------
# Cleanup

_cleanups: list = []


def on_exit(func, *args) -> None:
    _cleanups.append((func, args))


def _run_cleanups() -> None:
    while _cleanups:
        func, args = _cleanups.pop()
        try:
            func(*args)
        except Exception as exc:  # noqa: BLE001 - clean up as much as possible
            log(f"cleanup {getattr(func, '__name__', func)} failed: {exc}")


atexit.register(_run_cleanups)


def _signal_exit(signum, _frame):
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _signal_exit)
signal.signal(signal.SIGINT, _signal_exit)


# ---------------------------------------------------------------------------------------------
# PostgreSQL and Redis


def db_url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


_private_redis: str | None = None
private_redis_pid: int | None = None  # the redis-server this run started (for CPU accounting)


def _start_private_redis() -> str:
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="bench-redis-")
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            directory,
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    global private_redis_pid
    private_redis_pid = process.pid
    on_exit(shutil.rmtree, directory, True)
    on_exit(process.wait)
    on_exit(process.terminate)
    client = redis_sync.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis_sync.ConnectionError:
            time.sleep(0.05)
    client.close()
    log(f"private Redis on port {port} (appendonly yes, appendfsync always)")
    return f"redis://127.0.0.1:{port}"


def redis_url() -> str:
    global _private_redis
    if REDIS_BASE:
        return f"{REDIS_BASE}/{REDIS_DB}"
    if _private_redis is None:
        _private_redis = _start_private_redis()
    return f"{_private_redis}/{REDIS_DB}"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_database(name: str, keep: bool = False) -> str:
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    if not keep:
        on_exit(lambda: asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')))
    return db_url(name)


def clean_redis() -> None:
    """Delete this benchmark's keys (the product's prefix and arq's) from its own Redis DB."""
    client = redis_sync.Redis.from_url(redis_url())
    try:
        for pattern in (REDIS_PREFIX + "*", "arq:*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
    finally:
        client.close()


def redis_memory() -> dict[str, int]:
    """used_memory of the benchmark's Redis and the keys of its DB."""
    client = redis_sync.Redis.from_url(redis_url())
    try:
        return {"used_memory": int(client.info("memory")["used_memory"]), "keys": int(client.dbsize())}
    finally:
        client.close()


async def fetchval(url: str, sql: str, *args):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def fetchrow_sync(url: str, sql: str, *args) -> dict:
    async def fetch():
        conn = await asyncpg.connect(url)
        try:
            return dict(await conn.fetchrow(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(fetch())


def count_sales(url: str) -> int:
    return asyncio.run(fetchval(url, "SELECT count(*) FROM sales"))


# ---------------------------------------------------------------------------------------------
# Processes


class CpuCap:
    """A cgroup of its own capped at `percent` of one core (cgroup v1 cpu controller, as root):
    a process run in it is measured as if on a small machine of its own. `command(args)` runs
    `args` in it (the process joins before it execs, so nothing runs uncapped); `remove()` once
    the process has gone."""

    ROOT = Path("/sys/fs/cgroup/cpu")

    def __init__(self, name: str, percent: int):
        if not (self.ROOT / "cpu.cfs_quota_us").exists():
            raise RuntimeError(f"no cgroup v1 cpu controller at {self.ROOT} (needed to cap a process's CPU)")
        self.path = self.ROOT / f"bench_{name}_{os.getpid()}"
        self.path.mkdir()
        (self.path / "cpu.cfs_period_us").write_text("100000")
        (self.path / "cpu.cfs_quota_us").write_text(str(percent * 1000))
        on_exit(self.remove)

    def command(self, args: list[str]) -> list[str]:
        return ["sh", "-c", f'echo $$ > {self.path}/cgroup.procs && exec "$@"', "sh", *args]

    def remove(self) -> None:
        for _ in range(50):  # the group can go only once its processes have
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


class Service:
    """A process group we started (the launcher and the processes it forks)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], port: int | None):
        self.name = name
        self.port = port
        self.logfile = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the service; stop() removes it
            prefix=f"bench-{name}-", suffix=".log", delete=False
        )
        full_env = {**os.environ, **env}
        self.proc = subprocess.Popen(
            args, cwd=PRODUCT_ROOT, env=full_env, stdout=self.logfile, stderr=subprocess.STDOUT, start_new_session=True
        )
        on_exit(self.stop)
        log(f"started {name} (pid {self.proc.pid}, log {self.logfile.name})")

    def pids(self) -> list[int]:
        """The launcher and all its descendants."""
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            try:
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
        return found

    def wait_http(self, path: str = "/", timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                status, _ = http_get(self.port, path, timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not answering {path} after {timeout} s; log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(Path(self.logfile.name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def errors_in_log(self) -> list[str]:
        text = Path(self.logfile.name).read_text(errors="replace")
        return [line for line in text.splitlines() if re.search(r"ERROR|Traceback|CRITICAL", line)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        with contextlib.suppress(OSError):
            os.unlink(self.logfile.name)


def http_get(port: int, path: str, timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def product_env(database_url: str, port: int) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url(),
        "REDIS_KEY_PREFIX": REDIS_PREFIX,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
        "PYTHONUNBUFFERED": "1",
    }


def seed_product(database_url: str, items: int, stores: int, sales: int) -> float:
    """Fill the product's database with the seeding CLI; returns its wall time."""
    env = {**os.environ, **product_env(database_url, 0)}
    cmd = [
        PYTHON,
        "-m",
        "shared.seed",
        "--items",
        str(items),
        "--stores",
        str(stores),
        "--sales",
        str(sales),
        "--seed",
        "1",
    ]
    log(f"seeding product: {' '.join(cmd[1:])}")
    started = time.perf_counter()
    subprocess.run(cmd, cwd=PRODUCT_ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


def prepare_databases(args) -> tuple[str, str]:
    """Fresh product and baseline databases holding the same catalogue and no sales."""
    product_url = create_database("bench_product", args.keep)
    baseline_url = create_database("bench_baseline", args.keep)
    clean_redis()
    if not args.keep:
        on_exit(clean_redis)
    seed_product(product_url, args.items, args.stores, 0)
    copy_to_baseline(product_url, baseline_url, with_sales=False)
    return product_url, baseline_url


def start_product(database_url: str, port: int, worker: bool = True) -> tuple[Service, Service | None]:
    env = product_env(database_url, port)
    api = Service("product-api", [PYTHON, "-m", "api"], env, port)
    api.wait_http("/health")
    wrk = None
    if worker:
        wrk = Service("product-worker", [PYTHON, "-m", "worker"], env, None)
        time.sleep(1.0)
        if wrk.proc.poll() is not None:
            raise RuntimeError(f"worker exited: {wrk.log_tail()}")
    return api, wrk


def start_baseline(database_url: str, port: int) -> Service:
    svc = Service(
        "baseline",
        [PYTHON, "-m", "bench.baseline"],
        {"DATABASE_URL": database_url, "PORT": str(port), "HOST": "127.0.0.1"},
        port,
    )
    svc.wait_http("/items/")
    return svc


async def _copy_query(src_url: str, dst_url: str, query: str, table: str, columns: list[str]) -> None:
    """Stream `query` (binary COPY) from one database into `table` of another."""
    src = await asyncpg.connect(src_url)
    dst = await asyncpg.connect(dst_url)
    chunks: asyncio.Queue = asyncio.Queue(maxsize=64)

    async def sink(chunk: bytes) -> None:
        await chunks.put(bytes(chunk))

    async def source():
        while (chunk := await chunks.get()) is not None:
            yield chunk

    async def produce():
        try:
            await src.copy_from_query(query, output=sink, format="binary")
        finally:
            await chunks.put(None)

    try:
        await asyncio.gather(produce(), dst.copy_to_table(table, source=source(), columns=columns, format="binary"))
    finally:
        await src.close()
        await dst.close()


async def _copy_to_baseline(product_url: str, baseline_url: str, with_sales: bool) -> None:
    from bench.baseline.app import create_schema

    conn = await asyncpg.connect(baseline_url)
    try:
        await create_schema(conn)
        await conn.execute("TRUNCATE returns, sales, item, store RESTART IDENTITY")
    finally:
        await conn.close()
    await _copy_query(product_url, baseline_url, "SELECT id, address FROM store", "store", ["id", "address"])
    await _copy_query(product_url, baseline_url, "SELECT id, name, price FROM item", "item", ["id", "name", "price"])
    conn = await asyncpg.connect(baseline_url)
    try:
        if with_sales:
            # The same sales in the seed's types: int id, timestamp (UTC) without zone. The
            # foreign keys are dropped for the load and added back (validated) after it.
            fks = await conn.fetch(
                "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint "
                "WHERE conrelid = 'sales'::regclass AND contype = 'f'"
            )
            for fk in fks:
                await conn.execute(f'ALTER TABLE sales DROP CONSTRAINT "{fk["conname"]}"')
            await _copy_query(
                product_url,
                baseline_url,
                "SELECT id::int, (sale_time AT TIME ZONE 'UTC'), item_id, store_id FROM sales",
                "sales",
                ["id", "sale_time", "item_id", "store_id"],
            )
            for fk in fks:
                await conn.execute(f'ALTER TABLE sales ADD CONSTRAINT "{fk["conname"]}" {fk["def"]}')
            await _copy_query(
                product_url,
                baseline_url,
                "SELECT id::int, sale_id::int, (return_time AT TIME ZONE 'UTC'), item_id, store_id, "
                "quantity FROM returns",
                "returns",
                ["id", "sale_id", "return_time", "item_id", "store_id", "quantity"],
            )
        for table in ("store", "item", "sales", "returns"):
            await conn.execute(
                f"SELECT setval('{table}_id_seq', (SELECT coalesce(max(id), 0) + 1 FROM {table}), false)"
            )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def copy_to_baseline(product_url: str, baseline_url: str, with_sales: bool = True) -> float:
    started = time.perf_counter()
    asyncio.run(_copy_to_baseline(product_url, baseline_url, with_sales))
    return time.perf_counter() - started


async def _active_queries(database: str) -> int:
    return await fetchval(
        PG_ADMIN_URL,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active' AND pid <> pg_backend_pid()",
        database,
    )


def wait_idle(database: str, timeout: float = 600) -> float:
    """Wait until no query runs in `database` (a server may still work off requests whose
    client is gone, e.g. after wrk stopped); seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if asyncio.run(_active_queries(database)) == 0:
            return time.monotonic() - started
        time.sleep(0.2)
    raise RuntimeError(f"queries still running in {database} after {timeout} s")


async def _cancel_active(database: str) -> int:
    return await fetchval(
        PG_ADMIN_URL,
        "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = $1 AND state = 'active' AND pid <> pg_backend_pid()",
        database,
    )


def cancel_until_idle(database: str, timeout: float = 600) -> tuple[float, int]:
    """Cancel the queries running in `database` until none has run for a second (the server
    is working off requests whose client is gone); seconds taken and queries cancelled."""
    started = time.monotonic()
    cancelled, quiet_since = 0, None
    while time.monotonic() - started < timeout:
        n = asyncio.run(_cancel_active(database))
        cancelled += n
        if n:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 1.0:
            return time.monotonic() - started, cancelled
        time.sleep(0.1)
    raise RuntimeError(f"queries still running in {database} after {timeout} s")


def settle(url: str, product_port: int | None = None) -> float:
    """After a load: let requests still in flight finish, then wait until every accepted sale
    is in `sales` (the product's queue drained) and no query runs; seconds waited."""
    started = time.monotonic()
    time.sleep(0.5)
    if product_port:
        wait_drained(product_port)
    wait_idle(url.rsplit("/", 1)[1])
    return time.monotonic() - started


def queue_depth(port: int) -> int:
    status, body = http_get(port, "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    match = re.search(rb"^queue_depth_sales\s+([0-9.e+]+)", body, re.M)
    if not match:
        raise RuntimeError("no queue_depth_sales in /metrics")
    return int(float(match.group(1)))


def wait_drained(port: int, timeout: float = 600) -> float:
    """Wait until the product's queue is empty (GET /metrics queue_depth_sales == 0); seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if queue_depth(port) == 0:
            return time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError(f"queue not drained after {timeout} s (depth {queue_depth(port)})")


# ---------------------------------------------------------------------------------------------
# wrk


def wrk(
    port: int,
    path: str,
    script: str,
    duration: float,
    connections: int = 64,
    threads: int = 2,
    env: dict[str, str] | None = None,
    timeout_s: int = 10,
) -> dict:
    """Run wrk with `script` (a path relative to the repository, e.g. bench/post_sale.lua).

    Returns its summary plus `ok` (2xx/3xx answers), `rps`, `cmd`.
    """
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={timeout_s}s",
        "-s",
        script,
        f"http://127.0.0.1:{port}{path}",
    ]
    result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    line = next((out for out in result.stdout.splitlines() if out.startswith("WRKJSON ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stdout}\n{result.stderr}")
    stats = json.loads(line[len("WRKJSON ") :])
    stats["ok"] = stats["requests"] - stats["status"]
    seconds = stats["duration_us"] / 1e6
    stats["seconds"] = seconds
    stats["rps"] = stats["requests"] / seconds
    stats["ok_rps"] = stats["ok"] / seconds
    stats["socket_errors"] = stats["connect"] + stats["read"] + stats["write"] + stats["timeout"]
    env_part = " ".join(f"{k}={v}" for k, v in (env or {}).items())
    stats["cmd"] = (env_part + " " if env_part else "") + " ".join(map(shlex.quote, cmd))
    return stats


# ---------------------------------------------------------------------------------------------
# Memory


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of a live process, MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def memory_rows(services: dict[str, Service]) -> list[list[str]]:
    """Per process kind: how many processes, each one's peak RSS, their sum."""
    rows = []
    for kind, svc in services.items():
        if svc is None:
            continue
        peaks = [(pid, peak_rss_mb(pid)) for pid in svc.pids()]
        peaks = [(pid, mb) for pid, mb in peaks if mb is not None]
        launcher = [mb for pid, mb in peaks if pid == svc.proc.pid]
        children = [mb for pid, mb in peaks if pid != svc.proc.pid]
        if children:  # a launcher that forks the serving processes
            rows.append(
                [
                    f"{kind}: serving processes",
                    str(len(children)),
                    ", ".join(f"{mb:.0f}" for mb in children),
                    f"{sum(children):.0f}",
                ]
            )
            rows.append([f"{kind}: launcher", "1", f"{launcher[0]:.0f}" if launcher else "?", f"{sum(launcher):.0f}"])
        else:
            rows.append([kind, str(len(launcher)), ", ".join(f"{mb:.0f}" for mb in launcher), f"{sum(launcher):.0f}"])
    return rows


def print_memory(services: dict[str, Service]) -> None:
    print("\nPeak RSS (VmHWM from /proc/PID/status, MB), read at the end of the run:\n")
    print(table(["process kind", "processes", "peak RSS per process (MB)", "sum (MB)"], memory_rows(services)))


# ---------------------------------------------------------------------------------------------
# Output


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def ratio(product: float, baseline: float) -> str:
    if not baseline:
        return "n/a"
    r = product / baseline
    return f"{r:.0f}x" if r >= 100 else f"{r:.2f}x" if r >= 0.1 else f"{r:.3f}x" if r >= 0.001 else f"{r:.1e}x"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def header(title: str) -> None:
    print(f"## {title}\n")
    print(f"Command: `{command_line()}`  ")
    print(f"Machine: {machine()}  ")
    print(f"Date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
