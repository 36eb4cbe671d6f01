#!/usr/bin/env bash
# Cron entry point: a verified backup, then pruning. One line per run goes to the log
# ($BACKUP_LOG, default $BACKUP_DIR/backup.log). Two runs never overlap: a run that finds
# another one holding the lock logs "skipped" and exits 0. Any failure exits non-zero and
# prints the reason, so cron mails it.
#
#   15 3 * * *  cd /srv/licensing && scripts/backup.sh
#
# Reads the same environment as the app (DATABASE_URL, BACKUP_DIR, …). Extra knobs:
# BACKUP_KEEP_DAYS (30), BACKUP_LOCK (file), FLASK (the flask executable).
set -uo pipefail
umask 077  # the log, the lock and anything else made here: this user only
# Relative paths in the environment mean what they mean where the script was started.
for name in INSTANCE_PATH BACKUP_DIR BACKUP_LOG BACKUP_LOCK; do
  value=${!name:-}
  if [ -n "$value" ] && [ "${value#/}" = "$value" ]; then
    export "$name=$PWD/$value"
  fi
done
cd "$(dirname "$0")/.."

# The app's own default (BACKUP_DIR, else <instance folder>/backups), so that `backup list`
# and `prune` see what cron made.
BACKUP_DIR=${BACKUP_DIR:-${INSTANCE_PATH:-instance}/backups}
export BACKUP_DIR
KEEP_DAYS=${BACKUP_KEEP_DAYS:-30}
LOG=${BACKUP_LOG:-$BACKUP_DIR/backup.log}
LOCK=${BACKUP_LOCK:-$BACKUP_DIR/.backup.lock}
FLASK=${FLASK:-.venv/bin/flask}

fail() { printf 'backup failed: %s\n' "$*" >&2; exit 1; }
mkdir -p "$BACKUP_DIR" "$(dirname "$LOG")" 2>/dev/null \
  || fail "cannot create $BACKUP_DIR (or the folder of $LOG)"
touch "$LOG" 2>/dev/null || fail "cannot write $LOG"
log() { printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$LOG"; }

{ exec 9>"$LOCK"; } 2>/dev/null || fail "cannot open the lock file $LOCK"
flock -n -E 75 9
case $? in
  0) ;;
  75)
    log "backup skipped: another run holds $LOCK"
    exit 0
    ;;
  *) fail "cannot lock $LOCK" ;;
esac

started=$(date +%s)
if ! out=$("$FLASK" --app wsgi backup create 2>&1); then
  reason=$(printf '%s' "$out" | tail -n 1)
  log "backup FAILED: $reason"
  printf 'backup failed: %s\n' "$out" >&2
  exit 1
fi
if ! pruned=$("$FLASK" --app wsgi backup prune --keep-days "$KEEP_DAYS" 2>&1); then
  log "backup ok but prune FAILED: $(printf '%s' "$pruned" | tail -n 1)"
  printf 'prune failed: %s\n' "$pruned" >&2
  exit 1
fi
log "$(printf '%s' "$out" | tail -n 1); $(printf '%s' "$pruned" | tail -n 1); $(( $(date +%s) - started ))s"
