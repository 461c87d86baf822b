"""Counters the worker keeps in a Redis hash so that the API's /metrics can show them."""

from __future__ import annotations

BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 500, 1_000, 5_000, 10_000, 50_000, 100_000)
COUNTERS = {
    "batches": "Batches written (one transaction each)",
    "sales_in": "Sales taken off the queue, redeliveries included",
    "sales_written": "Sales inserted into the sales table",
    "duplicates": "Sales skipped because they were already stored (redelivery or retry)",
    "dead_letters": "Sales that could never be written, moved to dead_letter",
    "retries": "Batch attempts that failed on a transient error and were retried",
}


def batch_fields(size: int, written: int, duplicates: int, dead: int) -> dict[str, int]:
    """What one batch adds to the hash (cumulative histogram buckets included)."""
    fields = {
        "batches": 1,
        "sales_in": size,
        "sales_written": written,
        "duplicates": duplicates,
        "dead_letters": dead,
        "batch_size_sum": size,
    }
    for bound in BATCH_SIZE_BUCKETS:
        if size <= bound:
            fields[f"batch_size_le_{bound}"] = 1
    return fields
