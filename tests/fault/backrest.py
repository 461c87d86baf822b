"""pgBackRest around a throwaway PostgreSQL, for the restore drill (test_restore_drill.py).

The configuration is the shipped one (deploy/pgbackrest/pgbackrest.conf and postgresql.conf),
with only the paths, the port and archive_timeout changed to the drill's: repository, spool,
locks and logs live in a temporary directory owned by `postgres`, and every pgbackrest command
runs as `postgres` (as the server does, and as its archive_command does).
"""

from __future__ import annotations

import configparser
import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

from tests.servers import PgServer, as_postgres_user, free_port, tail

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "pgbackrest"
STANZA = "sales"


def _chown_postgres(path: pathlib.Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


class Backrest:
    """A pgBackRest repository in a temporary directory, configured from deploy/pgbackrest."""

    def __init__(self) -> None:
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="drill-backrest-"))
        self.config = self.dir / "pgbackrest.conf"
        self.repo = self.dir / "repo"
        self.spool = self.dir / "spool"
        self.locks = self.dir / "lock"
        self.logs = self.dir / "log"
        _chown_postgres(self.dir)
        for path in (self.repo, self.spool, self.locks, self.logs):
            path.mkdir(mode=0o750)
            _chown_postgres(path)

    @property
    def archive_command(self) -> str:
        """The shipped archive_command, pointed at this configuration file."""
        return f"pgbackrest --config={self.config} --stanza={STANZA} archive-push %p"

    def write_config(self, pg: PgServer) -> None:
        parser = configparser.ConfigParser(interpolation=None, strict=True)
        parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep option names as written
        parser.read(DEPLOY / "pgbackrest.conf")
        parser["global"].update(
            {
                "repo1-path": str(self.repo),
                "spool-path": str(self.spool),
                "lock-path": str(self.locks),
                "log-path": str(self.logs),
            }
        )
        parser[STANZA].update(
            {"pg1-path": str(pg.data), "pg1-port": str(pg.port), "pg1-socket-path": str(pg.dir), "pg1-user": "postgres"}
        )
        with open(self.config, "w") as handle:
            parser.write(handle, space_around_delimiters=False)
        _chown_postgres(self.config)

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """pgbackrest --config=... --stanza=sales ARGS as postgres; raises with its output on failure."""
        command = as_postgres_user(["pgbackrest", f"--config={self.config}", f"--stanza={STANZA}", *args])
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
                f"\n{self.log_tail()}"
            )
        return result

    def info(self) -> dict:
        return json.loads(self.run("info", "--output=json").stdout)[0]

    def log_tail(self) -> str:
        return "\n".join(f"--- {path.name}\n{tail(path, 20)}" for path in sorted(self.logs.glob("*.log")))

    def destroy(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def postgresql_conf_lines(archive_command: str, archive_timeout: int) -> str:
    """deploy/pgbackrest/postgresql.conf with the drill's archive_command and archive_timeout."""
    text = (DEPLOY / "postgresql.conf").read_text()
    assert "archive_command = 'pgbackrest --stanza=sales archive-push %p'" in text
    text = text.replace("'pgbackrest --stanza=sales archive-push %p'", f"'{archive_command}'")
    text, replaced = re.subn(r"(?m)^archive_timeout = \d+$", f"archive_timeout = {archive_timeout}", text)
    assert replaced == 1
    return "\n# from deploy/pgbackrest/postgresql.conf (test_restore_drill)\n" + text


class ArchivingPgServer(PgServer):
    """A throwaway PostgreSQL whose postgresql.conf carries the shipped archiving lines."""

    def __init__(self, backrest: Backrest, *, archive_timeout: int) -> None:
        # fsync stays off (a test server); full_page_writes on, as in production
        super().__init__(settings={"full_page_writes": "on"}, prefix="drill-pg-")
        with open(self.data / "postgresql.conf", "a") as handle:
            handle.write(postgresql_conf_lines(backrest.archive_command, archive_timeout))


class RestoredPgServer(PgServer):
    """An empty data directory on a new port for `pgbackrest restore`; no initdb."""

    def __init__(self) -> None:  # PgServer's own __init__ would initdb
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="drill-restored-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = free_port()
        self.settings = {"max_connections": "200", "fsync": "off", "shared_buffers": "64MB"}
        self.data.mkdir(mode=0o700)
        _chown_postgres(self.dir)
        _chown_postgres(self.data)
