"""Sales as PostgreSQL binary COPY data, built by numpy a whole column at a time.

Used by the seeding command (millions of generated sales) and by the worker (each batch
from the queue). A sale without an idempotency key is a fixed-width row, so a batch of them
is one numpy array written out in one go; the rare sale with a key is packed on its own.
"""

from __future__ import annotations

import struct

import numpy as np

PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds: binary COPY's zero
COLUMNS = [
    "id",
    "sale_time",
    "item_id",
    "store_id",
    "price",
    "quantity",
    "idempotency_key",
    "accepted_at",
    "list_price",
]
HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)

# One row: field count, then (length, value) for each column, big-endian; -1 is NULL.
_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("id_len", ">i4"),
        ("id", ">i8"),
        ("time_len", ">i4"),
        ("sale_time", ">i8"),
        ("item_len", ">i4"),
        ("item_id", ">i4"),
        ("store_len", ">i4"),
        ("store_id", ">i4"),
        ("price_len", ">i4"),
        ("price", ">i4"),
        ("qty_len", ">i4"),
        ("quantity", ">i4"),
        ("key_len", ">i4"),
        ("acc_len", ">i4"),
        ("accepted_at", ">i8"),
        ("list_len", ">i4"),
        ("list_price", ">i4"),
    ]
)
_LENGTHS = {
    "id_len": 8,
    "time_len": 8,
    "item_len": 4,
    "store_len": 4,
    "price_len": 4,
    "qty_len": 4,
    "key_len": -1,
    "acc_len": 8,
    "list_len": 4,
}
_KEYED_HEAD = struct.Struct(">hiqiq" + "i" * 9)  # the columns before the key
_KEYED_TAIL = struct.Struct(">iqii")  # accepted_at, list_price


def unkeyed_rows(
    ids: np.ndarray,
    times_us: np.ndarray,
    item_ids: np.ndarray,
    store_ids: np.ndarray,
    prices: np.ndarray,
    quantities: np.ndarray | int,
    accepted_us: np.ndarray,
    list_prices: np.ndarray,
) -> bytes:
    """Rows of sales without an idempotency key (times in Unix microseconds)."""
    rows = np.empty(len(ids), dtype=_ROW)
    rows["fields"] = len(COLUMNS)
    for length_field, size in _LENGTHS.items():
        rows[length_field] = size
    rows["id"] = ids
    rows["sale_time"] = times_us - PG_EPOCH_US
    rows["item_id"] = item_ids
    rows["store_id"] = store_ids
    rows["price"] = prices
    rows["quantity"] = quantities
    rows["accepted_at"] = accepted_us - PG_EPOCH_US
    rows["list_price"] = list_prices
    return rows.tobytes()


def keyed_row(
    sale_id: int,
    time_us: int,
    item_id: int,
    store_id: int,
    price: int,
    quantity: int,
    key: str,
    accepted_us: int,
    list_price: int,
) -> bytes:
    """One row of a sale with an idempotency key."""
    encoded = key.encode()
    return (
        _KEYED_HEAD.pack(
            len(COLUMNS),
            8,
            sale_id,
            8,
            time_us - PG_EPOCH_US,
            4,
            item_id,
            4,
            store_id,
            4,
            price,
            4,
            quantity,
            len(encoded),
        )
        + encoded
        + _KEYED_TAIL.pack(8, accepted_us - PG_EPOCH_US, 4, list_price)
    )
