#!/usr/bin/env bash
# Runs the stack with the TLS proxy and the HA override for real on a machine without Docker,
# as users run it:
#   docker compose -f docker-compose.yml -f docker-compose.ha.yml up
# with the compose stand-in kit (../shared/tools/compose-standin: podman + docker-compose 1.29 +
# local stand-ins for python:3.11-slim, postgres:15, redis:7.0 and caddy:2).
#
#   bash scripts/compose-ha-standin.sh          # up, check, down -v
#   KEEP=1 bash scripts/compose-ha-standin.sh   # leave the stack up afterwards
#   bash scripts/compose-ha-standin.sh down     # take such a stack down (and its volumes)
#
# Checks: seed exits 0; no well-known admin token (a generated one, `change-me` refused, none
# in the effective compose config); HTTPS answers with Caddy's local CA and HSTS, plain HTTP
# redirects to it; the standby streams synchronously; a sale posted over HTTPS is stored on the
# primary and on the standby; then the primary is killed and the standby promoted, and SALES
# more sales over HTTPS are all accepted and stored once on it, with no rollup drift; the old
# primary started again refuses to be a second primary, and sales go on to the promoted one. Prints
# PASS/FAIL per check, exits 1 on any failure. Needs root (podman) and ports 80, 443, 8080 free.
set -uo pipefail
cd "$(dirname "$0")/.."
kit=${COMPOSE_STANDIN_DIR:-$(cd .. && pwd)/shared/tools/compose-standin}
sales_to_post=${SALES:-200}
files=(-f docker-compose.yml -f docker-compose.ha.yml)
t0=$(date +%s)
compose() { bash "$kit/compose.sh" "${files[@]}" "$@"; }
elapsed() { echo "$(( $(date +%s) - t0 ))s"; }
log=$(mktemp -d /tmp/compose-ha-standin.XXXXXX)

teardown() {
  compose down -v --remove-orphans >>"$log/down.log" 2>&1
  bash "$kit/compose.sh" down >>"$log/down.log" 2>&1  # stops the kit's podman service too
}
if [[ ${1:-} == down ]]; then teardown; echo "down (log: $log/down.log)"; exit 0; fi

for port in 80 443 8080; do
  if ss -ltnH "sport = :$port" | grep -q .; then echo "FAIL: port $port is taken"; exit 1; fi
done

failures=0
check() {  # check NAME CONDITION-RESULT(0/1) DETAIL
  if [[ $2 == 0 ]]; then echo "PASS  $1${3:+: $3}"; else echo "FAIL  $1${3:+: $3}"; failures=$((failures + 1)); fi
}
cid() { podman ps -aq --filter label=com.docker.compose.project=salesstack --filter "label=com.docker.compose.service=$1" | head -1; }
sql() { podman exec "$(cid "$1")" psql -X -q -At -v ON_ERROR_STOP=1 -U postgres -d postgres -c "$2"; }
https() { curl -s -m 10 --cacert "$log/root.crt" "$@"; }

# --- up ------------------------------------------------------------------------------------
echo "== up ($(elapsed))"
compose config -q >"$log/build.log" 2>&1  # the kit builds its stand-in images, starts podman
# The project's image for every service with `build:`, as the kit's `compose.sh up` does for one file.
podman build --network host -q -t salesstack_image . >>"$log/build.log" 2>&1 || { cat "$log/build.log"; echo "FAIL: project image"; exit 1; }
for s in $(compose config 2>/dev/null | python3 -c 'import sys, yaml
for name, svc in (yaml.safe_load(sys.stdin).get("services") or {}).items():
    if "build" in svc: print(name)'); do
  podman tag salesstack_image "salesstack_$s"
done
[[ -z ${KEEP:-} ]] && trap 'echo "== down -v ($(elapsed))"; teardown' EXIT
compose up -d >"$log/up.log" 2>&1
up_rc=$?
check "compose up -d (TLS proxy + HA override)" "$up_rc" "exit $up_rc"
[[ $up_rc == 0 ]] || tail -20 "$log/up.log"
seed=$(podman inspect -f '{{.State.ExitCode}} {{.State.Status}}' "$(cid seed)" 2>/dev/null)
check "seed exited 0" "$([[ $seed == '0 exited' ]]; echo $?)" "$seed"

# --- no well-known secret --------------------------------------------------------------------
for _ in $(seq 60); do curl -s -m 3 localhost:8080/health >/dev/null && break; sleep 1; done
token=$(podman exec "$(cid api)" python -m shared.admin_token 2>/dev/null)
said=$(compose logs --no-color api 2>&1 | grep -c "generated a random one into /secrets/admin_token")
check "admin token generated at first start, said once in the log" "$([[ ${#token} -ge 40 && $said == 1 ]]; echo $?)" "${#token} characters, said $said time(s)"
code=$(curl -s -m 10 -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer change-me' localhost:8080/clear/)
check "GET /clear/ with change-me refused" "$([[ $code == 403 ]]; echo $?)" "HTTP $code"
found=$(compose config 2>/dev/null | grep -c 'change-me')
check "no change-me in the effective compose config" "$([[ $found == 0 ]]; echo $?)" "$found occurrence(s)"

# --- TLS -------------------------------------------------------------------------------------
for _ in $(seq 60); do podman exec "$(cid proxy)" cat /data/caddy/pki/authorities/local/root.crt >"$log/root.crt" 2>/dev/null && break; sleep 1; done
for _ in $(seq 30); do  # Caddy issues its certificate at its first start
  headers=$(https -D - -o "$log/health.json" https://localhost/health) && [[ $headers == HTTP/2\ 200* ]] && break; sleep 1
done
check "HTTPS /health with Caddy's local CA" "$([[ $headers == HTTP/2\ 200* ]] && grep -q '"status":"ok"' "$log/health.json"; echo $?)" "$(head -1 <<<"$headers" | tr -d '\r') $(cat "$log/health.json")"
check "HSTS on the HTTPS answer" "$(grep -qi '^strict-transport-security: max-age=' <<<"$headers"; echo $?)" "$(grep -i '^strict-transport' <<<"$headers" | tr -d '\r')"
redirect=$(curl -s -m 10 -o /dev/null -w '%{http_code} %{redirect_url}' http://localhost/health)
check "plain HTTP redirected to HTTPS" "$([[ $redirect == '308 https://localhost/health' ]]; echo $?)" "$redirect"
curl -s -m 10 -o /dev/null https://localhost/health; rc=$?
check "an untrusted certificate is refused (curl without the CA)" "$([[ $rc == 60 ]]; echo $?)" "curl exit $rc (60: peer certificate cannot be authenticated)"

# --- the synchronous standby -----------------------------------------------------------------
for _ in $(seq 30); do
  replication=$(sql postgres "SELECT application_name || ' ' || state || ' ' || sync_state FROM pg_stat_replication")
  [[ $replication == 'standby streaming '* ]] && break; sleep 1
done
check "the standby streams, synchronously" "$([[ $replication =~ ^standby\ streaming\ (sync|quorum)$ ]]; echo $?)" "$replication"
sale=$(https -X POST -H 'Content-Type: application/json' -d '{"item_id": 1, "store_id": 1, "quantity": 7}' https://localhost/sales/)
id=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["id"])' "$sale" 2>/dev/null)
on_primary=""; on_standby=""
for _ in $(seq 30); do
  on_primary=$(sql postgres "SELECT count(*) FROM sales WHERE id = ${id:-0}")
  on_standby=$(sql postgres-standby "SELECT count(*) FROM sales WHERE id = ${id:-0}")
  [[ $on_primary == 1 && $on_standby == 1 ]] && break; sleep 1
done
check "a sale over HTTPS stored on the primary and on the standby" "$([[ $on_primary == 1 && $on_standby == 1 ]]; echo $?)" "sale ${id:-none}: primary $on_primary, standby $on_standby"

# --- the primary lost, the standby promoted --------------------------------------------------
echo "== the primary killed, the standby promoted ($(elapsed))"
before=$(sql postgres-standby "SELECT count(*) FROM sales")
compose kill postgres >>"$log/failover.log" 2>&1
podman exec "$(cid postgres-standby)" runuser -u postgres -- pg_ctl promote -w -D /var/lib/postgresql/data >>"$log/failover.log" 2>&1
recovery=$(sql postgres-standby "SELECT pg_is_in_recovery()")
check "standby promoted" "$([[ $recovery == f ]]; echo $?)" "pg_is_in_recovery: $recovery"
accepted=0
for i in $(seq "$sales_to_post"); do
  code=$(https -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    -d "{\"item_id\": $(( i % 50 + 1 )), \"store_id\": $(( i % 50 + 1 )), \"quantity\": 1}" https://localhost/sales/)
  [[ $code == 202 ]] && accepted=$((accepted + 1))
done
check "$sales_to_post sales over HTTPS accepted after the promotion" "$([[ $accepted == "$sales_to_post" ]]; echo $?)" "$accepted accepted"
after=$before
for _ in $(seq 90); do after=$(sql postgres-standby "SELECT count(*) FROM sales"); (( ${after:-0} >= before + accepted )) && break; sleep 1; done
sleep 3; after=$(sql postgres-standby "SELECT count(*) FROM sales")
check "the worker wrote them on the promoted server, once each" "$([[ $after == $((before + accepted)) ]]; echo $?)" "$before -> $after"
drift=$(podman exec "$(cid worker)" python -m shared.reconcile 2>&1 | tail -1)
check "no rollup drift on the promoted server" "$([[ $drift == 'rollups match the raw sales' ]]; echo $?)" "$drift"

# --- the old primary started again: fenced, no second primary ---------------------------------
echo "== the old primary started again ($(elapsed))"
compose start postgres >>"$log/failover.log" 2>&1
sleep 8
fenced=$(compose logs --no-color postgres 2>&1 | grep -c 'has been promoted: not starting as a second primary')
state=$(podman inspect -f '{{.State.Status}}' "$(cid postgres)" 2>/dev/null)
check "the old primary refuses to come back as a second primary" "$([[ $fenced -ge 1 && $state != running ]]; echo $?)" "said so $fenced time(s), container $state"
before=$(sql postgres-standby "SELECT count(*) FROM sales"); accepted=0
for i in $(seq 20); do
  code=$(https -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    -d "{\"item_id\": $i, \"store_id\": $i, \"quantity\": 1}" https://localhost/sales/)
  [[ $code == 202 ]] && accepted=$((accepted + 1))
done
for _ in $(seq 60); do after=$(sql postgres-standby "SELECT count(*) FROM sales"); (( ${after:-0} >= before + accepted )) && break; sleep 1; done
check "sales go on to the promoted server" "$([[ $accepted == 20 && $after == $((before + 20)) ]]; echo $?)" "$accepted accepted, $before -> $after"

if (( failures )); then
  echo "== logs of the failing run ($log)"
  for s in seed postgres postgres-standby proxy api worker; do echo "--- $s"; compose logs --no-color --tail 20 "$s" 2>&1 | tail -20; done
fi
echo "== $(elapsed) in all (before down); logs in $log"
if (( failures )); then echo "RESULT: FAIL ($failures check(s) failed)"; exit 1; fi
echo "RESULT: PASS"
