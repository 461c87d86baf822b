"""python -m pos_client status|requeue --spool PATH: look into a till's spool, from another process.

    python -m pos_client status --spool /var/lib/pos/spool.db          # counts, last error, set-aside sales
    python -m pos_client status --spool /var/lib/pos/spool.db --json
    python -m pos_client requeue --spool /var/lib/pos/spool.db --all   # after the cause was fixed (returns too)
    python -m pos_client requeue --spool /var/lib/pos/spool.db 17 18
"""  # fmt: skip  # else ruff format unindents the example above

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
import time

from pos_client.errors import SpoolError
from pos_client.spool import Spool


def _age(iso: str | None) -> str:
    if not iso:
        return "-"
    seconds = max(0.0, time.time() - dt.datetime.fromisoformat(iso).timestamp())
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _when(unix: str | None) -> str:
    if not unix:
        return ""
    return dt.datetime.fromtimestamp(float(unix), dt.timezone.utc).isoformat(timespec="seconds")


def status(spool: Spool, as_json: bool) -> int:
    counts = spool.counts()
    refused = spool.refused()
    refused_returns = spool.refused_returns()
    info = {
        "spool": spool.path,
        "store_id": spool.store_id,
        "pending": counts.pending,
        "oldest_pending_sale_time": counts.oldest_pending,
        "sent_kept": counts.sent,
        "set_aside": counts.refused,
        "last_error": spool.meta("last_error"),
        "last_error_at": _when(spool.meta("last_error_at")) or None,
        "sending_stopped": spool.meta("stopped"),
        "set_aside_sales": [dataclasses.asdict(s) for s in refused],
        "returns_pending": counts.returns_pending,
        "returns_sent_kept": counts.returns_sent,
        "returns_set_aside": counts.returns_refused,
        "set_aside_returns": [dataclasses.asdict(r) for r in refused_returns],
    }
    if as_json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"spool {spool.path} (store {spool.store_id})")
    print(f"  pending:   {counts.pending} (oldest {_age(counts.oldest_pending)} ago)")
    print(f"  sent:      {counts.sent} (kept as the till's ledger)")
    print(f"  set aside: {counts.refused}")
    print(
        f"  returns:   {counts.returns_pending} pending (their sale's included), {counts.returns_sent} sent, "
        f"{counts.returns_refused} set aside"
    )
    if info["sending_stopped"]:
        print(f"  SENDING STOPPED: {info['sending_stopped']}")
    if info["last_error"]:
        print(f"  last error ({info['last_error_at']}): {info['last_error']}")
    if refused:
        print("\nset aside (refused by the server; never sent again unless requeued):")
        print(f"  {'seq':>8}  {'sale_time':<32}  {'item':>8}  {'qty':>5}  reason")
        for sale in refused:
            print(f"  {sale.seq:>8}  {sale.sale_time:<32}  {sale.item_id:>8}  {sale.quantity:>5}  {sale.reason}")
        print("\nonce the cause is fixed: python -m pos_client requeue --spool PATH --all (or the seqs)")
    if refused_returns:
        print("\nreturns set aside (never sent again unless requeued with --all):")
        print(f"  {'id':>8}  {'sale seq':>8}  {'return_time':<32}  {'qty':>5}  reason")
        for ret in refused_returns:
            print(f"  {ret.id:>8}  {ret.sale_seq:>8}  {ret.return_time:<32}  {ret.quantity:>5}  {ret.reason}")
    return 0


def requeue(spool: Spool, seqs: list[int], all_: bool) -> int:
    if not all_ and not seqs:
        print("name the sales to requeue (their seq) or give --all", file=sys.stderr)
        return 2
    count = spool.requeue(None if all_ else seqs)
    print(f"{count} sale(s) back to pending: the running client sends them at its next round")
    if all_:  # a return goes after its sale: one whose sale is still set aside is set aside again
        print(f"{spool.requeue_returns()} return(s) back to pending")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pos_client", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("status", help="pending and set-aside sales, last error")
    show.add_argument("--spool", required=True, help="the spool file the till's SalesClient uses")
    show.add_argument("--json", action="store_true")
    again = commands.add_parser("requeue", help="set-aside sales (with --all, returns too) back to pending")
    again.add_argument("--spool", required=True)
    again.add_argument("--all", action="store_true", help="every set-aside sale and return")
    again.add_argument("seqs", nargs="*", type=int, help="seq of each sale (see status)")
    args = parser.parse_args(argv)
    if not os.path.exists(args.spool):
        print(f"no spool at {args.spool}", file=sys.stderr)
        return 2
    try:
        spool = Spool(args.spool)
    except SpoolError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        if args.command == "status":
            return status(spool, args.json)
        return requeue(spool, args.seqs, args.all)
    finally:
        spool.close()


if __name__ == "__main__":
    sys.exit(main())
