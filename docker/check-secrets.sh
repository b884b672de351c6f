#!/bin/sh
# Refuse to start a service whose secrets are missing, still the .env.example placeholder, or too
# short to resist guessing; then run the service's own command.
#
#   check-secrets.sh VAR [VAR ...] [-- COMMAND [ARG ...]]
#
# Compose's `${VAR:?}` already stops an unset or empty variable, but only on the host running
# `docker compose`: this check also runs inside each container (entrypoint), so an env file copied
# from .env.example without editing, or a secret set another way, is caught before Postgres or
# MLflow store it. (MLflow's admin password and Postgres's password are written into their
# databases on first start and then ignored: a weak one would outlive a later fix of the env file.)
#
# POSIX sh on purpose: it runs in the postgres image as well as in ours.
set -eu

# Keep in sync with .env.example (tests/test_compose.py checks that they match).
PLACEHOLDER="change-me-to-a-long-random-secret"
MIN_LENGTH=12

failed=0
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
    name=$1
    shift
    # Indirect expansion without bash's ${!name}; names come from our own compose file, and a name
    # that is not a plain identifier is refused rather than evaluated.
    case $name in
        '' | [0-9]* | *[!A-Za-z0-9_]*)
            echo "check-secrets: '$name' is not a variable name" >&2
            exit 2
            ;;
    esac
    eval "value=\${$name-}"
    if [ -z "$value" ]; then
        echo "check-secrets: $name is not set or empty; set it in .env (see .env.example)" >&2
        failed=1
    elif [ "$value" = "$PLACEHOLDER" ]; then
        echo "check-secrets: $name is still the placeholder from .env.example; set a real secret (e.g. openssl rand -hex 24)" >&2
        failed=1
    elif [ "${#value}" -lt "$MIN_LENGTH" ]; then
        echo "check-secrets: $name is ${#value} characters; use at least $MIN_LENGTH (e.g. openssl rand -hex 24)" >&2
        failed=1
    fi
done
if [ "$failed" -ne 0 ]; then
    exit 1
fi

if [ "$#" -gt 0 ]; then
    shift # the "--"
    if [ "$#" -gt 0 ]; then
        exec "$@"
    fi
fi
