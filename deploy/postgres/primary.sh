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
# the standby streams the WAL over the `replication` pseudo-database, which `all` does not cover
grep -q '^host replication all all' "$PGDATA/pg_hba.conf" || echo "host replication all all trust" >> "$PGDATA/pg_hba.conf"
exec runuser -u postgres -- postgres -D "$PGDATA" -c listen_addresses='*' \
  -c "synchronous_standby_names=${SYNCHRONOUS_STANDBY_NAMES:-ANY 1 (standby)}"
