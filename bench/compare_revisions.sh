#!/usr/bin/env bash
# One benchmark at an earlier revision and at this checkout, alternately, in one run: a change
# is judged against this machine's noise, not against figures taken on another day.
#
#   bash bench/compare_revisions.sh REV ROUNDS COMMAND...
#   bash bench/compare_revisions.sh 192da8c 2 python -m bench.writer --sizes 1000,100000
#
# The earlier revision runs from a temporary git worktree with this checkout's .venv; each run's
# Markdown goes to stdout under a heading that names the revision and the round.
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi
rev=$1 rounds=$2
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
git -C "$root" worktree add -q --detach "$work/before" "$rev"
trap 'git -C "$root" worktree remove --force "$work/before"; rm -rf "$work"' EXIT

for round in $(seq "$rounds"); do
  for side in before after; do
    dir=$root
    [ "$side" = before ] && dir=$work/before
    label="$side ($(git -C "$dir" rev-parse --short HEAD)), round $round/$rounds"
    echo "== $label: $*" >&2
    printf '\n### %s\n\n' "$label"
    (cd "$dir" && PATH="$root/.venv/bin:$PATH" "$@")
  done
done
