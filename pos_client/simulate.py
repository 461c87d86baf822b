"""python -m pos_client.simulate: a chain's trading day, compressed, against a running stack.

    python -m pos_client.simulate --url http://localhost:8080 --stores 4 --tills 2 --day-seconds 60

N stores x M tills, each its own process (`python -m pos_client.till`) with its own spool,
sell from 09:00 to 21:00 squeezed into --day-seconds, with a lunch and an evening peak and
baskets of 1-8 lines; --return-share of the sales (3%) are brought back a few baskets later.
Some tills lose the network for a while (their sales and returns wait in the spool and go out
when it returns); --kill tills are SIGKILLed with sales in their spool and started again. At
the end the tills' ledgers are reconciled with the server: income per store and month against
/stores/top/, units per item against /items/top/ (the change since the start, net of the
returns), and with --database-url (or DATABASE_URL) every sale by key and id in `sales`, every
return likewise in `returns`.

With AUTH_REQUIRED on the server, give --admin-token (or ADMIN_TOKEN): the simulator issues a
POS key per store and an owner key, and revokes them at the end. Nobody else must sell in the
simulated stores meanwhile, or the reports' change will not be the ledgers'.

Behind TLS with a private CA (Caddy's internal one for localhost), give its root certificate:
--ca-bundle (or POS_CA_BUNDLE). Keys go over a plain http:// URL only with --allow-plain-http.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

from pos_client.reconcile import Ledger, Reports, database_check, differences, expected_totals, timezone
from pos_client.spool import PENDING, REFUSED, SENT, Spool
from pos_client.till import CLOSING_HOUR, OPENING_HOUR, Plan
from pos_client.transport import TransportError


@dataclasses.dataclass
class Till:
    name: str
    plan: Plan
    plan_path: pathlib.Path
    log_path: pathlib.Path
    kill_at: float | None = None  # seconds after the day opened
    proc: subprocess.Popen | None = None
    kills: int = 0
    pending_at_kill: int = 0

    def start(self) -> None:
        self.plan_path.write_text(json.dumps(dataclasses.asdict(self.plan)))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pos_client.till", str(self.plan_path)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )

    @property
    def process(self) -> subprocess.Popen:
        assert self.proc is not None, f"till {self.name} was never started"
        return self.proc

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.kills += 1

    def counts(self):
        spool = Spool(self.plan.spool)
        try:
            return spool.counts()
        finally:
            spool.close()


@dataclasses.dataclass(frozen=True)
class Connection:
    """Where the stack is and how to talk to it (the tills get the same)."""

    url: str
    ca_bundle: str | None = None
    allow_plain_http: bool = False

    def reports(self, key: str | None = None) -> Reports:
        try:
            return Reports(self.url, key, ca_bundle=self.ca_bundle, allow_plain_http=self.allow_plain_http)
        except ValueError as exc:  # a key for http:// without --allow-plain-http, an unreadable --ca-bundle
            raise SystemExit(str(exc)) from exc


class Keys:
    """A pos key per till (a key is a till's identity: two tills never share one) and an owner
    key: given, issued with the admin token, or none needed."""

    def __init__(
        self, conn: Connection, admin_token: str | None, owner_key: str | None, pos_keys: dict[int, list[str]]
    ):
        self.conn = conn
        self.admin_token = admin_token
        self.admin: Reports | None = None  # made when keys are needed: no token goes out otherwise
        self.owner = owner_key
        self.pos = {store: list(given) for store, given in pos_keys.items()}
        self.issued: list[str] = []
        self.required = False

    def detect(self) -> None:
        """Whether the server asks for keys (its catalogue answers 401 without one)."""
        probe = self.conn.reports()
        try:
            self.required = probe.http.request("GET", "/stores/").status == 401
        finally:
            probe.close()

    def prepare(self, stores: list[int], tills: int) -> None:
        if not self.required:  # none sent where none is asked for
            self.owner = None
            self.pos = {}
            return
        missing = [s for s in stores for _ in range(tills - len(self.pos.setdefault(s, [])))]
        if (missing or not self.owner) and self.admin_token:
            self.admin = self.conn.reports(self.admin_token)
        if (missing or not self.owner) and self.admin is None:
            raise SystemExit(
                "the server requires keys: give --admin-token (or ADMIN_TOKEN) to issue them, "
                "or --owner-key and --pos-keys"
            )
        if not self.owner:
            self.owner = self._issue({"kind": "owner", "label": "simulator"})
        for store in missing:
            label = f"simulator, store {store} till {len(self.pos[store]) + 1}"
            self.pos[store].append(self._issue({"kind": "pos", "store_id": store, "label": label}))
        time.sleep(5)  # a new key reaches every API process within 5 s

    def of_till(self, store: int, n: int) -> str | None:
        """The key of till n (from 1) of the store, if keys are needed."""
        given = self.pos.get(store, [])
        return given[n - 1] if n <= len(given) else None

    def _issue(self, body: dict) -> str:
        assert self.admin is not None  # prepare() stops first when it would need one
        answer = self.admin.http.request("POST", "/admin/keys/", body, self.admin.headers)
        if answer.status != 201:
            raise SystemExit(f"issuing a key failed: {answer.status} {answer.error()}")
        issued = answer.json()
        self.issued.append(issued["prefix"])
        return issued["key"]

    def revoke_issued(self) -> None:
        for prefix in self.issued:
            assert self.admin is not None  # the one that issued them
            self.admin.http.request("DELETE", f"/admin/keys/{prefix}", headers=self.admin.headers)


def offline_windows(rng: random.Random, day_seconds: float, share: float) -> list[list[float]]:
    """None, one or two outages of 10 to 60 simulated minutes."""
    if rng.random() >= share:
        return []
    minute = day_seconds / ((CLOSING_HOUR - OPENING_HOUR) * 60)
    windows = []
    for _ in range(rng.choice((1, 1, 2))):
        length = rng.uniform(10, 60) * minute
        start = rng.uniform(0.05, 0.85) * day_seconds
        windows.append([start, min(start + length, day_seconds * 0.95)])
    return sorted(windows)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m pos_client.simulate", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:8080")
    parser.add_argument("--stores", type=int, default=4, help="stores (the first N of GET /stores/)")
    parser.add_argument("--tills", type=int, default=2, help="tills per store")
    parser.add_argument("--day-seconds", type=float, default=60, help="real seconds for 09:00-21:00")
    parser.add_argument("--baskets", type=int, default=400, help="baskets per till per day")
    parser.add_argument("--offline-share", type=float, default=0.5, help="share of tills that lose the network")
    parser.add_argument("--kill", type=int, default=2, help="tills SIGKILLed once and started again")
    parser.add_argument(
        "--return-share", type=float, default=0.03, help="share of the sales brought back to the till (0 to 1)"
    )
    parser.add_argument("--spool-dir", help="where the spools go (default: a new temporary directory)")
    parser.add_argument(
        "--admin-token",
        default=os.environ.get("ADMIN_TOKEN"),
        help="to issue keys when the server requires them (default: $ADMIN_TOKEN)",
    )
    parser.add_argument(
        "--ca-bundle",
        default=os.environ.get("POS_CA_BUNDLE") or None,
        help="PEM file of the CA that signed the server's certificate, for a private CA such as "
        "Caddy's internal one (default: $POS_CA_BUNDLE; else the system's CAs)",
    )
    parser.add_argument(
        "--allow-plain-http",
        action="store_true",
        help="send keys (and the admin token) over an http:// --url: only on a network you trust",
    )
    parser.add_argument("--owner-key", help="an owner key for the reports")
    parser.add_argument("--pos-keys", help="JSON file {store_id: [a pos key per till]}: two tills never share a key")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="check every sale in `sales` (default: $DATABASE_URL; needs asyncpg)",
    )
    parser.add_argument("--report-timezone", default=os.environ.get("REPORT_TIMEZONE", "UTC"))
    parser.add_argument("--settle", type=float, default=30, help="seconds to wait for the reports to catch up")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if args.stores < 1 or args.tills < 1 or args.day_seconds <= 0 or args.baskets < 1:
        parser.error("--stores, --tills, --baskets and --day-seconds must be positive")
    if not 0 <= args.return_share <= 1:
        parser.error("--return-share must be from 0 to 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    tz = timezone(args.report_timezone)
    pos_keys = (
        {
            int(k): [v] if isinstance(v, str) else v
            for k, v in json.loads(pathlib.Path(args.pos_keys).read_text()).items()
        }
        if args.pos_keys
        else {}
    )
    conn = Connection(args.url, args.ca_bundle, args.allow_plain_http)
    keys = Keys(conn, args.admin_token, args.owner_key, pos_keys)
    try:
        keys.detect()
    except TransportError as exc:
        raise SystemExit(f"cannot reach {args.url}: {exc}") from exc
    reader = conn.reports((keys.owner or args.admin_token) if keys.required else None)
    all_stores = [s["id"] for s in reader.get("/stores/")]
    reader.close()
    if len(all_stores) < args.stores:
        raise SystemExit(f"the server has {len(all_stores)} stores, not {args.stores}")
    stores = all_stores[: args.stores]
    keys.prepare(stores, args.tills)
    reports = conn.reports(keys.owner)
    prices = reports.prices()
    items = sorted(prices)
    now = dt.datetime.now(tz)
    started_month = (now.year, now.month)
    before = reports.snapshot([started_month])

    spool_dir = pathlib.Path(args.spool_dir or tempfile.mkdtemp(prefix="pos-simulate-"))
    spool_dir.mkdir(parents=True, exist_ok=True)
    day_start = time.time() + 1.0
    tills: list[Till] = []
    for store in stores:
        for n in range(1, args.tills + 1):
            name = f"store{store}-till{n}"
            plan = Plan(
                url=args.url,
                key=keys.of_till(store, n),
                store_id=store,
                spool=str(spool_dir / f"{name}.db"),
                items=items,
                day_start=day_start,
                day_seconds=args.day_seconds,
                baskets_per_day=args.baskets,
                offline=offline_windows(rng, args.day_seconds, args.offline_share),
                seed=rng.randrange(10**9),
                flush_timeout=max(60.0, args.day_seconds),
                ca_bundle=args.ca_bundle,
                allow_plain_http=args.allow_plain_http,
                return_share=args.return_share,
            )
            tills.append(Till(name, plan, spool_dir / f"{name}.json", spool_dir / f"{name}.log"))
    for till in rng.sample(tills, min(args.kill, len(tills))):
        # during an outage when there is one: sales are then surely waiting in the spool
        outages = [(a + b) / 2 for a, b in till.plan.offline if b < args.day_seconds * 0.9]
        till.kill_at = outages[0] if outages else rng.uniform(0.2, 0.8) * args.day_seconds
    print(
        f"{len(tills)} tills ({args.stores} stores x {args.tills}), a day of 09:00-21:00 in {args.day_seconds:g} s, "
        f"spools in {spool_dir}",
        flush=True,
    )
    for till in tills:
        till.start()

    try:
        run_day(tills, day_start, args.day_seconds)
    finally:
        for till in tills:
            if till.proc and till.proc.poll() is None:
                till.kill()
    ledgers = [_ledger(t.plan.store_id, t.plan.spool) for t in tills]
    income, units = expected_totals(ledgers, prices, tz)
    months = {started_month} | {(y, m) for _, y, m in income}
    deadline = time.monotonic() + args.settle
    while True:
        after = reports.snapshot(months)
        diff = differences(before, after, income, units)
        if not (diff["stores"] or diff["items"]) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    db = asyncio.run(database_check(args.database_url, ledgers)) if args.database_url else None
    ok = summary(args, tills, ledgers, income, units, diff, db)
    reports.close()
    if keys.issued:
        keys.revoke_issued()
    return 0 if ok else 1


def _ledger(store_id: int, path: str) -> Ledger:
    spool = Spool(path)
    try:
        return Ledger(store_id, spool.ledger(), spool.returns_ledger())
    finally:
        spool.close()


def run_day(tills: list[Till], day_start: float, day_seconds: float) -> None:
    """Watch the tills sell; kill and restart the chosen ones; a progress line every 5 s."""
    next_line = time.time() + 5
    restart_at: dict[str, float] = {}
    while any(t.process.poll() is None for t in tills) or restart_at:
        now = time.time()
        for till in tills:
            kill_at = till.kill_at
            if kill_at is not None and till.kills == 0 and now - day_start >= kill_at and till.process.poll() is None:
                pending = till.counts().pending
                if pending or now - day_start >= kill_at + 3:  # with sales in its spool, if it has any soon
                    till.pending_at_kill = pending
                    till.kill()
                    restart_at[till.name] = now + 1.0
            if till.name in restart_at and now >= restart_at[till.name]:
                del restart_at[till.name]
                till.start()
        if now >= next_line:
            next_line = now + 5
            elapsed = min(max(now - day_start, 0), day_seconds)
            clock = OPENING_HOUR + (CLOSING_HOUR - OPENING_HOUR) * elapsed / day_seconds
            counts = [t.counts() for t in tills]
            offline = sum(any(a <= now - day_start < b for a, b in t.plan.offline) for t in tills)
            print(
                f"  {int(clock):02d}:{int(clock % 1 * 60):02d}  recorded {sum(c.pending + c.sent + c.refused for c in counts):>7,}"
                f"  sent {sum(c.sent for c in counts):>7,}  pending {sum(c.pending for c in counts):>6,}"
                f"  offline tills {offline}  killed so far {sum(t.kills for t in tills)}",
                flush=True,
            )
        time.sleep(0.05)


def summary(args, tills, ledgers, income, units, diff, db) -> bool:
    sales = [s for ledger in ledgers for s in ledger.sales]
    by_state = {state: [s for s in sales if s.state == state] for state in (SENT, PENDING, REFUSED)}
    returns = [r for ledger in ledgers for r in ledger.returns]
    returns_by_state = {state: [r for r in returns if r.state == state] for state in (SENT, PENDING, REFUSED)}
    outages = [(b - a) for t in tills for a, b in t.plan.offline]
    minute = args.day_seconds / ((CLOSING_HOUR - OPENING_HOUR) * 60)
    killed = [t for t in tills if t.kills]
    ok = (
        not diff["stores"]
        and not diff["items"]
        and not by_state[PENDING]
        and not returns_by_state[PENDING]
        and (db is None or not db["problems"])
    )
    lines = [
        "",
        f"Trading day: {args.stores} stores x {args.tills} tills, 09:00-21:00 in {args.day_seconds:g} s",
        (
            f"  sales {len(sales):,} (units {sum(s.quantity for s in sales):,}); "
            f"sent {len(by_state[SENT]):,}, pending {len(by_state[PENDING]):,}, set aside {len(by_state[REFUSED]):,}"
        ),
        (
            f"  returns {len(returns):,} (units {sum(r.quantity for r in returns):,}); "
            f"sent {len(returns_by_state[SENT]):,}, pending {len(returns_by_state[PENDING]):,}, "
            f"set aside {len(returns_by_state[REFUSED]):,}"
        ),
        f"  income {sum(income.values()):,} over {len({k[0] for k in income})} stores; {len(units)} items sold",
        (
            f"  outages {len(outages)} on {sum(1 for t in tills if t.plan.offline)} tills "
            f"(longest {max(outages, default=0) / minute:.0f} simulated min)"
        ),
        (
            f"  killed and restarted {len(killed)} tills, with {sum(t.pending_at_kill for t in killed):,} sales "
            "pending in their spools at the kill"
        ),
        "Reconciliation, tills' ledgers against the server:",
        f"  income per store and month (/stores/top/): {len(income) - len(diff['stores'])} of "
        f"{len(set(income) | set(diff['stores']))} equal"
        + ("" if not diff["stores"] else f"  DIFFER: {_short(diff['stores'])}"),
        f"  units per item (/items/top/): {len(units) - len(diff['items'])} of {len(set(units) | set(diff['items']))} "
        "equal" + ("" if not diff["items"] else f"  DIFFER: {_short(diff['items'])}"),
    ]
    if db is None:
        lines.append("  database: not checked (give --database-url or DATABASE_URL)")
    else:
        lines.append(
            f"  database: {db['rows']:,} rows for {db['sent']:,} sales sent, {db['missing']} missing, "
            + (
                "each stored once under its key with the id the till was answered"
                if not db["problems"]
                else f"PROBLEMS: {db['problems'][:3]}"
            )
        )
        lines.append(
            f"  returns in the database: {db['returns_rows']:,} rows for {db['returns_sent']:,} returns sent, "
            f"{db['returns_missing']} missing"
        )
    if by_state[REFUSED]:
        reasons = sorted({s.reason for s in by_state[REFUSED]})
        lines.append(f"  set aside by the server: {', '.join(reasons[:3])} (python -m pos_client status --spool ...)")
    lines.append(f"Result: {'OK' if ok else 'MISMATCH'}")
    print("\n".join(lines), flush=True)
    return ok


def _short(mapping: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in list(mapping.items())[:3]) + (" ..." if len(mapping) > 3 else "")


if __name__ == "__main__":
    sys.exit(main())
