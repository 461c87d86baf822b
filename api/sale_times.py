"""Which moments a sale or return may carry and still be stored: refused up front, with 422.

A sale may not be older than `max_age_days` (MAX_SALE_AGE_DAYS): a till whose clock fell back
to 2000 after a power loss gets its sales set aside visibly instead of counted in a year
nobody looks at. And a sale of a month whose raw sales were archived (python -m
shared.retention) cannot be stored any more (it could not be told from one the archive
already counts): refused here rather than answered 202 and then filed in dead_letter.
"""

from __future__ import annotations

from api.catalogue import Catalogue
from api.moments import iso_utc
from shared import partitions

DAY_US = 86_400 * 1_000_000


class SaleTimeLimits:
    def __init__(self, catalogue: Catalogue, max_age_days: int):
        self._catalogue = catalogue
        self.max_age_days = max_age_days

    def oldest_us(self, accepted_us: int) -> int:
        return accepted_us - self.max_age_days * DAY_US

    def too_old(self, name: str, moment_us: int, accepted_us: int) -> str | None:
        """Why `moment_us` is too far back to be accepted now, or None."""
        if moment_us >= self.oldest_us(accepted_us):
            return None
        return (
            f"{name} {iso_utc(moment_us)} is more than {self.max_age_days} days ago, the most this server "
            f"accepts (MAX_SALE_AGE_DAYS); the oldest accepted now is {iso_utc(self.oldest_us(accepted_us))}"
        )

    def refusal(self, moment_us: int, accepted_us: int) -> str | None:
        """Why a sale of `moment_us` cannot be stored, or None."""
        if reason := self.too_old("sale_time", moment_us, accepted_us):
            return reason
        month = partitions.month_of_us(moment_us)
        if month in self._catalogue.archived_months:
            return (
                f"sale_time {iso_utc(moment_us)} falls in {month.isoformat()[:7]}, whose sales are archived "
                "(python -m shared.retention): a sale of that month can no longer be stored"
            )
        return None
