"""Sales (and returns) the worker could never write: list them, and replay them once the cause
is fixed.

    python -m worker.dead_letters list [--all]      # pending ones (or every one, replayed too)
    python -m worker.dead_letters replay [--id N]   # write them again (all pending, or one)

A replay goes through the worker's own write path (worker.writer.insert_rows:
INSERT ... ON CONFLICT DO NOTHING, rollups fed only by what was inserted), one dead
letter per savepoint inside one transaction per letter, so it is exactly-once: a sale already
stored (replayed before, or redelivered meanwhile) is not counted again. A letter that
replays is marked `replayed_at`; one that still fails stays pending with the new reason.

Exit status: 0 when everything asked for was replayed (or there was nothing to do), 1 when
some letters still fail, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import sys

import asyncpg
import msgspec

from shared.db import create_pool
from shared.queue import decode_sale_rows
from shared.rollups import EXTEND_RUNNING
from shared.settings import Settings
from worker import return_writer, writer
from worker.batch_columns import BatchColumns

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class _StillFailing(Exception):
    """Rolls back the rows of a letter that did not replay completely."""


class Unreplayable(Exception):
    """The stored letter does not hold a sale that can be written as it is."""


def _us(iso: str) -> int:
    return (dt.datetime.fromisoformat(iso) - EPOCH) // dt.timedelta(microseconds=1)


def is_return(sale: dict) -> bool:
    return sale.get("kind") == "return"


def rows_of(sale: dict) -> list[tuple]:
    """The queued rows a dead letter holds (writer.row_json's or return_writer.return_json's
    inverse, or an undecodable entry)."""
    if "fields_hex" in sale:  # a whole stream entry that could not be decoded when it arrived
        try:
            return [tuple(r) for r in decode_sale_rows(bytes.fromhex(sale["fields_hex"]["d"]))]
        except (KeyError, ValueError, msgspec.DecodeError) as exc:
            raise Unreplayable(f"undecodable queue entry: {exc}") from exc
    moment, columns = (
        ("return_time", return_writer.RETURN_COLUMNS) if is_return(sale) else ("sale_time", writer.COLUMNS)
    )
    try:
        values = dict(sale)
        values[f"{moment}_us"] = _us(values.pop(moment))
        values["accepted_at_us"] = _us(values.pop("accepted_at"))
        if not is_return(sale):
            values.setdefault("list_price", values["price"])  # filed before list prices: charged the list price
            till_time = values.pop("till_time", None)  # filed before tills: none of the three
            values["till_time_us"] = None if till_time is None else _us(till_time)
            values.setdefault("till_id", None)
            values.setdefault("till_seq", None)
        return [tuple(values[c] for c in columns)]
    except (KeyError, TypeError, ValueError) as exc:
        raise Unreplayable(f"stored {'return' if is_return(sale) else 'sale'} is incomplete: {exc}") from exc


@dataclasses.dataclass
class Outcome:
    letter_id: int
    replayed: bool
    written: int = 0
    already_stored: int = 0
    reason: str | None = None


async def _prepare(conn: asyncpg.Connection, letter_id: int) -> tuple[set[dt.date], int | None]:
    """Before the transaction, as the worker does: the partitions the letter's sales need (the
    archived months among them, not made again), and the running totals extended to its last
    day; that day's last second (None for a letter that holds no row)."""
    sale = await conn.fetchval("SELECT sale FROM dead_letter WHERE id = $1", letter_id)
    try:
        rows = rows_of(sale) if sale is not None else []
    except Unreplayable:
        return set(), None
    if not rows:
        return set(), None
    if is_return(sale):
        archived, last_second = set(), return_writer.last_second(rows)
    else:
        batch = BatchColumns(rows)
        archived, last_second = await writer.ensure_partitions(conn, batch), int(batch.times_us.max()) // 1_000_000
    await conn.execute(EXTEND_RUNNING, last_second)
    return archived, last_second


async def replay_one(conn: asyncpg.Connection, letter_id: int) -> Outcome | None:
    """Replay one pending letter in its own transaction; None if it is not pending (any more)."""
    archived, last_second = await _prepare(conn, letter_id)
    async with conn.transaction():
        if last_second is not None:  # first, as every writer (shared.rollups.LOCK_RUNNING)
            await writer.lock_running(conn, last_second)
        letter = await conn.fetchrow(
            "SELECT id, sale FROM dead_letter WHERE id = $1 AND replayed_at IS NULL FOR UPDATE SKIP LOCKED", letter_id
        )
        if letter is None:
            return None
        outcome = Outcome(letter_id, replayed=False)
        reasons = []
        try:
            rows = rows_of(letter["sale"])
        except Unreplayable as exc:
            rows, reasons = [], [str(exc)]
        insert = return_writer.insert_returns if is_return(letter["sale"]) else writer.insert_rows
        try:
            async with conn.transaction():  # every row of the letter, or none of them
                if insert is writer.insert_rows:
                    rows, refused = writer.split_archived(rows, archived)
                    reasons.extend(reason for _, reason in refused)
                for row in rows:
                    try:
                        async with conn.transaction():  # a savepoint per row, to collect every reason
                            inserted, lost = await insert(conn, [row])
                    except writer.PERMANENT_ERRORS as exc:
                        reasons.append(writer._reason(exc))
                        continue
                    if lost:
                        reasons.extend(reason for _, reason in lost)
                    elif inserted:
                        outcome.written += inserted
                    else:
                        outcome.already_stored += 1
                if reasons:
                    raise _StillFailing
        except _StillFailing:
            outcome.written = outcome.already_stored = 0
            outcome.reason = "; ".join(reasons)
            await conn.execute(
                "UPDATE dead_letter SET reason = $2, failed_at = now() WHERE id = $1",
                letter_id,
                f"replay failed: {outcome.reason}",
            )
        else:
            outcome.replayed = True
            await conn.execute("UPDATE dead_letter SET replayed_at = now() WHERE id = $1", letter_id)
        return outcome


async def replay(conn: asyncpg.Connection, letter_id: int | None = None) -> list[Outcome]:
    if letter_id is None:
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM dead_letter WHERE replayed_at IS NULL ORDER BY id")]
    else:
        ids = [letter_id]
    outcomes = []
    for one in ids:
        outcome = await replay_one(conn, one)
        if outcome is not None:
            outcomes.append(outcome)
    return outcomes


async def pending(conn: asyncpg.Connection, include_replayed: bool = False) -> list[asyncpg.Record]:
    where = "" if include_replayed else "WHERE replayed_at IS NULL"
    return await conn.fetch(
        f"SELECT id, sale_id, sale, reason, failed_at, replayed_at FROM dead_letter {where} ORDER BY id"
    )


def _print_list(records: list[asyncpg.Record]) -> None:
    if not records:
        print("no dead letters")
        return
    print(f"{'id':>8}  {'sale_id':>12}  {'failed_at':<25}  {'replayed_at':<25}  reason / sale")
    for r in records:
        failed = r["failed_at"].isoformat(timespec="seconds")
        replayed = r["replayed_at"].isoformat(timespec="seconds") if r["replayed_at"] else "-"
        sale = r["sale"]
        shown = (
            ("kind", "sale_id", "item_id", "store_id", "quantity", "return_time")
            if is_return(sale)
            else ("item_id", "store_id", "quantity", "sale_time")
        )
        brief = {k: sale.get(k) for k in shown} if "fields_hex" not in sale else sale.get("stream_entry")
        print(f"{r['id']:>8}  {r['sale_id'] or '-'!s:>12}  {failed:<25}  {replayed:<25}  {r['reason']}")
        print(f"{'':>8}  {'':>12}  {'':<25}  {'':<25}  {brief}")
    print(f"{len(records)} dead letter(s)")


async def _main(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    pool = await create_pool(settings.database_url, max_size=1, prepare=writer.prepare_connection)
    try:
        async with pool.acquire() as conn:
            if args.command == "list":
                _print_list(await pending(conn, args.all))
                return 0
            outcomes = await replay(conn, args.id)
    finally:
        await pool.close()
    if args.id is not None and not outcomes:
        print(f"dead letter {args.id} does not exist or was already replayed", file=sys.stderr)
        return 1
    failed = [o for o in outcomes if not o.replayed]
    for o in outcomes:
        if o.replayed:
            print(f"dead letter {o.letter_id}: replayed ({o.written} written, {o.already_stored} already stored)")
        else:
            print(f"dead letter {o.letter_id}: still failing: {o.reason}")
    print(f"{len(outcomes) - len(failed)} replayed, {len(failed)} still failing")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.dead_letters", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    list_cmd = sub.add_parser("list", help="show dead letters not yet replayed")
    list_cmd.add_argument("--all", action="store_true", help="replayed ones too")
    replay_cmd = sub.add_parser("replay", help="write pending dead letters again")
    replay_cmd.add_argument("--id", type=int, default=None, help="only this dead letter")
    args = parser.parse_args(argv)
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
