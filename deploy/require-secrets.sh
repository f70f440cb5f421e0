#!/bin/sh
# Usage: require-secrets.sh NAME [NAME...] -- COMMAND [ARG...]
#
# Refuses to start COMMAND while any of the named environment variables is empty or still holds
# the "please-change-me..." placeholder from .env.example, then execs COMMAND unchanged.
# docker-compose.yml puts it in front of the InfluxDB and Grafana images' own entrypoints, so a
# stack started from an unedited copy of .env.example fails loudly instead of running with
# publicly known credentials. (`${VAR:?}` in compose already refuses unset variables; this
# also catches the placeholders.)
set -eu

bad=0
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
    name=$1
    shift
    case "$name" in
        "" | [0-9]* | *[!A-Za-z0-9_]*)
            echo "require-secrets: invalid variable name '$name'" >&2
            exit 2
            ;;
    esac
    value=""
    eval "value=\${$name:-}"
    case "$value" in
        "")
            echo "require-secrets: $name is not set (see .env.example)" >&2
            bad=1
            ;;
        please-change-me*)
            echo "require-secrets: $name still holds the .env.example placeholder; set a real secret in .env" >&2
            bad=1
            ;;
    esac
done

if [ "$#" -lt 2 ]; then
    echo "usage: require-secrets.sh NAME [NAME...] -- COMMAND [ARG...]" >&2
    exit 2
fi
shift # the "--"
[ "$bad" -eq 0 ] || exit 1
exec "$@"
