"""Throwaway servers for the tests that must own theirs: fault scenarios and the Citus suite.

Each lives in a temporary directory on a free loopback port and is stopped, killed or
restarted at will; the shared PostgreSQL and Redis of the machine are never touched.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def as_postgres_user(args: list[str]) -> list[str]:
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        return ["runuser", "-u", "postgres", "--", *args]
    return args


def tail(path: pathlib.Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def pg_bin(name: str) -> str:
    """initdb and pg_ctl are not on PATH on Debian: they live beside the server's binaries."""
    found = shutil.which(name)
    if found:
        return found
    bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
    return str(pathlib.Path(bindir) / name)


class PgServer:
    """A PostgreSQL cluster of its own: initdb'd in a temporary directory, trust auth.

    `initdb=False` leaves the data directory to the caller (`make_standby` fills it with
    pg_basebackup)."""

    def __init__(
        self, *, settings: dict[str, str] | None = None, prefix: str = "fault-pg-", initdb: bool = True
    ) -> None:
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = free_port()
        self.settings = {
            "max_connections": "200",
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "64MB",
            **(settings or {}),
        }
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        if not initdb:
            return
        subprocess.run(
            as_postgres_user(
                [
                    pg_bin("initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )

    def _ctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return subprocess.run(
            as_postgres_user([pg_bin("pg_ctl"), "-D", str(self.data), *args]),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} " + " ".join(
            f"-c {name}={value}" for name, value in self.settings.items()
        )
        result = self._ctl("-l", str(self.log), "-w", "-t", "60", "-o", options, "start")
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {result.stderr}\n{tail(self.log)}")

    def stop(self, mode: str = "fast") -> None:
        """`fast` disconnects clients and shuts down cleanly; `immediate` is a crash."""
        self._ctl("-m", mode, "-w", "-t", "60", "stop")

    def kill(self) -> None:
        self.stop("immediate")

    def running(self) -> bool:
        return self._ctl("status", timeout=30).returncode == 0

    def ensure_running(self) -> None:
        if not self.running():
            self.start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres", timeout: float = 30) -> str:
        """One statement's result, unaligned (`psql -Atc`)."""
        result = subprocess.run(
            [pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database, "-Atc", sql],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql on port {self.port} failed: {result.stderr}")
        return result.stdout.strip()

    def postmaster_pid(self) -> int | None:
        """The first line of postmaster.pid, while the server runs."""
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def pids(self) -> list[int]:
        """The postmaster and every process it forked (backends, WAL writer, walsender...)."""
        postmaster = self.postmaster_pid()
        if postmaster is None:
            return []
        pids = [postmaster]
        for entry in pathlib.Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    # the field after the ")" that ends the command name: state, then ppid
                    if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                        pids.append(int(entry.name))
        return pids

    def sigkill_and_delete(self) -> None:
        """The machine is lost: `kill -9` of the postmaster (and of the processes it forked, as
        they would die with the machine), then its data directory deleted."""
        pids = self.pids()
        for pid in pids:  # the postmaster first
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(map(_alive, pids)):
            time.sleep(0.02)
        shutil.rmtree(self.data, ignore_errors=True)

    def make_standby(self, *, name: str = "standby", settings: dict[str, str] | None = None) -> PgServer:
        """A streaming standby of this (running) server on its own port, not yet started.

        `pg_basebackup -R -X stream` through a physical replication slot (initdb's pg_hba trusts
        `replication` from 127.0.0.1, and wal_level=replica and max_wal_senders=10 are the
        defaults); its `primary_conninfo` names it `name`, which this server's
        `synchronous_standby_names` can then list. The standby takes this server's settings
        (plus `settings`) except `synchronous_standby_names`: once promoted it has no standby of
        its own, and a commit waiting for one would wait forever.
        """
        own = {k: v for k, v in self.settings.items() if k != "synchronous_standby_names"}
        standby = PgServer(settings={**own, **(settings or {})}, prefix=f"{self.dir.name}-{name}-", initdb=False)
        slot = name.replace("-", "_")
        result = subprocess.run(
            as_postgres_user(
                [
                    pg_bin("pg_basebackup"),
                    "-D",
                    str(standby.data),
                    "-R",
                    "-X",
                    "stream",
                    "-C",
                    "-S",
                    slot,
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    "--checkpoint=fast",
                ]
            ),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pg_basebackup failed: {result.stderr}")
        # -R wrote primary_conninfo without a name; a later line of the same file wins
        with open(standby.data / "postgresql.auto.conf", "a") as handle:
            handle.write(
                f"primary_conninfo = 'host=127.0.0.1 port={self.port} user=postgres application_name={name}'\n"
            )
        return standby

    def in_recovery(self) -> bool:
        return self.psql("SELECT pg_is_in_recovery()") == "t"

    def promote(self, timeout: float = 60) -> None:
        """`pg_ctl promote`, then wait until the server accepts writes."""
        result = self._ctl("promote", "-w", "-t", str(int(timeout)), timeout=timeout + 10)
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl promote failed: {result.stderr}\n{tail(self.log)}")
        deadline = time.monotonic() + timeout
        while self.in_recovery():
            if time.monotonic() > deadline:
                raise RuntimeError(f"still in recovery {timeout} s after pg_ctl promote\n{tail(self.log)}")
            time.sleep(0.1)

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class SilentProxy:
    """A TCP relay in front of a server, which can go silent: `silence()` and from then on it
    relays nothing, either way, on the connections it has and on new ones it accepts, and closes
    none of them. To a client that is a server host gone dark without a word (a machine lost or a
    network partition, as a client behind a load balancer sees it): no RST, no FIN, no refusal;
    only its own timeouts end the wait. A server on the same machine that dies instead resets
    its connections and refuses new ones at once, which every client notices."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.silent = threading.Event()
        self._stopped = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True, name=f"proxy-{self.port}").start()

    def silence(self) -> None:
        self.silent.set()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._sockets.append(client)
            if self.silent.is_set():
                continue  # accepted (the kernel did), never answered
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            self._sockets.append(upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(None)
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if self.silent.is_set():
                return  # nothing more either way, and nobody is told
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            try:
                sink.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._stopped.set()
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()
