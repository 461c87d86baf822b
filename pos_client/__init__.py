"""The tills' side of the sales backbone: record sales durably on the till, send them in batches.

    from pos_client import SalesClient
    client = SalesClient("https://sales.example", key=POS_KEY, store_id=7, spool="/var/lib/pos/spool.db")
"""  # fmt: skip  # else ruff format unindents the example above

from __future__ import annotations

__version__ = "0.1.0"

from pos_client.client import RecordedReturn, RecordedSale, SalesClient, Status
from pos_client.errors import InvalidSale, PosClientError, SpoolError

__all__ = ["InvalidSale", "PosClientError", "RecordedReturn", "RecordedSale", "SalesClient", "SpoolError", "Status"]
