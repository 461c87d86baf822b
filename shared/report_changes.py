"""What a writer's transaction changed in the reports, said in its NOTIFY (channel
`reports_changed`), so that each API process drops only the cached reports it touches
(api.report_cache): the sales and returns of moments `from_us`..`to_us` (Unix microseconds), in
the stores listed, or in any store (`stores` null: a batch of many stores), and `timezone`, the
zone the rollups are cut in.

An empty payload, which the rollups' triggers and every other writer send, means "anything may
have changed". A writer that announces sets `sales.reports_announced` for its transaction
(migration 011), so that the triggers do not add their empty one.

A batch of sales small enough (MAX_DELTA_SALES) also says what it added to each store's day
and items, on channel `store_days_added` (DELTAS), and its change says so (`deltas`: true).
Each chunk carries the writer's transaction id, so that an API process can tell whether the
rows it read (api.stores_today, api.chain_today, with the snapshot they were read in) hold it
already.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from shared.rollups import PARTIAL_SALES

CHANNEL = "reports_changed"
# A NOTIFY payload is at most 8,000 bytes: past this many stores the batch says "any store".
MAX_STORES = 500


def announce_sql(param: str) -> str:
    """The select list that announces a writer's change, the payload in query parameter `param`
    (as "$1"): its NOTIFY, and the mark that keeps the rollups' triggers quiet (see above). The
    NOTIFY adds the zone the rollups are cut in, read in the same transaction: the moments are
    cut into that zone's days, whatever zone an API process last saw (the rollups may have been
    rebuilt in another). A scalar subquery, not a FROM: on Citus report_settings is a reference
    table, and the NOTIFY must be sent where the API listens."""
    zone = "jsonb_build_object('timezone', (SELECT timezone FROM report_settings))"
    # text first: a connection with a jsonb codec would encode the payload string as a JSON string;
    # an empty one ("anything may have changed") stays empty
    with_zone = f"coalesce((nullif({param}::text, '')::jsonb || {zone})::text, '')"
    return f"pg_notify('{CHANNEL}', {with_zone}), set_config('sales.reports_announced', 'on', true)"


# $1: the payload. Inside the writer's transaction, before its rollup statements.
ANNOUNCE = f"SELECT {announce_sql('$1')}"


def payload(from_us: int, to_us: int, store_ids: Iterable[int], *, deltas: bool = False) -> str:
    """`deltas`: the transaction also sends DELTAS of every sale it adds."""
    stores = sorted(set(store_ids))
    said: dict = {"from_us": int(from_us), "to_us": int(to_us), "stores": stores if len(stores) <= MAX_STORES else None}
    if deltas:
        said["deltas"] = True
    return json.dumps(said, separators=(",", ":"))


DELTAS_CHANNEL = "store_days_added"
# Past this many sales a batch says only which stores it touched: each API process then reads
# those it keeps again (a few per store), where parsing the deltas of a 100,000-sale batch would
# cost every API process more than that, and 1,250 NOTIFYs.
MAX_DELTA_SALES = 2000
# Rows per NOTIFY: a row is at most ~115 bytes of JSON, and a payload at most 8,000.
DELTA_ROWS_PER_NOTIFY = 64

# What a batch adds to each store's day, items and hours ($1-$7: its sums by second, item and
# store, as PARTIAL_SALES reads them): rows of [day, hour, store, item, income, units, sales,
# discounts], in
# chunks, each with the transaction's id and how many chunks it sends (a listener applies a
# transaction once it has them all). Sent after the rollup statements, in the same transaction.
# (A batch spans an hour's edge rarely: the hour splits few rows.)
DELTAS = f"""
SELECT pg_notify(
    '{DELTAS_CHANNEL}',
    json_build_object(
        'xid', pg_current_xact_id()::text,
        'chunks', count(*) OVER (),
        'rows', json_agg(json_build_array(day, hour, store_id, item_id, income, units, sales, discounts))
    )::text
)
FROM (SELECT local_time::date AS day, extract(hour FROM local_time)::int AS hour, store_id, item_id,
             sum(income)::bigint AS income, sum(units)::bigint AS units, sum(sales)::bigint AS sales,
             sum(discounts)::bigint AS discounts, (row_number() OVER () - 1) / {DELTA_ROWS_PER_NOTIFY} AS chunk
      FROM ({PARTIAL_SALES}) AS local
      GROUP BY 1, 2, 3, 4) AS added
GROUP BY chunk
"""
