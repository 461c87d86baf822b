"""The pre-aggregated tables the reports read, defined once.

Each rollup is a GROUP BY over sales in the report time zone. The same definition yields
the worker's incremental upserts (from the sums of a batch, or of the rows an INSERT really
inserted), the full rebuild, and the recount that reconciliation compares against. Archived
months (python -m shared.retention) leave their part of each rollup in `<rollup>_archived`,
which the rebuild and the recount add to what the remaining raw sales give.
"""

from __future__ import annotations

import dataclasses

import asyncpg


@dataclasses.dataclass(frozen=True)
class Rollup:
    table: str
    keys: dict[str, str]  # column -> expression over (local_time, item_id, store_id)
    summed_by: tuple[str, ...]  # what those expressions read: "second" (of sale_time), "item_id", "store_id"

    @property
    def archived(self) -> str:
        """The table of what archived (dropped) months of sales added to this rollup."""
        return f"{self.table}_archived"


_HOUR = "extract(hour FROM local_time)::int"

ROLLUPS = (
    Rollup(
        "store_monthly",
        {"month": "date_trunc('month', local_time)::date", "store_id": "store_id"},
        ("second", "store_id"),
    ),
    Rollup("item_totals", {"item_id": "item_id"}, ("item_id",)),
    Rollup("daily_totals", {"day": "local_time::date", "store_id": "store_id"}, ("second", "store_id")),
    Rollup(
        "store_item_daily",
        {"day": "local_time::date", "store_id": "store_id", "item_id": "item_id"},
        ("second", "item_id", "store_id"),
    ),
    Rollup("hourly_totals", {"day": "local_time::date", "hour": _HOUR}, ("second",)),
    Rollup("store_hourly", {"store_id": "store_id", "day": "local_time::date", "hour": _HOUR}, ("second", "store_id")),
)
ROLLUP = {r.table: r for r in ROLLUPS}
# Income and units are net of returns; `returns` counts them and `refunds` is the money given
# back. Sales leave those two at 0 (their upserts do not write them at all). `discounts`: what
# the tills gave off the list price on sales (returns leave it: migration 014).
MEASURES = {m: f"sum({m})" for m in ("income", "units", "sales", "returns", "refunds", "discounts")}
SALE_MEASURES = {m: MEASURES[m] for m in ("income", "units", "sales", "discounts")}

# Sales as the rollups see them: local time in the configured zone, income = price x quantity
# (the price charged), discounts = (list price - price) x quantity (no list price: none given).
# The zone is a scalar subquery, not a join: joined, the never-analyzed one-row settings table
# counts as about 1,300 rows, and the worker's upserts then sized their hash tables and sorts
# for a million rows (3 ms of each batch, measured, whatever its size).
LOCAL_SALES = """
    SELECT s.sale_time AT TIME ZONE (SELECT timezone FROM report_settings) AS local_time,
           s.item_id, s.store_id, s.price::bigint * s.quantity AS income, s.quantity AS units, 1 AS sales,
           0 AS returns, 0 AS refunds, (coalesce(s.list_price, s.price) - s.price)::bigint * s.quantity AS discounts
    FROM {source} s
"""
# Returns count where and when they happened, at the sale's price snapshot.
LOCAL_RETURNS = """
    SELECT r.return_time AT TIME ZONE (SELECT timezone FROM report_settings) AS local_time,
           r.item_id, r.store_id, -(r.price::bigint * r.quantity) AS income, -r.quantity AS units, 0 AS sales,
           1 AS returns, r.price::bigint * r.quantity AS refunds, 0 AS discounts
    FROM returns r
"""


# A batch's sales summed by the worker along `Rollup.summed_by`: one row per group, as
# arrays ($1 Unix second of sale_time, $2 item_id, $3 store_id, $4 income, $5 units,
# $6 sales, $7 discounts), 0 in the columns it was not summed by. Whole seconds give the exact
# local day and month: time zone offsets are whole seconds.
PARTIAL_SALES = """
    SELECT (timestamptz 'epoch' + p.second * interval '1 second') AT TIME ZONE (SELECT timezone FROM report_settings)
           AS local_time, p.item_id, p.store_id, p.income, p.units, p.sales, p.discounts
    FROM unnest($1::bigint[], $2::int[], $3::int[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
         AS p(second, item_id, store_id, income, units, sales, discounts)
"""

# A batch's returns summed the same way ($1-$3 as above, $4 refunds, $5 units returned,
# $6 returns): they take income and units away.
PARTIAL_RETURNS = """
    SELECT (timestamptz 'epoch' + p.second * interval '1 second') AT TIME ZONE (SELECT timezone FROM report_settings)
           AS local_time, p.item_id, p.store_id, -p.refunds AS income, -p.units AS units, 0 AS sales,
           p.returns, p.refunds, 0 AS discounts
    FROM unnest($1::bigint[], $2::int[], $3::int[], $4::bigint[], $5::bigint[], $6::bigint[])
         AS p(second, item_id, store_id, refunds, units, returns)
"""


def _batch(returns: bool) -> tuple[str, dict[str, str]]:
    """A batch's rows as the rollups read them (`local_time`, `item_id`, `store_id` and sums), and
    the measures they carry: a batch of sales (PARTIAL_SALES) or of returns (PARTIAL_RETURNS)."""
    return (PARTIAL_RETURNS, MEASURES) if returns else (PARTIAL_SALES, SALE_MEASURES)


def _grouped_sql(rollup: Rollup, measures: dict[str, str], local_sales: str) -> str:
    keys = ", ".join(f"{expr} AS {col}" for col, expr in rollup.keys.items())
    sums = ", ".join(f"{expr} AS {col}" for col, expr in measures.items())
    positions = ", ".join(str(i + 1) for i in range(len(rollup.keys)))
    return f"SELECT {keys}, {sums} FROM ({local_sales}) AS local GROUP BY {positions}"


def recount_sql(rollup: Rollup, source: str = "sales") -> str:
    """The rollup's rows counted from the sales of `source` (returns not included)."""
    return _grouped_sql(rollup, MEASURES, LOCAL_SALES.format(source=source))


def expected_sql(rollup: Rollup) -> str:
    """What the rollup must hold: a recount of the raw sales and returns, plus what archived
    months added."""
    keys = ", ".join(rollup.keys)
    sums = ", ".join(f"sum({m})::bigint AS {m}" for m in MEASURES)
    columns = ", ".join([*rollup.keys, *MEASURES])
    return (
        f"SELECT {keys}, {sums} FROM ({recount_sql(rollup)} UNION ALL "
        f"{_grouped_sql(rollup, MEASURES, LOCAL_RETURNS)} UNION ALL "
        f"SELECT {columns} FROM {rollup.archived}) AS counted GROUP BY {keys}"
    )


def _upsert(rollup: Rollup, grouped_query: str, into: str | None = None, measures=MEASURES) -> str:
    """Add the groups to the rollup (or to `into`), in key order so writers never deadlock."""
    columns = [*rollup.keys, *measures]
    positions = ", ".join(str(i + 1) for i in range(len(rollup.keys)))
    additions = ", ".join(f"{m} = r.{m} + EXCLUDED.{m}" for m in measures)
    return (
        f"INSERT INTO {into or rollup.table} AS r ({', '.join(columns)}) "
        f"{grouped_query} ORDER BY {positions} "
        f"ON CONFLICT ({', '.join(rollup.keys)}) DO UPDATE SET {additions}"
    )


def archive_sql(rollup: Rollup, source: str) -> str:
    """Add what the sales of `source` (a partition about to be dropped) count in the rollup to
    its archived twin."""
    return _upsert(rollup, recount_sql(rollup, source), into=rollup.archived)


def upsert_sums_sql(rollup: Rollup, rows: tuple[str, dict[str, str]]) -> str:
    """Add `rows` (a batch's sums, _batch(), or chain_fold's moved deltas) to the rollup."""
    query, measures = rows
    return _upsert(rollup, _grouped_sql(rollup, measures, query), measures=measures)


# ---------------------------------------------------------------------------------------------
# Running totals (migrations 008 and 010): per key and day, everything up to and including that
# day, for every day from the key's first sale to report_settings.running_through; but a sale
# more than RUNNING_WINDOW_DAYS before running_through adds to one row of its day in the late
# twin instead of to every row after it. So running(day) + the late rows up to that day is
# everything up to that day, and no sale writes more than RUNNING_WINDOW_DAYS + 1 rows per key.

# A sale of today adds to 1 running row per key, one of a week ago to 8: within ten times a
# sale of today (issue 21), and a till that was offline for a weekend or a week still writes
# no late rows, which a report reads for every day of its period.
RUNNING_WINDOW_DAYS = 7


@dataclasses.dataclass(frozen=True)
class Running:
    table: str
    key: str  # store_id or item_id
    daily: str  # the rollup whose days it adds up (by `key` and day)

    @property
    def summed_by(self) -> tuple[str, ...]:
        return ("second", self.key)

    @property
    def late(self) -> str:
        """The table of the days the running rows do not carry (sales that came late)."""
        return f"{self.table}_late"

    def not_carried_sql(self) -> str:
        """Rows of (day, key, measures) that the running rows do not carry: the late rows, and for
        a chain-wide one (CHAIN_TABLES) the deltas not folded yet, which count on their day too
        (possibly several rows per day and key)."""
        if self.table not in CHAIN_TABLES:
            return self.late
        return f"(SELECT day, {self.key}, {', '.join(MEASURES)} FROM {self.late} UNION ALL {DELTAS_AS_LATE})"

    def expected_daily_sql(self) -> str:
        """Per day and key, what raw sales plus archived months count (reconciliation)."""
        sums = ", ".join(f"sum({m}) AS {m}" for m in MEASURES)
        return f"SELECT day, {self.key}, {sums} FROM ({expected_sql(ROLLUP[self.daily])}) e GROUP BY 1, 2"


RUNNING = (Running("store_running", "store_id", "daily_totals"), Running("item_running", "item_id", "store_item_daily"))
RUNNING_TABLE = {r.table: r for r in RUNNING}
# Held shared by every transaction that adds to running totals, exclusively by running_extend().
RUNNING_LOCK = 370222

_RECENT = f"p.local_time::date >= (SELECT running_through FROM report_settings) - {RUNNING_WINDOW_DAYS}"


def _upsert_by_day(table: str, key: str, rows: tuple[str, dict[str, str]], day: str, source: str, where: str) -> str:
    """Add `rows` (_batch(), or chain_fold's moved deltas: `p`, joined to `source`) to `table`'s
    rows of (`day`, `key`), those of `where` only."""
    query, measures = rows
    additions = ", ".join(f"{m} = r.{m} + EXCLUDED.{m}" for m in measures)
    return (
        f"INSERT INTO {table} AS r (day, {key}, {', '.join(measures)}) "
        f"SELECT {day}, p.{key}, {', '.join(f'sum(p.{m})' for m in measures)} "
        f"FROM ({query}) p {source} WHERE {where} "
        f"GROUP BY 1, 2 ORDER BY 1, 2 ON CONFLICT (day, {key}) DO UPDATE SET {additions}"
    )


def upsert_running_sql(running: Running, rows: tuple[str, dict[str, str]]) -> str:
    """Add recent sums to every row from the sale's (or return's) day on: at most
    RUNNING_WINDOW_DAYS + 1 rows per key."""
    every_day_since = (
        "CROSS JOIN generate_series(0, (SELECT running_through FROM report_settings) - p.local_time::date) AS g(n)"
    )
    return _upsert_by_day(running.table, running.key, rows, "p.local_time::date + g.n", every_day_since, _RECENT)


def upsert_late_sql(running: Running, rows: tuple[str, dict[str, str]]) -> str:
    """Add older sums to the late rows of their days: one row per key and day, however far back
    the day is."""
    return _upsert_by_day(running.late, running.key, rows, "p.local_time::date", "", f"NOT ({_RECENT})")


# ---------------------------------------------------------------------------------------------
# Chain-wide rollups (migration 012): keyed by item or by hour for the whole chain, so every
# batch would write the same rows (a popular item's, the current hour's) and hold them until
# commit. A batch inserts its sums by local day, hour and item into chain_deltas instead, and
# shared.chain_fold moves them into these tables, one session at a time.
CHAIN_TABLES = frozenset({"item_totals", "hourly_totals", "item_running"})
DELTAS = Rollup("chain_deltas", {"day": "local_time::date", "hour": _HOUR, "item_id": "item_id"}, ("second", "item_id"))
# Unfolded deltas as late rows of item_running (migration 010): they count on their day only,
# which is how a report of [from, to] and the recount of the running totals take them.
DELTAS_AS_LATE = f"SELECT day, item_id, {', '.join(MEASURES)} FROM {DELTAS.table}"


def with_deltas_sql(rollup: Rollup) -> str:
    """What a chain-wide rollup holds once every delta is folded (a subquery)."""
    columns = ", ".join([*rollup.keys, *MEASURES])
    sums = ", ".join(f"sum({m})::bigint AS {m}" for m in MEASURES)
    keys = ", ".join(rollup.keys)
    return (
        f"(SELECT {keys}, {sums} FROM (SELECT {columns} FROM {rollup.table} UNION ALL "
        f"SELECT {columns} FROM {DELTAS.table}) AS both_parts GROUP BY {keys}) AS {rollup.table}"
    )


def insert_deltas_sql(returns: bool) -> str:
    """A batch's sums (_batch()) by local day, hour and item, into chain_deltas: new rows only."""
    query, measures = _batch(returns)
    return (
        f"INSERT INTO {DELTAS.table} ({', '.join([*DELTAS.keys, *measures])}) {_grouped_sql(DELTAS, measures, query)}"
    )


def batch_upserts(returns: bool = False, late: bool = True) -> list[tuple[tuple[str, ...], str]]:
    """(what a batch of sales, or of returns, is summed by; the statement) of every rollup and
    running table, and of the running tables' late twins unless not `late` (a batch that holds
    no late sale: MAY_HOLD_LATE); the chain-wide ones (CHAIN_TABLES) get one insert into
    chain_deltas instead of their upserts."""
    running_upserts = (upsert_running_sql, upsert_late_sql) if late else (upsert_running_sql,)
    rollups = [
        (rollup.summed_by, upsert_sums_sql(rollup, _batch(returns)))
        for rollup in ROLLUPS
        if rollup.table not in CHAIN_TABLES
    ]
    running = [
        (running.summed_by, upsert(running, _batch(returns)))
        for running in RUNNING
        if running.table not in CHAIN_TABLES
        for upsert in running_upserts
    ]
    return [*rollups, *running, (DELTAS.summed_by, insert_deltas_sql(returns))]


def _local_day(second_param: str) -> str:
    return (
        f"((timestamptz 'epoch' + {second_param} * interval '1 second') "
        f"AT TIME ZONE (SELECT timezone FROM report_settings))::date"
    )


# Before a batch's transaction: make the running rows reach the batch's last day ($1: its
# latest sale_time, Unix seconds). Its transaction's first statement: the lock, shared. Then, in
# a statement of its own (a snapshot taken once the lock is held), whether they still do
# (False: /clear/ or a rebuild in another time zone came in between; retried).
# Carrying rows forward changes no report's answer: the statement tells the rollups' triggers so
# (shared.report_changes), or the day's first batch would empty every API's report cache.
def _extend_running(day: str) -> str:
    return (
        f"SELECT running_extend({day}) "
        "FROM (SELECT set_config('sales.reports_announced', 'on', true)) AS unchanged_answers"
    )


EXTEND_RUNNING = _extend_running(_local_day("$1"))
EXTEND_RUNNING_TO_DAY = _extend_running("$1::date")  # $1: a local day (shared.chain_fold)
LOCK_RUNNING = f"SELECT pg_advisory_xact_lock_shared({RUNNING_LOCK})"
RUNNING_COVERS = f"SELECT coalesce(running_through >= {_local_day('$1')}, false) FROM report_settings"
# In the batch's transaction, before its rollups ($1: its earliest moment, Unix seconds): whether
# any of it may be late. Almost never: the batch then skips the late upserts, each of which would
# send its sums to PostgreSQL once more (megabytes at 100,000-sale batches) only to filter them
# all out. A day of margin: where a zone's clocks go back across a midnight (a change just after
# it), a later moment can fall on the day before. Asked of the database, not of a clock: a
# backlog written days after its sales were accepted is decided exactly too.
MAY_HOLD_LATE = (
    f"SELECT coalesce({_local_day('$1')} <= running_through - {RUNNING_WINDOW_DAYS}, true) FROM report_settings"
)
# Taken first by whatever replaces the running totals wholesale, in the same order as writers
# (this lock, then tables), so that none of them deadlocks with a writer.
LOCK_RUNNING_EXCLUSIVE = f"SELECT pg_advisory_xact_lock({RUNNING_LOCK})"


def expected_running_sql(running: Running) -> str:
    """What the running table must hold: per key, from the first day the recount and the late
    rows (with the unfolded deltas, Running.not_carried_sql) differ (the first sale the running
    rows carry) to running_through, the recounted days minus those rows, added up."""
    sums = ", ".join(f"(sum(coalesce(d.{m}, 0)) OVER w)::bigint AS {m}" for m in MEASURES)
    carried = ", ".join(f"coalesce(e.{m}, 0) - coalesce(l.{m}, 0) AS {m}" for m in MEASURES)
    differs = " OR ".join(f"coalesce(e.{m}, 0) <> coalesce(l.{m}, 0)" for m in MEASURES)
    late_sums = ", ".join(f"sum({m}) AS {m}" for m in MEASURES)
    return (
        f"WITH daily AS (SELECT coalesce(e.day, l.day) AS day, coalesce(e.{running.key}, l.{running.key}) "
        f"AS {running.key}, {carried} FROM ({running.expected_daily_sql()}) e "
        f"FULL JOIN (SELECT day, {running.key}, {late_sums} FROM {running.not_carried_sql()} AS nc GROUP BY 1, 2) l "
        f"ON l.day = e.day AND l.{running.key} = e.{running.key} WHERE {differs}) "
        f"SELECT g.day, k.{running.key}, {sums} "
        f"FROM (SELECT {running.key}, min(day) AS first_day FROM daily GROUP BY 1) k "
        f"CROSS JOIN LATERAL (SELECT k.first_day + n AS day FROM generate_series(0, "
        f"(SELECT running_through FROM report_settings) - k.first_day) n) g "
        f"LEFT JOIN daily d ON d.{running.key} = k.{running.key} AND d.day = g.day "
        f"WINDOW w AS (PARTITION BY k.{running.key} ORDER BY g.day)"
    )


# The API's report cache drops its results at this NOTIFY (delivered at commit). On plain
# PostgreSQL triggers on the rollups send it too (identical notifications of one transaction
# are delivered once); on Citus the rollups are distributed and have no triggers, so whatever
# writes them sends it.
NOTIFY_REPORTS_CHANGED = "SELECT pg_notify('reports_changed', '')"


# A store's month is the sum of its days, cut in the same zone (archived months included, as
# both were archived from the same sales): the rebuild reads daily_totals (a row per store and
# day) instead of every sale a second time, 2 s of a 10-million-sale seed. The recount that
# reconciliation compares with still reads the raw sales (expected_sql).
STORE_MONTHS_FROM_DAYS = """
INSERT INTO store_monthly (month, store_id, income, units, sales, returns, refunds, discounts)
SELECT date_trunc('month', day)::date, store_id, sum(income), sum(units), sum(sales), sum(returns), sum(refunds),
       sum(discounts)
FROM daily_totals GROUP BY 1, 2
"""


async def rebuild(conn: asyncpg.Connection, filled: frozenset[str] = frozenset()) -> None:
    """Recompute every rollup from raw sales and archived months (inside the caller's
    transaction), but those in `filled`: the seeder fills those itself (shared.seeded_rollups)."""
    await conn.execute(LOCK_RUNNING_EXCLUSIVE)
    # A row per store and day is hundreds of thousands of groups: with the default 4 MB the
    # aggregation spilled to disk (10 million sales: daily_totals alone took 5.9 s).
    await conn.execute("SET LOCAL work_mem = '256MB'")
    todo = [r for r in ROLLUPS if r.table not in filled]
    # chain_deltas too: what they held is in the raw sales the rollups are counted from
    await conn.execute("TRUNCATE " + ", ".join([*(r.table for r in todo), DELTAS.table]))
    for rollup in todo:
        if rollup.table != "store_monthly":
            columns = ", ".join([*rollup.keys, *MEASURES])
            await conn.execute(f"INSERT INTO {rollup.table} ({columns}) {expected_sql(rollup)}")
    await conn.execute(STORE_MONTHS_FROM_DAYS)
    if not {r.table for r in RUNNING} <= filled:
        await conn.execute("SELECT running_rebuild()")
    await conn.execute(NOTIFY_REPORTS_CHANGED)


def _differing_rows_sql(table: str, keys: list[str], expected: str) -> str:
    cols = ", ".join([*keys, *MEASURES])
    return (
        f"SELECT count(*) FROM ((SELECT {cols} FROM {table} EXCEPT ALL "
        f"SELECT {cols} FROM ({expected}) a) UNION ALL "
        f"(SELECT {cols} FROM ({expected}) b EXCEPT ALL "
        f"SELECT {cols} FROM {table})) d"
    )


async def drift(conn: asyncpg.Connection) -> dict[str, int]:
    """How many rows of each rollup (running totals included) differ from a recount of raw
    sales (plus archived months). The chain-wide ones count the deltas not folded yet."""
    result = {}
    for rollup in ROLLUPS:
        held = with_deltas_sql(rollup) if rollup.table in CHAIN_TABLES else rollup.table
        result[rollup.table] = await conn.fetchval(_differing_rows_sql(held, list(rollup.keys), expected_sql(rollup)))
    for running in RUNNING:
        result[running.table] = await conn.fetchval(
            _differing_rows_sql(running.table, ["day", running.key], expected_running_sql(running))
        )
    return result


async def ensure_timezone(conn: asyncpg.Connection, timezone: str) -> bool:
    """Cut the rollups in `timezone`; rebuild them if they were cut in another one."""
    async with conn.transaction():
        await conn.execute(LOCK_RUNNING_EXCLUSIVE)  # before the row, as running_extend() does
        current = await conn.fetchval("SELECT timezone FROM report_settings FOR UPDATE")
        if current == timezone:
            return False
        archived = await conn.fetchval("SELECT count(*) FROM archived_months")
        if archived:
            # Their raw sales are gone: their share of the rollups cannot be cut again.
            raise ValueError(
                f"REPORT_TIMEZONE={timezone!r}, but the rollups are cut in {current!r} and "
                f"{archived} archived month(s) can no longer be recut; keep {current!r}"
            )
        await conn.execute("UPDATE report_settings SET timezone = $1", timezone)
        await rebuild(conn)
    return True
