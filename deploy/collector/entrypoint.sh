#!/bin/sh
# Start the stabmon collector in a container: bring the database schema to head, create the
# first API token if the database has none (a collector listening beyond loopback refuses to
# start without one), then exec the server so it receives signals directly.
#
# The bootstrap token is written once to $STABMON_BOOTSTRAP_TOKEN_FILE (mode 0600, on a
# volume); read it with `docker compose exec collector cat /var/lib/stabmon/token`.
set -eu

PYTHON="${PYTHON:-python}"
TOKEN_FILE="${STABMON_BOOTSTRAP_TOKEN_FILE:-/var/lib/stabmon/token}"
PROJECT="${STABMON_PROJECT:-default}"

"$PYTHON" -m stabmon_cli db upgrade

# `token list` prints: id, project, prefix, created, revoked ("-" while active), label.
if ! "$PYTHON" -m stabmon_cli token list | awk -F '\t' 'NR > 1 && $5 == "-" { found = 1 } END { exit !found }'; then
    umask 077
    mkdir -p "$(dirname "$TOKEN_FILE")"
    "$PYTHON" -m stabmon_cli token create --project "$PROJECT" --label "docker-compose bootstrap" \
        | tail -n 1 > "$TOKEN_FILE"
    echo "stabmon: created the first API token for project '$PROJECT' in $TOKEN_FILE" >&2
fi

exec "$PYTHON" -m stabmon_cli serve --log-level "${STABMON_LOG_LEVEL:-info}"
