#!/bin/sh
# Export each Docker secret whose file name is an environment variable name, then
# run the command: /run/secrets/CRYPTOBOTS_DB_URL becomes $CRYPTOBOTS_DB_URL.
# cryptobots' settings and Airflow's read their secrets from the environment; this
# keeps the values out of docker-compose.yaml and out of `docker inspect`.
# Files with other names (postgres_password, binance.yaml) are left as files.
set -eu
dir="${SECRETS_DIR:-/run/secrets}"
if [ -d "$dir" ]; then
    for path in "$dir"/*; do
        [ -f "$path" ] || continue
        name=$(basename "$path")
        case "$name" in
            "" | [0-9]* | *[!A-Z0-9_]*) continue ;;
        esac
        # $(cat) drops the trailing newline an editor or `echo >` leaves
        value=$(cat "$path")
        export "$name=$value"
    done
fi
exec "$@"
