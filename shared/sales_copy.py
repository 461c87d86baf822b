"""Sales as PostgreSQL binary COPY data, built by numpy a whole column at a time.

Used by the seeding command (millions of generated sales) and by the worker (each batch
from the queue). Sales whose columns are all fixed-width (no idempotency key, no till time
kept) are rows of one numpy array each, written out in one go: those of other callers with
NULL till columns, a till's with its id and sequence number. The rare other sale is packed on
its own.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

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
    "till_id",
    "till_seq",
    "till_time",
]
HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)

# A column of fixed_rows: (name, '>i2' / '>i4' / '>i8', values) or (name, None, None) for NULLs.
Column = tuple[str, str | None, np.ndarray | int | None]


def fixed_rows(columns: Sequence[Column], rows: int) -> bytes:
    """Binary COPY rows (without header and trailer): per row the field count, then (length,
    value) for each column, big-endian; a column of kind None is NULL (length -1, no value)
    and values that are one int are every row's."""
    dtype = [("fields", ">i2")]
    for name, kind, _ in columns:
        dtype += [(name + "_len", ">i4")] + ([(name, kind)] if kind else [])
    data = np.empty(rows, dtype=dtype)
    data["fields"] = len(columns)
    for name, kind, values in columns:
        data[name + "_len"] = int(kind[2:]) if kind else -1
        if kind:
            data[name] = values
    return data.tobytes()


def unkeyed_rows(
    ids: np.ndarray,
    times_us: np.ndarray,
    item_ids: np.ndarray,
    store_ids: np.ndarray,
    prices: np.ndarray,
    quantities: np.ndarray | int,
    accepted_us: np.ndarray,
    list_prices: np.ndarray,
    till_ids: np.ndarray | None = None,
    till_seqs: np.ndarray | None = None,
) -> bytes:
    """Rows of sales without an idempotency key or a till time (times in Unix microseconds);
    the till columns NULL unless `till_ids` and `till_seqs` are given."""
    tilled = till_ids is not None
    return fixed_rows(
        [
            ("id", ">i8", ids),
            ("sale_time", ">i8", times_us - PG_EPOCH_US),
            ("item_id", ">i4", item_ids),
            ("store_id", ">i4", store_ids),
            ("price", ">i4", prices),
            ("quantity", ">i4", quantities),
            ("idempotency_key", None, None),
            ("accepted_at", ">i8", accepted_us - PG_EPOCH_US),
            ("list_price", ">i4", list_prices),
            ("till_id", ">i4" if tilled else None, till_ids),
            ("till_seq", ">i8" if tilled else None, till_seqs),
            ("till_time", None, None),
        ],
        len(ids),
    )


# How each column of a row is packed: a struct, None for text, and whether it is a moment.
_INT4, _INT8 = struct.Struct(">ii"), struct.Struct(">iq")
_PACKING = [_INT8, _INT8, _INT4, _INT4, _INT4, _INT4, None, _INT8, _INT4, _INT4, _INT8, _INT8]
_MOMENTS = {1, 7, 11}
_NULL = struct.pack(">i", -1)
_FIELD_COUNT = struct.pack(">h", len(COLUMNS))


def one_row(row: Sequence) -> bytes:
    """One row of any sale: (id, sale_time_us, item_id, store_id, price, quantity,
    idempotency_key, accepted_at_us, list_price, till_id, till_seq, till_time_us), None as NULL."""
    parts = [_FIELD_COUNT]
    for index, (packing, value) in enumerate(zip(_PACKING, row)):
        if value is None:
            parts.append(_NULL)
        elif packing is None:
            encoded = value.encode()
            parts.append(struct.pack(">i", len(encoded)) + encoded)
        else:
            parts.append(packing.pack(packing.size - 4, value - PG_EPOCH_US if index in _MOMENTS else value))
    return b"".join(parts)
