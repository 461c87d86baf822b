#!/usr/bin/env bash
# The whole stack on a machine that already runs PostgreSQL and Redis:
# venv, install, migrate, demo data (first time only), then the worker and the API.
# Stop with Ctrl-C. Settings come from the environment (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
# Without ADMIN_TOKEN, the API generates one into this file at its first start and keeps it
# (print it with `.venv/bin/python -m shared.admin_token .local/admin_token`).
export ADMIN_TOKEN_FILE="${ADMIN_TOKEN_FILE:-$PWD/.local/admin_token}"

python3 -m venv .venv
.venv/bin/pip install -q -r requirements.txt
.venv/bin/python -m shared.migrate
.venv/bin/python -m shared.seed --if-empty

.venv/bin/python -m worker &
worker=$!
trap 'kill -TERM $worker 2>/dev/null; wait $worker 2>/dev/null' EXIT
.venv/bin/python -m api
