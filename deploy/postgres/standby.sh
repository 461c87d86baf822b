#!/bin/sh
# The HA override's PostgreSQL standby: at first start, a copy of the primary taken with
# pg_basebackup (-R: it then follows the primary's WAL stream); afterwards it starts from its
# own data. It names itself `standby` (cluster_name), the name the primary waits for.
# Promoted (`pg_ctl promote`, README "PostgreSQL standby"), it keeps serving as the primary.
set -e
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
mkdir -p "$PGDATA" /var/run/postgresql
chown -R postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
# A copy is whole only once pg_basebackup has finished (it writes PG_VERSION early): a copy
# stopped half-way has no marker and is taken again.
if [ ! -f "$PGDATA/base-backup-complete" ]; then
  rm -rf "${PGDATA:?}"/* "$PGDATA"/.[!.]* 2>/dev/null || true
  until runuser -u postgres -- pg_basebackup -h "${PRIMARY_HOST:-postgres}" -U postgres -D "$PGDATA" -R -X stream -c fast; do
    echo "waiting for the primary to take a base backup from"
    rm -rf "${PGDATA:?}"/* "$PGDATA"/.[!.]* 2>/dev/null || true
    sleep 2
  done
  runuser -u postgres -- touch "$PGDATA/base-backup-complete"
fi
exec runuser -u postgres -- postgres -D "$PGDATA" -c listen_addresses='*' -c cluster_name=standby
