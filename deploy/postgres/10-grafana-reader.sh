#!/bin/sh
# PostgreSQL first-start hook (/docker-entrypoint-initdb.d): a read-only role for Grafana.
# Grafana's history panels only read; they must not be able to change what the collector
# stored. The default privileges cover the tables that the collector's migrations create later.
set -eu

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v reader="$STABMON_GRAFANA_DB_USER" -v password="$STABMON_GRAFANA_DB_PASSWORD" -v owner="$POSTGRES_USER" <<'SQL'
CREATE ROLE :"reader" LOGIN PASSWORD :'password';
GRANT CONNECT ON DATABASE :"DBNAME" TO :"reader";
GRANT USAGE ON SCHEMA public TO :"reader";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";
SQL
