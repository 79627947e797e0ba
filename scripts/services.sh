#!/usr/bin/env bash
# Start (or install) what the test suite talks to: PostgreSQL at 127.0.0.1:5432 with a
# database `stabmon_test`, headless Chromium, Prometheus and Alertmanager (Debian packages).
# Idempotent: a second call does nothing. Needs root for apt-get, as on CI here.
set -euo pipefail

need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium chromium-driver)
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v amtool >/dev/null || need_apt+=(prometheus-alertmanager)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "services: installing ${need_apt[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    echo "services: starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
    for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
if ! psql -h 127.0.0.1 -U postgres -tAc "select 1 from pg_database where datname='stabmon_test'" | grep -q 1; then
    psql -h 127.0.0.1 -U postgres -qc "create database stabmon_test"
fi
