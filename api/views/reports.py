"""The catalogue and the reports, as JSON or CSV."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from aiohttp import web

from api import period_parts, reports
from api.appkeys import CHAIN_TODAY, INTAKE, PG_POOL, REPORT_CACHE, SETTINGS, STORES_TODAY
from api.chain_today import ChainDay
from api.moments import from_us, now_us
from api.report_cache import CATALOGUE_ONLY, EVERYTHING, Part, Scope
from api.responses import json_response, table_response, wants_csv
from api.validation import BadRequest, date_param, int_param, one_of_params

MAX_ID = 2**31 - 1
_DIGITS = re.compile(r"[0-9]{1,10}")


def _querying(request: web.Request, query, *args) -> Callable[[], Awaitable[Any]]:
    pool = request.app[PG_POOL]

    async def compute():
        async with pool.acquire() as conn:
            return await query(conn, *args)

    return compute


_CACHE_TICKET = web.RequestKey[int]("report_cache_ticket")


def _since(request: web.Request) -> int:
    """The report cache's ticket of this request, taken at its first lookup: its lookups then
    wait for one round trip in all (a store's report looks up the store first)."""
    ticket = request.get(_CACHE_TICKET)
    if ticket is None:
        ticket = request[_CACHE_TICKET] = request.app[REPORT_CACHE].ticket()
    return ticket


def _caught_up(request: web.Request) -> Callable[[], Awaitable[bool]]:
    """The report cache's round trip for this request (what a today kept in memory waits for)."""
    cache = request.app[REPORT_CACHE]
    since = _since(request)
    return lambda: cache.caught_up(since)


async def _get(request: web.Request, key: Hashable, compute: Callable[[], Awaitable[Any]], scope: Scope):
    return await request.app[REPORT_CACHE].get(key, compute, scope, since=_since(request))


async def _get_all(request: web.Request, parts: list[Part]) -> list:
    return await request.app[REPORT_CACHE].get_all(parts, since=_since(request))


async def _cached(request: web.Request, key: tuple, scope: Scope, query, *args):
    """`query(conn, *args)`'s result, from the report cache when nothing in `scope` (the days
    and store it counts) changed since."""
    return await _get(request, key, _querying(request, query, *args), scope)


def _today(request: web.Request) -> dt.date:
    return dt.datetime.now(dt.UTC).astimezone(request.app[SETTINGS].timezone).date()


def _period_parts(
    request: web.Request, name: str, first: dt.date, last: dt.date, store_id: int | None, query, *, today: dt.date
) -> list[Part]:
    """The period's parts (api.period_parts): `query(conn, first, last, live)` over its days before
    `today` and over the rest (`live` True), each cached under the days it counts."""
    return [
        Part((name, a, b, store_id), _querying(request, query, a, b, a >= today), Scope(a, b, store_id))
        for a, b in period_parts.split_at(first, last, today)
    ]


async def _summed(
    request: web.Request, name: str, first: dt.date, last: dt.date, store_id: int | None, query, assemble, *, today
):
    """`assemble(parts)` of the period's parts. A period in one part is kept assembled: a hit
    then costs no assembling (the 168 cells of the hours took ~0.1 ms)."""
    parts = _period_parts(request, name, first, last, store_id, query, today=today)
    if len(parts) > 1:
        return assemble(await _get_all(request, parts))
    (part,) = parts

    async def whole():
        return assemble([await part.compute()])

    return await _get(request, (f"{name}_assembled", first, last, store_id), whole, part.scope)


async def _named_top(request: web.Request, parts: list, cnt: int) -> list[dict]:
    """The top `cnt` items of a store's parts, with their names (kept until the catalogue changes)."""
    top_units = period_parts.top(parts, cnt)
    names = await _get(request, ("item_names",), _querying(request, reports.item_names), CATALOGUE_ONLY)
    return reports.named_top(top_units, names)


def _month_scope(first_month: dt.date, last_month: dt.date, store_id: int | None = None) -> Scope:
    """The days of the months first_month..last_month."""
    return Scope(first_month, reports.month_end(last_month), store_id)


def _month(request: web.Request):
    mm = int_param(request.query, "mm", None, 1, 12)
    year = one_of_params(request.query, ("year", "gg"), 1, 9999)
    return reports.report_month(mm, year, request.app[SETTINGS].timezone)


def _period(request: web.Request) -> tuple[dt.date, dt.date] | None:
    """`from` and `to` (dates, both included, in the report time zone), or None without them."""
    first, last = date_param(request.query, "from"), date_param(request.query, "to")
    if first is None and last is None:
        return None
    if first is None or last is None:
        raise BadRequest("from and to go together: give both (YYYY-MM-DD, inclusive, in the report time zone)")
    if first > last:
        raise BadRequest(f"from ({first}) is after to ({last})")
    if any(name in request.query for name in ("mm", "year", "gg")):
        raise BadRequest("give either mm/year or from/to, not both")
    return first, last


def _store_part(request: web.Request, store_id: int) -> Part:
    return Part(("store", store_id), _querying(request, reports.get_store, store_id), CATALOGUE_ONLY)


def _found(store_id: int, store: dict | None) -> dict:
    if store is None:
        raise BadRequest(f"no store with id {store_id}", status=404)
    return store


async def _store(request: web.Request, store_id: int) -> dict:
    part = _store_part(request, store_id)
    return _found(store_id, await _get(request, part.key, part.compute, part.scope))


async def _with_store(request: web.Request, store_id: int, parts: list[Part]) -> tuple[dict, list]:
    """The store and the parts of its report, looked up together: a part nothing is known of is
    queried at once, beside the round trip the store (kept) waits for."""
    store, *found = await _get_all(request, [_store_part(request, store_id), *parts])
    return _found(store_id, store), found


def _ends_today(first: dt.date, last: dt.date, today: dt.date) -> bool:
    """A period whose last day is today (a store's month so far): its today is kept in memory
    (api.stores_today) and its days before in the report cache, whatever their number."""
    return first <= today == last


async def _store_today(request: web.Request, store_id: int, today: dt.date) -> reports.StorePart:
    """The store's today, from memory kept up to date by the writers (queried when that cannot
    vouch for every commit before the request)."""
    day = await request.app[STORES_TODAY].get(store_id, today, _caught_up(request))
    if day is None:
        return await _querying(request, reports.store_part, store_id, today, today)()
    return reports.StorePart(day.days(), day.items, day.measures or {})


async def _store_through_today(
    request: web.Request, store_id: int, first: dt.date, today: dt.date
) -> tuple[dict, list[reports.StorePart]]:
    """The store, and its days first..today as parts: the days before today (kept in the
    report cache until a late sale or a return changes them) and today."""
    closed = []
    if first < today:
        yesterday = today - dt.timedelta(days=1)
        closed.append(
            Part(
                ("store_part", first, yesterday, store_id),
                _querying(request, reports.store_part, store_id, first, yesterday),
                Scope(first, yesterday, store_id),
            )
        )
    # One after the other, not gathered (two tasks cost more than they save): the lookups wait for
    # the report cache's round trip, and today then needs no other.
    store, parts = await _with_store(request, store_id, closed)
    return store, [*parts, await _store_today(request, store_id, today)]


_ONE_DAY = dt.timedelta(days=1)
_NO_DAYS = period_parts.KeyedSums({}, [])  # one object: a top over today alone is kept as such


async def _chain_through_today(
    request: web.Request, name: str, first: dt.date, last: dt.date, today: dt.date, query
) -> tuple[list, ChainDay] | None:
    """A chain-wide period that holds today, as `query(conn, a, b)` over its days before today
    (kept in the report cache across commits) and after it (nearly always none: a sale stamped a
    moment ahead of the clock at midnight), and the chain's today from memory (api.chain_today).
    None for a period without today, or a today memory cannot vouch for: the caller queries."""
    if not first <= today <= last:
        return None
    ranges = ([(first, today - _ONE_DAY)] if first < today else []) + (
        [(today + _ONE_DAY, last)] if last > today else []
    )
    parts = [Part((name, a, b, None), _querying(request, query, a, b), Scope(a, b)) for a, b in ranges]
    found = await _get_all(request, parts)
    chain = await request.app[CHAIN_TODAY].get(today, _caught_up(request))
    return None if chain is None else (found, chain)


async def _chain_top(
    request: web.Request, kind: str, first: dt.date, last: dt.date, today: dt.date, cnt: int
) -> list[tuple[int, int]] | None:
    """The chain's top `cnt` stores by income or items by units (`kind`) over a period that holds
    today: its other days' sums plus today's; None as _chain_through_today."""
    query = reports.stores_of_period if kind == "stores" else reports.items_of_period
    through = await _chain_through_today(request, f"{kind}_of_period", first, last, today, query)
    if through is None:
        return None
    found, chain = through
    closed = _NO_DAYS
    for part in found:
        closed = part if closed is _NO_DAYS else closed.plus(part)
    return chain.top(kind, closed, cnt)


async def list_items(request: web.Request) -> web.Response:
    as_csv = wants_csv(request)  # validates `format` before any query
    # the prices in effect now: a new answer once a scheduled change takes effect
    now = now_us()
    in_effect = request.app[INTAKE].catalogue.prices_in_effect(now)
    rows = await _cached(request, ("items", in_effect), CATALOGUE_ONLY, reports.list_items, from_us(now))
    return table_response(rows, ["id", "name", "price"], "items", as_csv)


async def list_stores(request: web.Request) -> web.Response:
    as_csv = wants_csv(request)
    rows = await _cached(request, ("stores",), CATALOGUE_ONLY, reports.list_stores)
    return table_response(rows, ["id", "address"], "stores", as_csv)


async def top_items(request: web.Request) -> web.Response:
    cnt = int_param(request.query, "cnt", 10, 1, 1000)
    store_id = int_param(request.query, "store_id", None, 1, MAX_ID)
    period = _period(request)
    as_csv = wants_csv(request)
    columns = ["id", "name", "sales_amount"]
    if store_id is None and period is None:  # all time, chain-wide: as before any period existed
        rows = await _cached(request, ("top_items", cnt), EVERYTHING, reports.top_items, cnt)
        return table_response(rows, columns, "top-items", as_csv)
    first, last = period or (dt.date.min, dt.date.max)
    today = _today(request)
    if store_id is None:
        top = await _chain_top(request, "items", first, last, today, cnt)
        if top is not None:
            names = await _get(request, ("item_names",), _querying(request, reports.item_names), CATALOGUE_ONLY)
            rows = reports.named_top(top, names)
        else:
            rows = await _cached(
                request, ("top_items_in", first, last, cnt), Scope(first, last), reports.top_items_in, first, last, cnt
            )
    else:
        if _ends_today(first, last, today):
            _, parts = await _store_through_today(request, store_id, first, today)
            rows = await _named_top(request, [part.items for part in parts], cnt)
        elif len(period_parts.split_at(first, last, today)) == 1:
            whole = Part(
                ("top_items_of_store", first, last, cnt, store_id),
                _querying(request, reports.top_items_of_store, store_id, first, last, cnt),
                Scope(first, last, store_id),
            )
            _, (rows,) = await _with_store(request, store_id, [whole])
        else:

            async def units(conn, a: dt.date, b: dt.date, _live: bool):
                return await reports.store_item_units(conn, store_id, a, b)

            _, parts = await _with_store(
                request, store_id, _period_parts(request, "store_item_units", first, last, store_id, units, today=today)
            )
            rows = await _named_top(request, parts, cnt)
    name = "top-items" + (f"-store-{store_id}" if store_id else "") + (f"-{first}-{last}" if period else "")
    return table_response(rows, columns, name, as_csv)


async def top_stores(request: web.Request) -> web.Response:
    cnt = int_param(request.query, "cnt", 10, 1, 1000)
    period = _period(request)
    as_csv = wants_csv(request)
    columns = ["id", "address", "income"]
    if period is None:
        month = _month(request)
        first, last = month, reports.month_end(month)
        name = f"top-stores-{month:%Y-%m}"
        whole = Part(
            ("top_stores", month, cnt), _querying(request, reports.top_stores, month, cnt), _month_scope(month, month)
        )
    else:
        first, last = period
        name = f"top-stores-{first}-{last}"
        whole = Part(
            ("top_stores_in", first, last, cnt),
            _querying(request, reports.top_stores_in, first, last, cnt),
            Scope(first, last),
        )
    top = await _chain_top(request, "stores", first, last, _today(request), cnt)
    if top is None:
        rows = await _get(request, whole.key, whole.compute, whole.scope)
    else:
        addresses = await _get(
            request, ("store_addresses",), _querying(request, reports.store_addresses), CATALOGUE_ONLY
        )
        rows = reports.addressed_top(top, addresses)
    return table_response(rows, columns, name, as_csv)


async def store_report(request: web.Request) -> web.Response:
    """One store's page over a period (default: this month so far); CSV: its days."""
    raw_id = request.match_info["id"]
    if not _DIGITS.fullmatch(raw_id) or not 1 <= int(raw_id) <= MAX_ID:
        raise BadRequest(f"no store with id {raw_id[:40]!r}", status=404)
    cnt = int_param(request.query, "cnt", 10, 1, 1000)
    period = _period(request)
    as_csv = wants_csv(request)
    store_id = int(raw_id)
    today = _today(request)
    first, last = period or (today.replace(day=1), today)

    if _ends_today(first, last, today):
        store, parts = await _store_through_today(request, store_id, first, today)
        top_items = await _named_top(request, [p.items for p in parts], cnt)
        page = reports.store_page(first, last, parts, top_items)
    elif len(period_parts.split_at(first, last, today)) == 1:
        whole = Part(
            ("store_report", store_id, first, last, cnt),
            _querying(request, reports.store_report, store_id, first, last, cnt),
            Scope(first, last, store_id),
        )
        store, (page,) = await _with_store(request, store_id, [whole])
    else:

        async def store_part(conn, a: dt.date, b: dt.date, _live: bool):
            return await reports.store_part(conn, store_id, a, b)

        store, parts = await _with_store(
            request, store_id, _period_parts(request, "store_part", first, last, store_id, store_part, today=today)
        )
        top_items = await _named_top(request, [p.items for p in parts], cnt)
        page = reports.store_page(first, last, parts, top_items)
    if as_csv:
        return table_response(
            page["days"], ["day", *reports.PERIOD_MEASURES], f"store-{store_id}-{first}-{last}", as_csv
        )
    return json_response({"store": store, **page})


def _chain_totals(today: dt.date):
    """reports.chain_totals over days a..b as a part of a period with today: the days after
    today are a few days' rows."""

    async def totals(conn, a: dt.date, b: dt.date):
        return await reports.chain_totals(conn, a, b, a > today)

    return totals


def _this_month_so_far(request: web.Request) -> tuple[dt.date, dt.date]:
    today = _today(request)
    return today.replace(day=1), today


async def period_totals(request: web.Request) -> web.Response:
    """The chain's totals over a period (default: this month so far), returns beside."""
    first, last = _period(request) or _this_month_so_far(request)
    as_csv = wants_csv(request)
    today = _today(request)
    through = await _chain_through_today(request, "totals", first, last, today, _chain_totals(today))
    if through is not None:
        found, chain = through
        totals = chain.assembled(
            ("totals", first, last),
            found,
            lambda: {"from": first.isoformat(), "to": last.isoformat(), **period_parts.add([*found, chain.totals()])},
        )
    else:
        totals = await _summed(
            request,
            "totals",
            first,
            last,
            None,
            reports.chain_totals,
            lambda parts: {"from": first.isoformat(), "to": last.isoformat(), **period_parts.add(parts)},
            today=today,
        )
    if as_csv:
        return table_response([totals], list(totals), f"totals-{first}-{last}", as_csv)
    return json_response(totals)


async def hours(request: web.Request) -> web.Response:
    """Sales by weekday and hour over a period (default: this month so far), chain-wide or one store's."""
    store_id = int_param(request.query, "store_id", None, 1, MAX_ID)
    first, last = _period(request) or _this_month_so_far(request)
    as_csv = wants_csv(request)
    if store_id is not None:
        await _store(request, store_id)

    async def cells(conn, a: dt.date, b: dt.date, _live: bool = False):
        return await reports.hour_cells(conn, a, b, store_id)

    today = _today(request)
    through = (
        None if store_id is not None else await _chain_through_today(request, "hour_cells", first, last, today, cells)
    )
    if through is not None:
        found, chain = through
        answer = chain.assembled(
            ("hours", first, last), found, lambda: reports.hours(first, last, None, [*found, chain.hour_cells()])
        )
    else:
        answer = await _summed(
            request,
            "hour_cells",
            first,
            last,
            store_id,
            cells,
            lambda parts: reports.hours(first, last, store_id, parts),
            today=today,
        )
    if as_csv:
        name = "hours" + (f"-store-{store_id}" if store_id else "") + f"-{first}-{last}"
        return table_response(answer["cells"], ["weekday", "hour", "income", "units", "sales"], name, as_csv)
    return json_response(answer)


async def month_summary(request: web.Request) -> web.Response:
    month = _month(request)
    as_csv = wants_csv(request)
    summary = await _cached(
        request,
        ("summary", month),
        _month_scope(reports.previous_month(month) or month, month),
        reports.month_summary,
        month,
    )
    if as_csv:
        return table_response([summary], list(summary), f"summary-{month:%Y-%m}", as_csv)
    return json_response(summary)


async def daily(request: web.Request) -> web.Response:
    month = _month(request)
    as_csv = wants_csv(request)
    rows = await _cached(request, ("daily", month), _month_scope(month, month), reports.daily, month)
    return table_response(rows, ["day", "income", "units", "sales"], f"daily-{month:%Y-%m}", as_csv)


async def trend(request: web.Request) -> web.Response:
    """Income per month, the last `months` months up to this one, beside a year before."""
    months = int_param(request.query, "months", 12, 1, 120)
    store_id = int_param(request.query, "store_id", None, 1, MAX_ID)
    as_csv = wants_csv(request)
    if store_id is not None:
        await _store(request, store_id)
    last = reports.report_month(None, None, request.app[SETTINGS].timezone)

    async def totals(conn, a: dt.date, b: dt.date, _live: bool):
        return await reports.month_totals(conn, a, b, store_id)

    # Split at this month (a year and more before it: always two parts): the months before it
    # stay in memory while tills sell; this month's part counts all its days (the chain's: its
    # days before today, kept too, and today from memory).
    before, this_month = _period_parts(
        request, "month_totals", reports.trend_first_month(last, months), last, store_id, totals, today=last
    )
    this_month = dataclasses.replace(this_month, scope=_month_scope(last, last, store_id))
    today = _today(request)
    through = None
    if store_id is None:
        through = await _chain_through_today(
            request, "totals", last, reports.month_end(last), today, _chain_totals(today)
        )
    if through is not None:
        found, chain = through
        (months_before,) = await _get_all(request, [before])

        def assemble() -> list[dict]:
            month = period_parts.add([*found, chain.totals()])
            this_month = {last: {m: month.get(m, 0) for m in ("income", "units", "sales")}}
            return reports.trend(last, months, period_parts.add_by_key([months_before, this_month]))

        rows = chain.assembled(("trend", last, months), [months_before, *found], assemble)
    else:
        rows = reports.trend(last, months, period_parts.add_by_key(await _get_all(request, [before, this_month])))
    name = "trend" + (f"-store-{store_id}" if store_id else "") + f"-{last:%Y-%m}"
    return table_response(
        rows, ["month", "income", "units", "sales", "income_year_before", "income_change_pct"], name, as_csv
    )
