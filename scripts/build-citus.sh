#!/usr/bin/env bash
# Build and install Citus into this machine's PostgreSQL when citus.so is missing.
# Citus is packaged by its authors, not by Debian or PyPI; outside this workplace use their
# packages or the citusdata/citus image. Here it is built from the vendored source
# (../shared/vendor/citus, or $CITUS_VENDOR_DIR): about 3 minutes on 2 cores, once per machine.
set -euo pipefail
cd "$(dirname "$0")/.."

pg_version=$(pg_config --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
libdir=$(pg_config --pkglibdir 2>/dev/null || echo "/usr/lib/postgresql/$pg_version/lib")
if [ -f "$libdir/citus.so" ]; then
  echo "citus.so is installed in $libdir"
  exit 0
fi

vendor=${CITUS_VENDOR_DIR:-$(cd .. && pwd)/shared/vendor/citus}
tarball="$vendor/citus-13.2.2.tar.gz"
if [ ! -f "$tarball" ]; then
  echo "no Citus source at $tarball (set CITUS_VENDOR_DIR)" >&2
  exit 1
fi

echo "building Citus 13.2.2 for PostgreSQL $pg_version (about 3 minutes)"
packages="postgresql-server-dev-$pg_version build-essential libcurl4-openssl-dev liblz4-dev libzstd-dev
  libkrb5-dev libselinux1-dev libxslt1-dev libpam0g-dev libreadline-dev libssl-dev"
# shellcheck disable=SC2086
if ! dpkg -s $packages >/dev/null 2>&1; then
  apt-get update -qq >/dev/null 2>&1 || true
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null
fi

build=$(mktemp -d /tmp/citus-build.XXXXXX)
trap 'rm -rf "$build"' EXIT
tar xzf "$tarball" -C "$build"
src=$(find "$build" -mindepth 1 -maxdepth 1 -type d | head -1)
cd "$src"
# PostgreSQL 15.20 exports have_createdb_privilege(), which Citus 13.2.2 defines statically too.
if grep -q 'have_createdb_privilege' "$(pg_config --includedir-server)/commands/dbcommands.h" 2>/dev/null; then
  patch -p1 -s < "$vendor/pg15-minor-compat.patch"
fi
./configure -q >/dev/null
make -s -j"$(nproc)" >/dev/null 2>build.log || { tail -40 build.log >&2; exit 1; }
make -s install >/dev/null
echo "citus.so installed in $libdir"
