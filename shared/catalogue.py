"""Writing the catalogue: items (with prices over time) and stores, created, edited, retired, in
bulk or one at a time. The API's /catalogue/ endpoints and this command-line tool share it:

    python -m shared.catalogue import items items.csv      # all or nothing, errors by line
    python -m shared.catalogue export stores > stores.csv

Every write is one transaction under one lock (catalogue writes are rare; serialized, their
versions commit in order, so a till that asked `?since=V` misses nothing below V), stamps what
it touched with one new version, and says so on `catalogue_changed` (every API process reloads
within a second) and `reports_changed` (names appear in reports).

Prices: a change takes effect at a moment, now or later (never earlier: sales already stored
keep the prices they were given, and one may not re-price the past under a till that sells).
Before an item's first change its price so far is written into the history, so that the
history alone prices every moment. A new item sells at its price from its creation on.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import datetime as dt
import io
import pathlib
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Annotated

import asyncpg
import msgspec

from shared import db
from shared.settings import Settings

# pg_advisory_xact_lock key for catalogue writes ("catalog" in ASCII).
CATALOGUE_LOCK = 0x636174616C6F67
MAX_NAME = 200
MAX_PRICE = 2_147_483_647
MAX_ID = 2_147_483_647
# A change dated a little before now (clocks, a slow request) is taken as now.
CLOCK_SLACK = dt.timedelta(seconds=5)
# Moments a price change or a retirement may carry (far ones would not even convert to UTC).
EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(2999, 12, 31, tzinfo=dt.UTC)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Id = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME)]
Price = Annotated[int, msgspec.Meta(ge=0, le=MAX_PRICE)]
Moment = Annotated[dt.datetime, msgspec.Meta(tz=True)]

# Every API process loads the rows past the version it holds ("versioned": api.catalogue), and
# drops its reports (names appear in them). The flag keeps the triggers on item and store quiet
# (migration 015).
VERSIONED_WRITE = "SELECT set_config('catalogue.versioned', 'on', true)"
ANNOUNCE = "SELECT pg_notify('catalogue_changed', 'versioned'), pg_notify('reports_changed', '')"


class CatalogueRefused(Exception):
    """Edits that cannot be made; `errors` maps the edit's index (or CSV line) to why. Nothing
    was written. `status`: 404 when an edit names an item or store that does not exist, 409
    when a new one's id is taken, 422 otherwise."""

    def __init__(self, errors: dict[int, str], status: int = 422):
        super().__init__("; ".join(errors.values()))
        self.errors = errors
        self.status = status


class ItemEdit(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """An item to create or change. Fields left out are left as they are."""

    id: Id | None = None
    name: Name | None = None
    price: Price | None = None
    price_from: Moment | None = None  # when the new price takes effect; now when not given
    retired_at: Moment | msgspec.UnsetType | None = msgspec.UNSET  # null: back on sale


class StoreEdit(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    id: Id | None = None
    address: Name | None = None
    retired_at: Moment | msgspec.UnsetType | None = msgspec.UNSET


@dataclasses.dataclass(frozen=True)
class Written:
    version: int
    ids: list[int]  # of the edits, in order (new ones' assigned ids included)


def _text_problem(what: str, value: str | None, required: bool) -> str | None:
    if value is None:
        return f"{what} is required for a new one" if required else None
    if not value.strip():
        return f"{what} must not be empty"
    if len(value) > MAX_NAME:
        return f"{what} is at most {MAX_NAME} characters"
    return None


def _moment_problem(what: str, moment: dt.datetime) -> str | None:
    if moment.tzinfo is None:
        return f"{what} must carry a UTC offset, e.g. 2026-12-07T00:00:00+03:00"
    if not EARLIEST <= moment <= LATEST:
        return f"{what} must be between {EARLIEST:%Y} and {LATEST:%Y}"
    return None


def _check_alone(edits: Sequence[ItemEdit | StoreEdit], text: str) -> None:
    """What is wrong with the edits whatever the database holds (before any query: an id past
    int4 would fail the lookup itself); CatalogueRefused with all of it."""
    errors: dict[int, str] = {}
    for index, edit in enumerate(edits):
        problems = []
        if edit.id is not None and not 1 <= edit.id <= MAX_ID:
            problems.append(f"id must be from 1 to {MAX_ID}")
        value = getattr(edit, text)
        if value is not None and (bad := _CONTROL.search(value)):
            problems.append(f"{text} holds a control character ({bad.group()!r})")
        if isinstance(edit, ItemEdit) and edit.price is not None and not 0 <= edit.price <= MAX_PRICE:
            problems.append(f"price must be from 0 to {MAX_PRICE}")
        for name in ("price_from", "retired_at"):
            moment = getattr(edit, name, None)
            if isinstance(moment, dt.datetime) and (p := _moment_problem(name, moment)):
                problems.append(p)
        if problems:
            errors[index] = "; ".join(problems)
    if errors:
        raise CatalogueRefused(errors)


def _check(
    edits: Sequence[ItemEdit | StoreEdit], existing: set[int], create: bool | None, text: str, now: dt.datetime
) -> None:
    """Raise CatalogueRefused for everything wrong with the edits, all at once."""
    missing = {i: f"no {_kind(e)} {e.id}" for i, e in enumerate(edits) if create is False and e.id not in existing}
    if missing:
        raise CatalogueRefused(missing, 404)
    taken = {i: f"{_kind(e)} {e.id} exists already" for i, e in enumerate(edits) if create and e.id in existing}
    if taken:
        raise CatalogueRefused(taken, 409)
    errors: dict[int, str] = {}
    seen: set[int] = set()
    for index, edit in enumerate(edits):
        problems = []
        if edit.id is not None:
            if edit.id in seen:
                problems.append(f"{_kind(edit)} {edit.id} is given twice")
            seen.add(edit.id)
        is_new = edit.id not in existing
        if p := _text_problem(text, getattr(edit, text), required=is_new):
            problems.append(p)
        if isinstance(edit, ItemEdit):
            if edit.price is None and is_new:
                problems.append("price is required for a new item")
            if edit.price_from is not None and edit.price_from < now - CLOCK_SLACK:
                problems.append("price_from is in the past: a price change takes effect now or later")
            if edit.price_from is not None and edit.price is None:
                problems.append("price_from needs a price")
        if problems:
            errors[index] = "; ".join(problems)
    if errors:
        raise CatalogueRefused(errors)


def _kind(edit: ItemEdit | StoreEdit) -> str:
    return "item" if isinstance(edit, ItemEdit) else "store"


async def _begin_write(conn: asyncpg.Connection, table: str, ids: list[int]) -> tuple[int, set[int], int]:
    """Inside the transaction: take the lock; (new version, the ids that exist, the largest id)."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", CATALOGUE_LOCK)
    await conn.execute(VERSIONED_WRITE)
    version = await conn.fetchval("SELECT nextval('catalogue_version')")
    existing = {r["id"] for r in await conn.fetch(f"SELECT id FROM {table} WHERE id = ANY($1::int[])", ids)}
    largest = await conn.fetchval(f"SELECT coalesce(max(id), 0) FROM {table}")
    return version, existing, largest


def _assign_ids(edits: Sequence[ItemEdit | StoreEdit], largest: int) -> list[int]:
    taken = {e.id for e in edits if e.id is not None}
    next_id = max([largest, *taken]) + 1
    ids = []
    for edit in edits:
        if edit.id is None:
            ids.append(next_id)
            next_id += 1
        else:
            ids.append(edit.id)
    return ids


async def _finish_write(conn: asyncpg.Connection, table: str, ids: list[int], edits, version: int) -> None:
    """Retirements, the id sequence past every id (a plain INSERT must not collide), the news."""
    retire = [(i, e.retired_at) for i, e in zip(ids, edits) if e.retired_at is not msgspec.UNSET]
    if retire:
        await conn.execute(
            f"UPDATE {table} t SET retired_at = r.at, version = $3 "
            "FROM unnest($1::int[], $2::timestamptz[]) AS r(id, at) "
            "WHERE t.id = r.id AND t.retired_at IS DISTINCT FROM r.at",
            [i for i, _ in retire],
            [at for _, at in retire],
            version,
        )
    await conn.execute(
        f"SELECT setval('{table}_id_seq', greatest((SELECT max(id) FROM {table}), 1))",
    )
    await conn.execute(ANNOUNCE)


async def write_items(
    conn: asyncpg.Connection, edits: Sequence[ItemEdit], *, create: bool | None = None, now: dt.datetime | None = None
) -> Written:
    """Create (`create`), change (`create=False`) or create-or-change (None) items, all or none."""
    _check_alone(edits, "name")
    async with conn.transaction():
        version, existing, largest = await _begin_write(conn, "item", [e.id for e in edits if e.id is not None])
        now = now or dt.datetime.now(dt.UTC)  # read once the lock is ours: no change lands before a write ahead
        _check(edits, existing, create, "name", now)
        ids = _assign_ids(edits, largest)
        new = [(i, e) for i, e in zip(ids, edits) if i not in existing]
        changed = [(i, e) for i, e in zip(ids, edits) if i in existing]
        if new:
            await conn.execute(
                "INSERT INTO item (id, name, price, version) "
                "SELECT id, name, price, $4 FROM unnest($1::int[], $2::text[], $3::int[]) AS n(id, name, price)",
                [i for i, _ in new],
                [e.name for _, e in new],
                [e.price for _, e in new],
                version,
            )
        renamed = [(i, e.name) for i, e in changed if e.name is not None]
        if renamed:
            await conn.execute(
                "UPDATE item SET name = r.name, version = $3 FROM unnest($1::int[], $2::text[]) AS r(id, name) "
                "WHERE item.id = r.id AND item.name IS DISTINCT FROM r.name",
                [i for i, _ in renamed],
                [n for _, n in renamed],
                version,
            )
        await _change_prices(
            conn, [(i, e.price, e.price_from or now) for i, e in changed if e.price is not None], now, version
        )
        await _finish_write(conn, "item", ids, edits, version)
    return Written(version, ids)


async def _change_prices(
    conn: asyncpg.Connection, changes: list[tuple[int, int, dt.datetime]], now: dt.datetime, version: int
) -> None:
    """(item, price, from): a history row for each that changes anything (importing the same
    list twice adds nothing); the price so far first for an item without history."""
    if not changes:
        return
    ids = [i for i, _, _ in changes]
    base = {r["id"]: r["price"] for r in await conn.fetch("SELECT id, price FROM item WHERE id = ANY($1::int[])", ids)}
    history: dict[int, list[tuple[dt.datetime, int]]] = {}
    for r in await conn.fetch(
        "SELECT item_id, effective_from, price FROM item_price WHERE item_id = ANY($1::int[]) ORDER BY 1, 2", ids
    ):
        history.setdefault(r["item_id"], []).append((r["effective_from"], r["price"]))
    rows: list[tuple[int, dt.datetime | None, int]] = []  # None: since always
    immediate = []
    for item_id, price, start in changes:
        start = max(start, now)
        past = history.get(item_id, [])
        in_effect = next((p for at, p in reversed(past) if at <= start), base[item_id])
        if in_effect == price:  # nothing to change (the same list imported twice)
            continue
        if not past:
            rows.append((item_id, None, base[item_id]))
        rows.append((item_id, start, price))
        if start <= now:
            immediate.append((item_id, price))
    if not rows:
        return
    await conn.execute(
        "INSERT INTO item_price (item_id, effective_from, price, version) "
        "SELECT id, coalesce(at, '-infinity'), price, $4 FROM unnest($1::int[], $2::timestamptz[], $3::int[]) "
        "AS c(id, at, price) "
        "ON CONFLICT (item_id, effective_from) DO UPDATE SET price = excluded.price, version = excluded.version",
        [i for i, _, _ in rows],
        [at for _, at, _ in rows],
        [p for _, _, p in rows],
        version,
    )
    await conn.execute(
        "UPDATE item SET version = $2 WHERE id = ANY($1::int[])", sorted({i for i, _, _ in rows}), version
    )
    if immediate:
        await conn.execute(
            "UPDATE item SET price = c.price FROM unnest($1::int[], $2::int[]) AS c(id, price) WHERE item.id = c.id",
            [i for i, _ in immediate],
            [p for _, p in immediate],
        )


async def write_stores(
    conn: asyncpg.Connection, edits: Sequence[StoreEdit], *, create: bool | None = None, now: dt.datetime | None = None
) -> Written:
    """Create, change or create-or-change stores, all or none (as write_items)."""
    _check_alone(edits, "address")
    async with conn.transaction():
        version, existing, largest = await _begin_write(conn, "store", [e.id for e in edits if e.id is not None])
        now = now or dt.datetime.now(dt.UTC)
        _check(edits, existing, create, "address", now)
        ids = _assign_ids(edits, largest)
        new = [(i, e.address) for i, e in zip(ids, edits) if i not in existing]
        changed = [(i, e.address) for i, e in zip(ids, edits) if i in existing and e.address is not None]
        if new:
            await conn.execute(
                "INSERT INTO store (id, address, version) SELECT id, address, $3 "
                "FROM unnest($1::int[], $2::text[]) AS n(id, address)",
                [i for i, _ in new],
                [a for _, a in new],
                version,
            )
        if changed:
            await conn.execute(
                "UPDATE store SET address = c.address, version = $3 "
                "FROM unnest($1::int[], $2::text[]) AS c(id, address) "
                "WHERE store.id = c.id AND store.address IS DISTINCT FROM c.address",
                [i for i, _ in changed],
                [a for _, a in changed],
                version,
            )
        await _finish_write(conn, "store", ids, edits, version)
    return Written(version, ids)


# CSV: one item or store per line, with a header. Blank cells leave a field as it is (an empty
# id: a new one); retired_at may be a moment, or "no" to put a retired one back on sale.
ITEM_COLUMNS = ("id", "name", "price", "price_from", "retired_at")
STORE_COLUMNS = ("id", "address", "retired_at")
MAX_IMPORT_LINES = 200_000


def parse_csv(text: str, kind: str) -> list[ItemEdit] | list[StoreEdit]:
    """The edits of a CSV file; CatalogueRefused with the errors by line (the header is line 1)."""
    columns = ITEM_COLUMNS if kind == "items" else STORE_COLUMNS
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise CatalogueRefused({1: f"the file is empty: a header line ({','.join(columns)}) comes first"})
    header = [h.strip().lower() for h in header]
    unknown = [h for h in header if h not in columns]
    required = "name" if kind == "items" else "address"
    if unknown or len(set(header)) != len(header) or ("id" not in header and required not in header):
        raise CatalogueRefused(
            {1: f"the header names the columns, each once, of: {', '.join(columns)}; got {','.join(header)[:200]}"}
        )
    edits: list = []
    errors: dict[int, str] = {}
    try:
        for line, cells in enumerate(reader, start=2):
            if (problem := _line(cells, header, kind, edits)) is not None:
                errors[line] = problem
    except csv.Error as exc:  # a line the csv module cannot read (a stray CR, a huge field)
        errors[reader.line_num] = f"unreadable CSV: {exc}"
    except _TooLong as exc:
        raise CatalogueRefused({reader.line_num: str(exc)}, 413) from None
    if errors:
        raise CatalogueRefused(errors)
    if not edits:
        raise CatalogueRefused({2: "no lines after the header"})
    return edits


class _TooLong(Exception):
    pass


def _line(cells: list[str], header: list[str], kind: str, edits: list) -> str | None:
    """Adds one line's edit to `edits`; what is wrong with it, if anything."""
    if not any(c.strip() for c in cells):
        return None
    if len(edits) >= MAX_IMPORT_LINES:
        raise _TooLong(f"at most {MAX_IMPORT_LINES} lines in one import")
    if len(cells) != len(header):
        return f"{len(cells)} cells where the header has {len(header)}"
    try:
        edits.append(_edit_of(dict(zip(header, (c.strip() for c in cells))), kind))
    except ValueError as exc:
        return str(exc)
    return None


def _edit_of(cells: dict[str, str], kind: str) -> ItemEdit | StoreEdit:
    fields: dict = {}
    if cells.get("id"):
        fields["id"] = _integer("id", cells["id"])
    if retired := cells.get("retired_at"):
        fields["retired_at"] = None if retired.lower() == "no" else _moment("retired_at", retired)
    if kind == "stores":
        return StoreEdit(address=cells.get("address") or None, **fields)
    if cells.get("price"):
        fields["price"] = _integer("price", cells["price"])
    if cells.get("price_from"):
        fields["price_from"] = _moment("price_from", cells["price_from"])
    return ItemEdit(name=cells.get("name") or None, **fields)


def _integer(name: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        raise ValueError(f"{name} must be a whole number, got {text[:40]!r}")
    return int(text)


def _moment(name: str, text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name} must be ISO 8601 with a UTC offset, got {text[:40]!r}") from None
    if moment.tzinfo is None:
        raise ValueError(f"{name} must carry a UTC offset, e.g. 2026-12-07T00:00:00+03:00")
    return moment


def price_in_effect(moment: str) -> str:
    """SQL: the list price of item `i` in effect at `moment` (an SQL expression): its latest
    change by then, else `item.price` (an item with no history)."""
    return f"""coalesce((SELECT p.price FROM item_price p WHERE p.item_id = i.id AND p.effective_from <= {moment}
                 ORDER BY p.effective_from DESC LIMIT 1), i.price)"""


EXPORT_ITEMS = f"SELECT i.id, i.name, {price_in_effect('now()')} AS price, i.retired_at FROM item i ORDER BY i.id"
EXPORT_STORES = "SELECT id, address, retired_at FROM store ORDER BY id"


async def export_csv(conn: asyncpg.Connection, kind: str) -> str:
    """Every item (its price in effect now) or store, as CSV that imports back unchanged."""
    rows = await conn.fetch(EXPORT_ITEMS if kind == "items" else EXPORT_STORES)
    columns = ("id", "name", "price", "retired_at") if kind == "items" else STORE_COLUMNS
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows(_cells(r, columns) for r in rows)
    return out.getvalue()


def _cells(row: asyncpg.Record, columns: Iterable[str]) -> list:
    return [
        row[c].isoformat() if isinstance(row[c], dt.datetime) else ("" if row[c] is None else row[c]) for c in columns
    ]


async def import_csv(conn: asyncpg.Connection, kind: str, text: str) -> Written:
    """Create or change every line's item or store, all or none; errors keyed by line."""
    edits = parse_csv(text, kind)
    try:
        if kind == "items":
            return await write_items(conn, edits)  # type: ignore[arg-type]
        return await write_stores(conn, edits)  # type: ignore[arg-type]
    except CatalogueRefused as exc:  # indexes of edits -> lines of the file
        lines = _lines_of_edits(text)
        raise CatalogueRefused({lines[i]: why for i, why in exc.errors.items()}, exc.status) from None


def _lines_of_edits(text: str) -> list[int]:
    """The file's line number of each edit parse_csv made (blank lines are skipped)."""
    reader = csv.reader(io.StringIO(text))
    next(reader, None)
    return [line for line, cells in enumerate(reader, start=2) if any(c.strip() for c in cells)]


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m shared.catalogue", description="Import or export the catalogue.")
    commands = parser.add_subparsers(dest="command", required=True)
    importing = commands.add_parser("import", help="create or change items or stores from a CSV file (all or none)")
    importing.add_argument("kind", choices=("items", "stores"))
    importing.add_argument("file", help="a CSV file, or - for standard input")
    exporting = commands.add_parser("export", help="write every item or store as CSV to standard output")
    exporting.add_argument("kind", choices=("items", "stores"))
    return parser.parse_args()


async def _run(command: str, kind: str, text: str) -> int:
    conn = await db.connect(Settings.from_env().database_url)
    try:
        if command == "export":
            sys.stdout.write(await export_csv(conn, kind))
            return 0
        try:
            written = await import_csv(conn, kind, text)
        except CatalogueRefused as exc:
            for line, why in sorted(exc.errors.items()):
                print(f"line {line}: {why}", file=sys.stderr)
            print(f"{len(exc.errors)} lines are wrong; nothing was imported", file=sys.stderr)
            return 1
        print(f"{len(written.ids)} {kind} imported (catalogue version {written.version})")
        return 0
    finally:
        await conn.close()


def main() -> None:
    args = _arguments()
    text = ""
    if args.command == "import":
        text = sys.stdin.read() if args.file == "-" else pathlib.Path(args.file).read_text(encoding="utf-8-sig")
    raise SystemExit(asyncio.run(_run(args.command, args.kind, text)))


if __name__ == "__main__":
    main()
