"""What a writer's transaction changed in the reports, said in its NOTIFY (channel
`reports_changed`), so that each API process drops only the cached reports it touches
(api.report_cache): the sales and returns of moments `from_us`..`to_us` (Unix microseconds), in
the stores listed, or in any store (`stores` null: a batch of many stores).

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

# $1: the payload. Inside the writer's transaction, before its rollup statements.
ANNOUNCE = f"SELECT pg_notify('{CHANNEL}', $1), set_config('sales.reports_announced', 'on', true)"


def payload(from_us: int, to_us: int, store_ids: Iterable[int]) -> str:
    stores = sorted(set(store_ids))
    return json.dumps(
        {"from_us": int(from_us), "to_us": int(to_us), "stores": stores if len(stores) <= MAX_STORES else None},
        separators=(",", ":"),
    )
