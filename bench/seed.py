"""Benchmark 5: seeding 10 million sales with the command-line tool, seconds (hyperfine).

    python -m bench.seed                 # 10,000 items, 1,000 stores, 10,000,000 sales, 3 runs
    python -m bench.seed --sales 100000 --runs 1

Runs `python -m shared.seed --items 10000 --stores 1000 --sales N --seed 1` under hyperfine
against a database of its own (bench_seed, dropped afterwards) and Redis DB 12. Each run
replaces the previous run's data, so the runs are alike. The baseline has no seeding tool;
there is nothing to compare with here.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sales", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    common.ensure_tools("hyperfine")

    url = common.create_database("bench_seed", args.keep)
    common.clean_redis()
    if not args.keep:
        common.on_exit(common.clean_redis)
    env = common.product_env(url, 0)
    seed_cmd = (
        f"{shlex.quote(common.PYTHON)} -m shared.seed --items {args.items} --stores {args.stores} "
        f"--sales {args.sales} --seed 1"
    )
    with tempfile.NamedTemporaryFile(prefix="bench-seed-", suffix=".json", delete=False) as handle:
        export = handle.name
    common.on_exit(os.unlink, export)
    cmd = ["hyperfine", "--runs", str(args.runs), "--export-json", export, "--style", "basic", seed_cmd]
    common.log("running " + " ".join(map(shlex.quote, cmd)))
    subprocess.run(cmd, cwd=common.ROOT, env={**os.environ, **env}, check=True, stdout=sys.stderr)
    result = json.loads(Path(export).read_text())["results"][0]
    rows_count = common.count_sales(url)

    common.header(f"Seeding {args.sales:,} sales ({args.items:,} items, {args.stores:,} stores) with the CLI")
    times = result["times"]
    rows = [
        ["mean (s)", f"{result['mean']:.1f}"],
        ["stddev (s)", f"{(result.get('stddev') or 0):.1f}"],
        ["min (s)", f"{result['min']:.1f}"],
        ["max (s)", f"{result['max']:.1f}"],
        ["runs", str(len(times))],
        ["sales/s (mean)", f"{args.sales / result['mean']:,.0f}"],
        ["rows in sales after the last run", f"{rows_count:,}"],
    ]
    print(common.table(["metric", "value"], rows))
    env_part = " ".join(f"{k}={v}" for k, v in env.items() if k in ("DATABASE_URL", "REDIS_URL", "REDIS_KEY_PREFIX"))
    print(f"\nhyperfine command: `{env_part} hyperfine --runs {args.runs} {shlex.quote(seed_cmd)}`")
    return 0 if rows_count == args.sales else 1


if __name__ == "__main__":
    sys.exit(main())
