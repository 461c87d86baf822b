"""What the client raises. Problems with the server never raise: they show in `status()`."""

from __future__ import annotations


class PosClientError(Exception):
    """Base of every error this package raises."""


class SpoolError(PosClientError):
    """The spool cannot be opened or used (wrong store, locked by another client, disk)."""


class InvalidSale(PosClientError, ValueError):
    """A sale that the server would refuse whatever happens: not recorded."""
