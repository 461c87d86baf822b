#!/bin/sh
# Stand-in for the entrypoint of citusdata/citus (the official postgres one): the compose kit's
# postgres:15 stand-in entrypoint (POSTGRES_USER, POSTGRES_HOST_AUTH_METHOD, PGDATA) plus, at
# first start, POSTGRES_DB and /docker-entrypoint-initdb.d/*.sql|*.sh run by a temporary server
# that listens on the Unix socket only, as the official one does; arguments go to postgres.
set -e
if [ "${1#-}" != "$1" ]; then set -- postgres "$@"; fi
if [ "$1" != postgres ]; then exec "$@"; fi
shift
export PGDATA=${PGDATA:-/var/lib/postgresql/data}
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
mkdir -p "$PGDATA"; chown -R postgres "$PGDATA"; chmod 700 "$PGDATA"
mkdir -p /var/run/postgresql && chown postgres /var/run/postgresql
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  runuser -u postgres -- initdb -D "$PGDATA" -U "$user" --auth-local=trust \
    --auth-host="${POSTGRES_HOST_AUTH_METHOD:-trust}" >/dev/null
  echo "listen_addresses='*'" >> "$PGDATA/postgresql.conf"
  echo "host all all all ${POSTGRES_HOST_AUTH_METHOD:-trust}" >> "$PGDATA/pg_hba.conf"
  runuser -u postgres -- pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start >/dev/null
  if [ "$db" != postgres ]; then runuser -u postgres -- createdb -U "$user" "$db"; fi
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sql) echo "$0: running $f"; runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -U "$user" -d "$db" -f "$f" ;;
      *.sh)  echo "$0: running $f"; . "$f" ;;
    esac
  done
  runuser -u postgres -- pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "$0: init done"
fi
exec runuser -u postgres -- postgres -D "$PGDATA" "$@"
