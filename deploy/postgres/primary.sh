#!/bin/sh
# The HA override's PostgreSQL primary: the image's own first start (initdb, trust on the
# compose network, as docker-compose.yml sets it), plus what a synchronous standby needs.
# The settings go on the command line, not into the data directory: a standby copied from it
# and then promoted must not wait for a standby of its own that does not exist.
set -e
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
mkdir -p "$PGDATA" /var/run/postgresql
chown -R postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  runuser -u postgres -- initdb -D "$PGDATA" -U postgres --auth=trust >/dev/null
  echo "host all all all trust" >> "$PGDATA/pg_hba.conf"
fi
# Fencing: if the standby was promoted while this server was away (a failover), this one must
# not come back as a second primary (every process would write to the first writable host of
# DATABASE_URL: this one). It stops here, every restart, until it is rebuilt as a standby.
if role=$(PGCONNECT_TIMEOUT=3 psql -h "${STANDBY_HOST:-postgres-standby}" -U postgres -d postgres -XAtc \
    "SELECT CASE WHEN pg_is_in_recovery() THEN 'standby' ELSE 'primary' END" 2>/dev/null) && [ "$role" = primary ]; then
  echo "FATAL: ${STANDBY_HOST:-postgres-standby} has been promoted: not starting as a second primary" \
    "(README \"PostgreSQL standby\": rebuild this one as a standby of it)" >&2
  exit 1
fi
# the standby streams the WAL over the `replication` pseudo-database, which `all` does not cover
grep -q '^host replication all all' "$PGDATA/pg_hba.conf" || echo "host replication all all trust" >> "$PGDATA/pg_hba.conf"
exec runuser -u postgres -- postgres -D "$PGDATA" -c listen_addresses='*' -c wal_keep_size=512MB \
  -c "synchronous_standby_names=${SYNCHRONOUS_STANDBY_NAMES:-ANY 1 (standby)}"
