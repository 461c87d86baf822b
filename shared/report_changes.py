"""What a writer's transaction changed in the reports, said in its NOTIFY (channel
`reports_changed`), so that each API process drops only the cached reports it touches
(api.report_cache): the sales and returns of moments `from_us`..`to_us` (Unix microseconds), in
the stores listed, or in any store (`stores` null: a batch of many stores), and `timezone`, the
zone the rollups are cut in.

An empty payload, which the rollups' triggers and every other writer send, means "anything may
have changed". A writer that announces sets `sales.reports_announced` for its transaction
(migration 011), so that the triggers do not add their empty one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

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


def payload(from_us: int, to_us: int, store_ids: Iterable[int]) -> str:
    stores = sorted(set(store_ids))
    return json.dumps(
        {"from_us": int(from_us), "to_us": int(to_us), "stores": stores if len(stores) <= MAX_STORES else None},
        separators=(",", ":"),
    )
