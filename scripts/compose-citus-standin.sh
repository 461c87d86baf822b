#!/usr/bin/env bash
# Runs the Citus override for real on a machine without Docker, as users run it:
#   docker compose -f docker-compose.yml -f docker-compose.citus.yml up
# with the compose stand-in kit (../shared/tools/compose-standin: podman + docker-compose 1.29 +
# local stand-ins for python:3.11-slim, postgres:15 and redis:7.0), plus a local stand-in for
# citusdata/citus:13.2 built here from scripts/citus-standin/ and ../shared/vendor/citus
# (Debian 12's PostgreSQL 15 + Citus 13.2.2 from source; the real image is PostgreSQL 17).
#
#   bash scripts/compose-citus-standin.sh          # build what is missing, up, check, down -v
#   KEEP=1 bash scripts/compose-citus-standin.sh   # leave the stack up afterwards (to look at it)
#   REBUILD=1 bash scripts/compose-citus-standin.sh  # build the Citus stand-in again, without cache
#   bash scripts/compose-citus-standin.sh down     # take such a stack down (and its volumes)
#
# Checks: citus-nodes exits 0; pg_dist_node lists both workers; sales is hash-distributed and
# store/item are reference tables; /health is ok; SALES sales posted through /sales/batch/ reach
# the sales table (the count rises by exactly that many); /stores/top/ and /items/top/ answer 200;
# sales rows sit on shards of both worker nodes (counted through the coordinator and, separately,
# in each worker container), none on the coordinator; a second `up` re-runs citus-nodes and seed
# (migration on the distributed schema) with exit 0 and changes nothing. Prints PASS/FAIL per
# check and exits 1 on any failure. Needs root (podman), port 8080 free. First run on 2 busy
# cores: 6-9 minutes (kit images ~2, Citus build 3-5, the run ~1.5); later runs 1-2 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
kit=${COMPOSE_STANDIN_DIR:-$(cd .. && pwd)/shared/tools/compose-standin}
vendor=${CITUS_VENDOR_DIR:-$(cd .. && pwd)/shared/vendor/citus}
image=docker.io/citusdata/citus:13.2
sales_to_post=${SALES:-300}
files=(-f docker-compose.yml -f docker-compose.citus.yml)
t0=$(date +%s)
compose() { bash "$kit/compose.sh" "${files[@]}" "$@"; }
elapsed() { echo "$(( $(date +%s) - t0 ))s"; }
log=$(mktemp -d /tmp/compose-citus-standin.XXXXXX)

teardown() {
  compose down -v --remove-orphans >>"$log/down.log" 2>&1
  # the kit's own `down`: nothing left of the plain file, then it stops its podman service
  # and healthcheck loop
  bash "$kit/compose.sh" down >>"$log/down.log" 2>&1
}

if [[ ${1:-} == down ]]; then teardown; echo "down (log: $log/down.log)"; exit 0; fi

# --- images --------------------------------------------------------------------------------
echo "== stand-in images ($(elapsed))"
bash "$kit/build-images.sh" >"$log/build-images.log" 2>&1 || { cat "$log/build-images.log"; echo "FAIL: kit build-images.sh"; exit 1; }
# rebuilt when the recipe (Dockerfile, entrypoint, SQL, vendored source) changes
recipe=$(cat scripts/citus-standin/* "$vendor/citus-13.2.2.tar.gz" "$vendor/pg15-minor-compat.patch" | sha256sum | cut -c1-16)
if [[ -n ${REBUILD:-} || $(podman image inspect -f '{{index .Labels "standin.recipe"}}' "$image" 2>/dev/null) != "$recipe" ]]; then
  echo "building the $image stand-in (Citus 13.2.2 from source, about 3 minutes)"
  ctx=$(mktemp -d /tmp/citus-standin-ctx.XXXXXX)
  cp scripts/citus-standin/* "$vendor/citus-13.2.2.tar.gz" "$vendor/pg15-minor-compat.patch" "$ctx/"
  if ! podman build --network host ${REBUILD:+--no-cache} --label "standin.recipe=$recipe" -t "$image" "$ctx" >"$log/build-citus.log" 2>&1; then
    tail -40 "$log/build-citus.log"; rm -rf "$ctx"; echo "FAIL: building the $image stand-in"; exit 1
  fi
  rm -rf "$ctx"
fi
echo "$image: $(podman image inspect -f '{{.Id}}' "$image" | cut -c1-12) ($(elapsed))"

# --- preconditions -------------------------------------------------------------------------
if ss -ltnH 'sport = :8080' | grep -q .; then
  ss -ltnpH 'sport = :8080'; echo "FAIL: port 8080 is taken"; exit 1
fi
if [[ -n $(podman ps -aq --filter label=com.docker.compose.project=salesstack) ]]; then
  podman ps -a --filter label=com.docker.compose.project=salesstack
  echo "FAIL: a salesstack stack exists already; take it down first ($0 down)"; exit 1
fi

# --- up ------------------------------------------------------------------------------------
# The project's image for every service with `build:`, as compose.sh up does for one file.
echo "== building the project image ($(elapsed))"
podman build --network host -q -t salesstack_image . >"$log/build-app.log" 2>&1 || { cat "$log/build-app.log"; echo "FAIL: project image"; exit 1; }
for s in $(compose config 2>/dev/null | python3 -c 'import sys, yaml
for name, svc in (yaml.safe_load(sys.stdin).get("services") or {}).items():
    if "build" in svc: print(name)'); do
  podman tag salesstack_image "salesstack_$s"
done

failures=0
check() {  # check NAME CONDITION-RESULT(0/1) DETAIL
  if [[ $2 == 0 ]]; then echo "PASS  $1${3:+: $3}"; else echo "FAIL  $1${3:+: $3}"; failures=$((failures + 1)); fi
}
cid() { podman ps -aq --filter label=com.docker.compose.project=salesstack --filter "label=com.docker.compose.service=$1" | head -1; }
sql() {  # sql SERVICE QUERY: one value per line, fields separated by |
  podman exec "$(cid "$1")" psql -X -q -At -v ON_ERROR_STOP=1 -U postgres -d postgres -c "$2"
}
exit_code() { podman inspect -f '{{.State.ExitCode}} {{.State.Status}}' "$(cid "$1")" 2>/dev/null; }
[[ -z ${KEEP:-} ]] && trap 'echo "== down -v ($(elapsed))"; teardown' EXIT

# The network's bridge: netavark 1.4 (Debian 12's podman) leaves its MAC address to the kernel,
# which gives a bridge the lowest MAC of its ports, so it changes as containers come and go
# (here: citus-nodes stops as seed starts). The running containers keep the old MAC in their ARP
# cache and reach neither the gateway nor podman's DNS server (aardvark-dns, on the gateway) for
# ~45 s: the coordinator then cannot resolve citus-worker-1 and seed's migration fails (2 runs
# in 16 before this). Docker's bridge driver, and netavark since containers/netavark#833 (2023),
# set a fixed MAC on the bridge; so does this, as soon as the bridge exists.
pin_bridge_mac() {
  local br=""
  for _ in $(seq 600); do
    br=$(podman network inspect salesstack_default 2>/dev/null | python3 -c 'import json, sys
print(json.load(sys.stdin)[0].get("network_interface", ""))' 2>/dev/null)
    [[ -n $br && -e /sys/class/net/$br ]] && break
    sleep 0.1
  done
  [[ -n $br && -e /sys/class/net/$br ]] || { echo "no bridge for salesstack_default"; return 1; }
  ip link set dev "$br" address "$(cat "/sys/class/net/$br/address")" &&
    echo "bridge $br: MAC $(cat "/sys/class/net/$br/address") fixed (addr_assign_type $(cat "/sys/class/net/$br/addr_assign_type"))"
}

echo "== up ($(elapsed))"
t_up=$(date +%s)
pin_bridge_mac >"$log/bridge.log" 2>&1 &
pin_pid=$!
compose up -d >"$log/up.log" 2>&1
up_rc=$?
check "compose up -d" "$up_rc" "exit $up_rc in $(( $(date +%s) - t_up ))s"
wait "$pin_pid"; echo "      $(cat "$log/bridge.log")"
[[ $up_rc == 0 ]] || tail -20 "$log/up.log"

read -r code status <<<"$(exit_code citus-nodes)"
check "citus-nodes exited 0" "$([[ $code == 0 && $status == exited ]]; echo $?)" "exit ${code:-?}, ${status:-no container}"
read -r code status <<<"$(exit_code seed)"
check "seed (migrate + demo data) exited 0" "$([[ $code == 0 && $status == exited ]]; echo $?)" "exit ${code:-?}, ${status:-no container}"

nodes=$(sql postgres "SELECT string_agg(nodename || ':' || nodeport || ' ' || noderole || CASE WHEN isactive THEN '' ELSE ' inactive' END, ', ' ORDER BY nodename) FROM pg_dist_node WHERE groupid <> 0")
coordinator=$(sql postgres "SELECT nodename || ':' || nodeport FROM pg_dist_node WHERE groupid = 0")
check "pg_dist_node lists both workers" "$([[ $nodes == 'citus-worker-1:5432 primary, citus-worker-2:5432 primary' ]]; echo $?)" "workers: ${nodes:-none}; coordinator: ${coordinator:-none}"

parts=$(sql postgres "SELECT string_agg(logicalrelid::regclass || '=' || partmethod::text, ' ' ORDER BY logicalrelid::regclass::text) FROM pg_dist_partition WHERE logicalrelid IN ('sales'::regclass, 'store'::regclass, 'item'::regclass)")
check "sales distributed (h), store/item reference (n)" "$([[ $parts == 'item=n sales=h store=n' ]]; echo $?)" "${parts:-none}"
echo "      all: $(sql postgres "SELECT string_agg(logicalrelid::regclass || '=' || partmethod::text, ' ' ORDER BY logicalrelid::regclass::text) FROM pg_dist_partition WHERE logicalrelid::regclass::text NOT LIKE 'sales\_2%'")"

health=""
for _ in $(seq 90); do
  health=$(curl -s -m 5 localhost:8080/health) && python3 -c 'import json, sys; sys.exit(json.loads(sys.argv[1]).get("status") != "ok")' "$health" 2>/dev/null && break
  sleep 2
done
check "GET /health ok" "$(python3 -c 'import json, sys; sys.exit(json.loads(sys.argv[1]).get("status") != "ok")' "$health" 2>/dev/null; echo $?)" "${health:0:160}"

# --- sales through the API and the worker ---------------------------------------------------
count() { sql postgres "SELECT count(*) FROM sales"; }
before=$(count); sleep 2
while [[ $(count) != "$before" ]]; do before=$(count); sleep 2; done   # nothing still arriving
echo "      sales before: $before ($(elapsed))"
posted=0
batches=$(( (sales_to_post + 99) / 100 ))
for b in $(seq "$batches"); do
  n=$(( sales_to_post - posted < 100 ? sales_to_post - posted : 100 ))
  # every third batch 60 days back: an earlier month's partition, as from a till that was offline
  body=$(python3 -c 'import datetime, json, random, sys
n, b = int(sys.argv[1]), int(sys.argv[2])
when = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=60)).isoformat()
sales = [{"item_id": random.randint(1, 50), "store_id": random.randint(1, 50), "quantity": random.randint(1, 3)} for _ in range(n)]
if b % 3 == 0:
    for s in sales: s["sale_time"] = when
print(json.dumps(sales))' "$n" "$b")
  answer=$(curl -s -m 30 -o "$log/batch$b.json" -w '%{http_code}' -X POST -H 'Content-Type: application/json' --data "$body" localhost:8080/sales/batch/)
  got=$(python3 -c 'import json, sys
d = json.load(open(sys.argv[1])); d = d.get("sales", d) if isinstance(d, dict) else d
print(len(d) if isinstance(d, list) else 0)' "$log/batch$b.json" 2>/dev/null)
  if [[ $answer == 202 && $got == "$n" ]]; then posted=$((posted + n)); else echo "      batch $b: HTTP $answer, $(head -c 300 "$log/batch$b.json")"; fi
done
check "POST /sales/batch/ accepted $sales_to_post sales" "$([[ $posted == "$sales_to_post" ]]; echo $?)" "$posted accepted in $batches batches"

after=$before; t_post=$(date +%s)
for _ in $(seq 120); do after=$(count); (( after >= before + posted )) && break; sleep 1; done
sleep 3; after=$(count)
check "worker wrote them: sales count rose by exactly $posted" "$([[ $after == $((before + posted)) ]]; echo $?)" "$before -> $after ($((after - before)) new, visible within $(( $(date +%s) - t_post - 3 ))s)"

for path in '/stores/top/?cnt=5' '/items/top/?cnt=5'; do
  code=$(curl -s -m 10 -o "$log/top.json" -w '%{http_code}' "localhost:8080$path")
  rows=$(python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(len(d) if isinstance(d, list) else -1)' "$log/top.json" 2>/dev/null)
  check "GET $path" "$([[ $code == 200 && ${rows:-0} -gt 0 ]]; echo $?)" "HTTP $code, $rows rows: $(head -c 110 "$log/top.json")"
done

# --- where the rows are ---------------------------------------------------------------------
# through the coordinator: every shard placement of every partition of sales
per_node=$(sql postgres "SELECT string_agg(nodename || '=' || n, ' ' ORDER BY nodename) FROM (
    SELECT r.nodename, sum(r.result::bigint) AS n, bool_and(r.success) AS ok
    FROM pg_inherits i CROSS JOIN LATERAL run_command_on_placements(i.inhrelid::regclass, 'SELECT count(*) FROM %s') r
    WHERE i.inhparent = 'sales'::regclass GROUP BY r.nodename) t")
w1=$(sed -nE 's/.*citus-worker-1=([0-9]+).*/\1/p' <<<"$per_node"); w2=$(sed -nE 's/.*citus-worker-2=([0-9]+).*/\1/p' <<<"$per_node")
check "sales on shards of both workers (via coordinator), none elsewhere" \
  "$([[ ${w1:-0} -gt 0 && ${w2:-0} -gt 0 && $((w1 + w2)) == "$after" && $per_node != *postgres=* ]]; echo $?)" "${per_node:-none}; total $after"
# in each worker container itself: the shard tables of the partitions of sales held there
local_counts=""
local_sum=0; local_ok=0
for w in citus-worker-1 citus-worker-2; do
  row=$(sql "$w" "SET citus.override_table_visibility TO off;
    SELECT count(*) || ' ' || coalesce(sum((xpath('/row/c/text()', query_to_xml('SELECT count(*) AS c FROM ONLY ' || t.name, false, true, '')))[1]::text::bigint), 0)
    FROM (SELECT shard_name(s.logicalrelid, s.shardid) AS name FROM pg_dist_shard s JOIN pg_inherits i ON i.inhrelid = s.logicalrelid
          WHERE i.inhparent = 'sales'::regclass) t WHERE to_regclass(t.name) IS NOT NULL" 2>&1 | tail -1)
  read -r shards rows <<<"$row"
  local_counts+="$w: ${rows:-?} rows in ${shards:-?} shards; "
  [[ ${rows:-0} =~ ^[0-9]+$ && $rows -gt 0 ]] || local_ok=1
  [[ ${rows:-} =~ ^[0-9]+$ ]] && local_sum=$((local_sum + rows))
done
check "sales rows in each worker container's own shard tables" "$([[ $local_ok == 0 && $local_sum == "$after" ]]; echo $?)" "${local_counts}sum $local_sum"

# --- a second `up`: citus-nodes and the migration again, on what exists ----------------------
echo "== second up ($(elapsed))"
compose up -d >"$log/up2.log" 2>&1
up_rc=$?
read -r code status <<<"$(exit_code citus-nodes)"
read -r scode sstatus <<<"$(exit_code seed)"
nodes2=$(sql postgres "SELECT string_agg(nodename || ':' || nodeport || ' ' || noderole, ', ' ORDER BY nodename) FROM pg_dist_node WHERE groupid <> 0")
check "second up: citus-nodes and seed exit 0 again, nodes and sales unchanged" \
  "$([[ $up_rc == 0 && $code == 0 && $scode == 0 && $nodes2 == "$nodes" && $(count) == "$after" ]]; echo $?)" \
  "up exit $up_rc, citus-nodes ${code:-?}, seed ${scode:-?}, workers: $nodes2"

if (( failures )); then
  echo "== logs of the failing run ($log)"
  for s in citus-nodes seed postgres citus-worker-1 api worker; do echo "--- $s"; compose logs --no-color --tail 25 "$s" 2>&1 | tail -25; done
fi
echo "== $(( $(date +%s) - t0 ))s in all (before down); logs in $log"
if (( failures )); then echo "RESULT: FAIL ($failures check(s) failed)"; exit 1; fi
echo "RESULT: PASS"
