#!/usr/bin/env bash
# A private MariaDB server for development, tests and `make run`: data under $CHAT_VAR/mariadb,
# socket $CHAT_VAR/run/mariadb.sock, no TCP, --no-defaults so the host's my.cnf never leaks in.
# Usage: deploy/mariadb.sh start|stop|status|restart|client [args...]
# Idempotent: start when running is a no-op; a stale socket or pid file is removed.
# Full-text tuning that the chat needs: min word length 1 (V6, hp, E42) and no stopword list, for the
# knowledge base's Aria index (ft-*) and for any InnoDB one (innodb-ft-*); the query cache in DEMAND mode
# for the knowledge-base reads that ask for it (SQL_CACHE), 128 MB in 1 KB blocks (at 64 MB in 4 KB
# blocks the benchmark's chat run spent a tenth of the server's CPU evicting and defragmenting).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VAR=${CHAT_VAR:-$ROOT/var}
case "$VAR" in /*) ;; *) VAR=$ROOT/$VAR ;; esac
DATA=$VAR/mariadb
RUN=$VAR/run
LOG=$VAR/log
SOCK=$RUN/mariadb.sock
PID=$RUN/mariadb.pid
TMP=$VAR/tmp  # its own temporary tables: a shared /tmp cleaned by others broke queries under load
mkdir -p "$RUN" "$LOG" "$TMP"

find_bin() { for b in "$@"; do command -v "$b" 2>/dev/null && return 0; [ -x "/usr/sbin/$b" ] && { echo "/usr/sbin/$b"; return 0; }; done; return 1; }
MARIADBD=$(find_bin mariadbd mysqld) || { echo "mariadb.sh: mariadbd not found (make deps)" >&2; exit 1; }
INSTALL_DB=$(find_bin mariadb-install-db mysql_install_db) || { echo "mariadb.sh: mariadb-install-db not found" >&2; exit 1; }
CLIENT=$(find_bin mariadb mysql)
USER_OPT=(); [ "$(id -u)" -eq 0 ] && USER_OPT=(--user=root)

running() { [ -f "$PID" ] && kill -0 "$(cat "$PID")" 2>/dev/null; }
ping() { "$CLIENT" --no-defaults -uroot --socket="$SOCK" -e 'SELECT 1' >/dev/null 2>&1; }

start() {
  if running && ping; then return 0; fi
  if running; then  # alive but not answering yet: wait below
    :
  else
    rm -f "$PID" "$SOCK" "$SOCK.lock"
    if [ ! -d "$DATA/mysql" ]; then
      mkdir -p "$DATA"
      "$INSTALL_DB" --no-defaults --datadir="$DATA" "${USER_OPT[@]}" --auth-root-authentication-method=normal \
        --skip-test-db >"$LOG/mariadb-install.log" 2>&1 || { cat "$LOG/mariadb-install.log" >&2; exit 1; }
    fi
    "$MARIADBD" --no-defaults --datadir="$DATA" --socket="$SOCK" --pid-file="$PID" "${USER_OPT[@]}" \
      --skip-networking --log-error="$LOG/mariadb.log" --tmpdir="$TMP" \
      --innodb-ft-min-token-size=1 --innodb-ft-enable-stopword=0 --ft-min-word-len=1 --ft-stopword-file= \
      --innodb-buffer-pool-size=256M --innodb-log-file-size=64M --innodb-flush-log-at-trx-commit=2 \
      --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
      --query-cache-type=2 --query-cache-size=128M --query-cache-min-res-unit=1024 --max-connections=500 --skip-name-resolve >/dev/null 2>&1 &
  fi
  for _ in $(seq 1 300); do ping && return 0; sleep 0.1; done
  echo "mariadb.sh: server did not come up; see $LOG/mariadb.log" >&2; tail -20 "$LOG/mariadb.log" >&2 || true
  exit 1
}

stop() {
  running || { rm -f "$PID" "$SOCK"; return 0; }
  local p; p=$(cat "$PID"); kill "$p" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$p" 2>/dev/null || { rm -f "$SOCK"; return 0; }; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true; rm -f "$PID" "$SOCK"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if running && ping; then echo "running (socket $SOCK)"; else echo "stopped"; exit 3; fi ;;
  client) shift; exec "$CLIENT" --no-defaults -uroot --socket="$SOCK" "$@" ;;
  socket) echo "$SOCK" ;;
  *) echo "usage: $0 start|stop|restart|status|client [args]|socket" >&2; exit 2 ;;
esac
