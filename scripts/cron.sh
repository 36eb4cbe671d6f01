#!/bin/sh
# Cron entry point (deploy/crontab): run COMMAND... from the checkout with the app's
# environment, quietly. Each run's output is appended to $CRON_LOG (instance/cron.log); on
# success nothing is printed, so cron mails only failures: a non-zero exit prints the
# command, its exit code and its output, and exits with that code.
#
#   0 * * * *  /srv/licensing/scripts/cron.sh .venv/bin/flask --app wsgi subscriptions renew
#
# LICENSING_ENV names the environment file (default /etc/licensing/env).
set -u
cd "$(dirname "$0")/.." || exit 1
ENV_FILE=${LICENSING_ENV:-/etc/licensing/env}
if ! [ -r "$ENV_FILE" ]; then
  echo "cron.sh: cannot read $ENV_FILE (is it owned by the user this crontab runs as?)" >&2
  exit 1
fi
set -a
. "$ENV_FILE"
set +a
LOG=${CRON_LOG:-instance/cron.log}
mkdir -p "$(dirname "$LOG")"
out=$("$@" 2>&1)
code=$?
printf '%s %s (exit %s)\n%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" "$code" "$out" >>"$LOG"
if [ "$code" -ne 0 ]; then
  printf '%s failed (exit %s):\n%s\n' "$*" "$code" "$out" >&2
  exit "$code"
fi
