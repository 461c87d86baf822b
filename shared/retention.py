"""Keep the last N months of raw sales; copy older months out, then drop their partitions.

    python -m shared.retention --keep-months 24 --archive /var/backups/sales   # archive, then drop
    python -m shared.retention --keep-months 24                                # drop without a copy
    python -m shared.retention --keep-months 24 --dry-run                      # say what would go

`--keep-months N` keeps the current UTC month and the N-1 before it; every older monthly
partition of `sales` goes, oldest first, each in one transaction:

1. `sales` is locked against writes (the worker waits, its sales safe in Redis; `sales` first,
   then the partition, in the order the writers take them, so the two never deadlock);
2. with `--archive DIR`, its rows are copied to `DIR/sales_YYYY_MM.csv.gz` (CSV with a header,
   written to a temporary name, synced, then renamed; a file of that name that holds other
   rows is never overwritten) beside `sales_YYYY_MM.csv.gz.sha256` (`sha256sum -c` checks
   it); the row count of the file must equal the partition's;
3. what its sales count in each rollup is added to the rollup's `_archived` twin, so that the
   rollups (and every report) keep their totals and reconciliation still finds no drift;
4. its idempotency keys are deleted, a line goes to `archived_months`, and the partition is
   detached and dropped.

A failure rolls the month back whole; a file already written stays, and running again writes
the same bytes (rows in id order, no timestamp in the gzip header), so it goes on. A sale of an
archived month that arrives later (a till offline longer than the months kept) is refused by
the API with 422 (api.sale_times); one already queued when its month went is filed in
dead_letter by the worker, with the reason (shared.partitions). Works the same on a
Citus coordinator.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gzip
import hashlib
import os
import pathlib
import re
import sys

import asyncpg

from shared import citus, db, partitions, rollups
from shared.settings import Settings

PARTITION_NAME = re.compile(r"sales_(\d{4})_(\d{2})")
PARTITIONS = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'sales'::regclass ORDER BY c.relname
"""


def cutoff(keep_months: int, now: dt.datetime | None = None) -> dt.date:
    """The first UTC month kept."""
    current = partitions.month_start((now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC))
    return partitions.add_months(current, -(keep_months - 1))


async def old_partitions(
    conn: asyncpg.Connection, keep_months: int, now: dt.datetime | None = None
) -> list[tuple[dt.date, str]]:
    """(month, partition) of every monthly partition older than the months kept, oldest first."""
    first_kept = cutoff(keep_months, now)
    found = []
    for row in await conn.fetch(PARTITIONS):
        match = PARTITION_NAME.fullmatch(row["relname"])
        if match:
            month = dt.date(int(match.group(1)), int(match.group(2)), 1)
            if month < first_kept:
                found.append((month, row["relname"]))
    return found


async def _copy_out(conn: asyncpg.Connection, partition: str, directory: pathlib.Path) -> tuple[pathlib.Path, str, int]:
    """The partition's rows as gzipped CSV in `directory`: (file, sha256 of the file, rows)."""
    # A command of its own: nothing else runs on its event loop, so blocking file calls are fine here.
    directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - see above
    final = directory / f"{partition}.csv.gz"
    partial = directory / f".{partition}.csv.gz.partial"
    with open(partial, "wb") as raw:  # noqa: ASYNC230 - see above
        with gzip.GzipFile(filename=f"{partition}.csv", mode="wb", fileobj=raw, mtime=0) as zipped:

            async def write(data: bytes) -> None:
                zipped.write(data)

            status = await conn.copy_from_query(
                f"SELECT * FROM {partition} ORDER BY id", output=write, format="csv", header=True
            )
        raw.flush()
        os.fsync(raw.fileno())
    checksum = _sha256(partial)  # of what is on disk
    if final.exists():
        if _sha256(final) != checksum:
            raise RuntimeError(
                f"{final} exists and holds other rows than {partition}: not overwritten "
                f"(move it away, then run again; the new copy is in {partial})"
            )
        partial.unlink()  # the same bytes, from an earlier run that did not commit
    else:
        os.replace(partial, final)
    _write_synced(directory / f"{partition}.csv.gz.sha256", f"{checksum}  {final.name}\n".encode())
    _sync_directory(directory)  # the names too, before the partition is dropped
    return final, checksum, int(status.split()[-1])


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_synced(path: pathlib.Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _sync_directory(directory: pathlib.Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def archive_month(
    conn: asyncpg.Connection, month: dt.date, partition: str, directory: pathlib.Path | None
) -> dict:
    """Archive and drop one month (one transaction); what was done."""
    async with conn.transaction():
        if await citus.has_citus(conn):
            # The rollups' foreign keys to reference tables make Citus refuse to detach the
            # partition after parallel multi-shard writes in the same transaction.
            await conn.execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")
        await conn.execute("LOCK TABLE sales IN ACCESS EXCLUSIVE MODE")  # DETACH needs it anyway
        sales = await conn.fetchval(f"SELECT count(*) FROM {partition}")
        file = checksum = None
        if directory is not None:
            path, checksum, copied = await _copy_out(conn, partition, directory)
            if copied != sales:
                raise RuntimeError(f"{partition}: {copied} rows copied to {path}, but it holds {sales}")
            file = str(path)
        for rollup in rollups.ROLLUPS:
            await conn.execute(rollups.archive_sql(rollup, partition))
        await conn.execute(
            f"DELETE FROM sale_keys k USING {partition} s WHERE k.store_id = s.store_id AND k.sale_id = s.id"
        )
        await conn.execute(
            "INSERT INTO archived_months (month, sales, file, sha256) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (month) DO UPDATE SET sales = archived_months.sales + EXCLUDED.sales, "
            "file = EXCLUDED.file, sha256 = EXCLUDED.sha256, archived_at = now()",
            month,
            sales,
            file,
            checksum,
        )
        # Every API process reloads its catalogue, which holds the archived months: from now on
        # a sale of this month is refused up front (api.sale_times).
        await conn.execute("SELECT pg_notify('catalogue_changed', '')")
        await conn.execute(f"ALTER TABLE sales DETACH PARTITION {partition}")
        await conn.execute(f"DROP TABLE {partition}")
    return {"month": month.isoformat()[:7], "partition": partition, "sales": sales, "file": file, "sha256": checksum}


async def run(
    database_url: str,
    keep_months: int,
    directory: pathlib.Path | None,
    dry_run: bool = False,
    now: dt.datetime | None = None,
    echo=print,
) -> list[dict]:
    conn = await db.connect(database_url, timeout=30)
    try:
        old = await old_partitions(conn, keep_months, now)
        if not old:
            echo(f"nothing older than {cutoff(keep_months, now).isoformat()[:7]}: no month to archive")
            return []
        done = []
        for number, (month, partition) in enumerate(old, start=1):
            label = f"[{number}/{len(old)}] {month.isoformat()[:7]}"
            if dry_run:
                count = await conn.fetchval(f"SELECT count(*) FROM {partition}")
                echo(f"{label}: would archive {count} sales from {partition}")
                continue
            result = await archive_month(conn, month, partition, directory)
            where = f" to {result['file']} (sha256 {result['sha256'][:16]}...)" if result["file"] else " (no copy kept)"
            echo(f"{label}: {result['sales']} sales archived{where}, {partition} dropped")
            done.append(result)
        return done
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.retention", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keep-months",
        type=int,
        required=True,
        help="months of raw sales to keep, the current one included (at least 1)",
    )
    parser.add_argument(
        "--archive",
        type=pathlib.Path,
        metavar="DIR",
        help="copy each month's rows here (gzipped CSV + sha256) before dropping it",
    )
    parser.add_argument("--dry-run", action="store_true", help="only say which months would go")
    args = parser.parse_args(argv)
    if args.keep_months < 1:
        parser.error("--keep-months must be at least 1 (the current month is always kept)")
    asyncio.run(run(Settings.from_env().database_url, args.keep_months, args.archive, args.dry_run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
