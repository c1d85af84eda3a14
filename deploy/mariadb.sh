#!/usr/bin/env bash
# A private MariaDB server for development, tests and `make run`: data under $CHAT_VAR/mariadb, no TCP,
# --no-defaults so the host's my.cnf never leaks in.
# Usage: deploy/mariadb.sh start|stop|status|restart|client [args...]|socket|service-user|reopen-log
# Idempotent: start when running is a no-op (it re-applies the accounts below); a stale socket or pid file
# is removed.
#
# Reachable only by the user who started it:
# - the socket lives in $CHAT_VAR/run/mariadb/ (mode 0700, owned by the server's OS user); clients use the
#   link $CHAT_VAR/run/mariadb.sock, which needs that directory's permission all the same;
# - accounts: root@localhost and <you>@localhost (your login name) authenticate with unix_socket, i.e. only
#   that OS user, no password path at all; `chat`@localhost is the services' least-privilege account
#   (SELECT, INSERT, UPDATE, DELETE on $CHAT_DB_NAME, default chat) with a random password in
#   $CHAT_VAR/db-password (mode 600); every other account is dropped (older data directories had
#   passwordless root@127.0.0.1, root@::1 and root@<host>);
# - secure_file_priv is $CHAT_VAR/run/mariadb/files: SELECT ... INTO OUTFILE and LOAD DATA cannot touch
#   any other file;
# - started by root, mariadbd runs as the `mysql` system user (CHAT_DB_OS_USER names another), never as
#   root; when that user cannot reach $CHAT_VAR (a checkout under a 0700 home), it says so and runs as root.
#
# Full-text tuning that the chat needs: min word length 1 (V6, hp, E42) and no stopword list, for the
# knowledge base's InnoDB indexes (innodb-ft-*, which chat_kb_fulltext_check verifies at the services'
# start and in /health) and for a MyISAM/Aria one of an older schema (ft-*); the query cache in DEMAND mode
# for the knowledge-base reads that ask for it (SQL_CACHE), 128 MB in 1 KB blocks (at 64 MB in 4 KB
# blocks the benchmark's chat run spent a tenth of the server's CPU evicting and defragmenting).
# jemalloc as the server's allocator when installed (libjemalloc2, make deps; CHAT_DB_MALLOC=system keeps
# glibc's): InnoDB's full-text search allocates a tree node per matching passage, and with glibc's malloc
# a third of the server's CPU went to malloc, free and malloc_consolidate during retrieval (perf), 4 %
# with jemalloc (docs/benchmarks.md).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VAR=${CHAT_VAR:-$ROOT/var}
case "$VAR" in /*) ;; *) VAR=$ROOT/$VAR ;; esac
DATA=$VAR/mariadb
RUN=$VAR/run
LOG=$VAR/log
SRV=$RUN/mariadb       # the server's own directory, mode 0700
SOCK=$SRV/mariadb.sock
LINK=$RUN/mariadb.sock # what clients name (CHAT_DB_SOCKET)
PID=$SRV/mariadb.pid
TMP=$SRV/tmp           # its own temporary tables: a shared /tmp cleaned by others broke queries under load
FILES=$SRV/files       # secure_file_priv
PWFILE=$VAR/db-password
PID_LINK=$RUN/mariadb.pid # a link to $PID for readers of the old place (tests/bench.sh); a plain file
                          # there is a server an earlier version of this script started
SERVICE_USER=chat
DB_NAME=${CHAT_DB_NAME:-chat}
ME=$(id -un)
mkdir -p "$RUN" "$LOG"

find_bin() { for b in "$@"; do command -v "$b" 2>/dev/null && return 0; [ -x "/usr/sbin/$b" ] && { echo "/usr/sbin/$b"; return 0; }; done; return 1; }
MARIADBD=$(find_bin mariadbd mysqld) || { echo "mariadb.sh: mariadbd not found (make deps)" >&2; exit 1; }
INSTALL_DB=$(find_bin mariadb-install-db mysql_install_db) || { echo "mariadb.sh: mariadb-install-db not found" >&2; exit 1; }
CLIENT=$(find_bin mariadb mysql)
JEMALLOC=""
if [ "${CHAT_DB_MALLOC:-jemalloc}" = jemalloc ]; then
  for j in /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/aarch64-linux-gnu/libjemalloc.so.2 /usr/lib64/libjemalloc.so.2 /usr/lib/libjemalloc.so.2; do
    [ -r "$j" ] && { JEMALLOC=$j; break; }
  done
fi

[[ "$ME" =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "mariadb.sh: login name '$ME' cannot name a database account" >&2; exit 1; }
[[ "$DB_NAME" =~ ^[A-Za-z0-9_]+$ ]] || { echo "mariadb.sh: CHAT_DB_NAME must be letters, digits and _" >&2; exit 1; }

# The OS user mariadbd runs as: yourself, or for root an unprivileged system user that can reach $VAR.
server_user() {
  [ "$(id -u)" -eq 0 ] || { echo "$ME"; return; }
  local u=${CHAT_DB_OS_USER:-mysql}
  if [ "$u" != root ] && id "$u" >/dev/null 2>&1 &&
    setpriv --reuid="$u" --regid="$(id -g "$u")" --clear-groups test -x "$VAR" 2>/dev/null; then
    echo "$u"
  else
    [ "$u" = root ] || echo "mariadb.sh: OS user $u missing or cannot reach $VAR: mariadbd runs as root" >&2
    echo root
  fi
}

running() { [ -f "$PID" ] && kill -0 "$(cat "$PID" 2>/dev/null)" 2>/dev/null; }
admin() { "$CLIENT" --no-defaults -u"$ME" --socket="$SOCK" "$@"; }
ping() { admin -e 'SELECT 1' >/dev/null 2>&1; }
# A data directory made by an earlier version has a passwordless root and no account for a non-root you.
legacy_ping() { "$CLIENT" --no-defaults -uroot --socket="$SOCK" -e 'SELECT 1' >/dev/null 2>&1; }

password() {
  if [ ! -s "$PWFILE" ]; then
    (umask 077 && head -c 24 /dev/urandom | od -An -v -tx1 | tr -d ' \n' >"$PWFILE.tmp" && mv "$PWFILE.tmp" "$PWFILE")
  fi
  chmod 600 "$PWFILE"
  cat "$PWFILE"
}

# The accounts described above, re-applied at every start (SQL on stdin: the password never shows in ps).
secure() {
  local as=(-u"$ME") pw sql keep u h
  ping || as=(-uroot) # legacy data directory: its passwordless root fixes itself once
  pw=$(password)
  sql="ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket;"
  if [ "$ME" != root ]; then
    sql+="CREATE USER IF NOT EXISTS '$ME'@'localhost' IDENTIFIED VIA unix_socket;"
    sql+="ALTER USER '$ME'@'localhost' IDENTIFIED VIA unix_socket;"
    sql+="GRANT ALL PRIVILEGES ON *.* TO '$ME'@'localhost' WITH GRANT OPTION;"
  fi
  sql+="CREATE USER IF NOT EXISTS '$SERVICE_USER'@'localhost' IDENTIFIED BY '$pw';"
  sql+="ALTER USER '$SERVICE_USER'@'localhost' IDENTIFIED BY '$pw';"
  sql+="GRANT SELECT, INSERT, UPDATE, DELETE ON \`$DB_NAME\`.* TO '$SERVICE_USER'@'localhost';"
  keep="('root','localhost'),('$ME','localhost'),('$SERVICE_USER','localhost'),('mariadb.sys','localhost')"
  while IFS=$'\t' read -r u h; do
    [[ "$u$h" =~ ^[A-Za-z0-9_.:%-]*$ ]] && sql+="DROP USER IF EXISTS '$u'@'$h';"
  done < <("$CLIENT" --no-defaults "${as[@]}" --socket="$SOCK" -N -B \
    -e "SELECT user, host FROM mysql.global_priv WHERE (user, host) NOT IN ($keep)")
  "$CLIENT" --no-defaults "${as[@]}" --socket="$SOCK" <<<"$sql" ||
    { echo "mariadb.sh: cannot set up the accounts" >&2; return 1; }
}

stop_pid() { # pid file
  local p; p=$(cat "$1" 2>/dev/null) || return 0
  kill -0 "$p" 2>/dev/null || { rm -f "$1"; return 0; }
  kill "$p" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$p" 2>/dev/null || { rm -f "$1"; return 0; }; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true
  rm -f "$1"
}

legacy() { if [ -f "$PID_LINK" ] && [ ! -L "$PID_LINK" ]; then stop_pid "$PID_LINK"; fi; }

start() {
  legacy # a server an earlier version started, socket in run/
  if running && ping; then secure; return; fi
  if ! running; then
    local user; user=$(server_user)
    rm -f "$PID" "$SOCK" "$SOCK.lock" "$LINK" "$PID_LINK"
    mkdir -p "$DATA" "$SRV" "$TMP" "$FILES"
    chmod 700 "$DATA" "$SRV" "$TMP" "$FILES"
    touch "$LOG/mariadb.log"
    local user_opt=()
    if [ "$(id -u)" -eq 0 ]; then
      user_opt=(--user="$user")
      # chown only when needed: the data directory can be large
      if [ "$(stat -c %U "$DATA")" != "$user" ] || { [ -d "$DATA/mysql" ] && [ "$(stat -c %U "$DATA/mysql")" != "$user" ]; }; then
        chown -R "$user:" "$DATA"
      fi
      chown "$user:" "$DATA" "$SRV" "$TMP" "$FILES" "$LOG/mariadb.log"
    fi
    if [ ! -d "$DATA/mysql" ]; then
      "$INSTALL_DB" --no-defaults --datadir="$DATA" "${user_opt[@]}" --auth-root-authentication-method=socket \
        --auth-root-socket-user="$ME" --skip-test-db >"$LOG/mariadb-install.log" 2>&1 ||
        { cat "$LOG/mariadb-install.log" >&2; exit 1; }
    fi
    local preload=()
    [ -n "$JEMALLOC" ] && preload=(env "LD_PRELOAD=$JEMALLOC")
    "${preload[@]}" "$MARIADBD" --no-defaults --datadir="$DATA" --socket="$SOCK" --pid-file="$PID" "${user_opt[@]}" \
      --skip-networking --log-error="$LOG/mariadb.log" --tmpdir="$TMP" --secure-file-priv="$FILES" \
      --innodb-ft-min-token-size=1 --innodb-ft-enable-stopword=0 --ft-min-word-len=1 --ft-stopword-file= \
      --innodb-buffer-pool-size=256M --innodb-log-file-size=64M --innodb-flush-log-at-trx-commit=2 \
      --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
      --query-cache-type=2 --query-cache-size=128M --query-cache-min-res-unit=1024 --max-connections=500 --skip-name-resolve >/dev/null 2>&1 &
  fi
  for _ in $(seq 1 300); do
    if ping || legacy_ping; then
      ln -sfn mariadb/mariadb.sock "$LINK"
      ln -sfn mariadb/mariadb.pid "$PID_LINK"
      secure
      return
    fi
    sleep 0.1
  done
  echo "mariadb.sh: server did not come up; see $LOG/mariadb.log" >&2; tail -20 "$LOG/mariadb.log" >&2 || true
  exit 1
}

stop() {
  legacy
  stop_pid "$PID"
  rm -f "$SOCK" "$LINK" "$PID_LINK"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if running && ping; then echo "running (socket $LINK)"; else echo "stopped"; exit 3; fi ;;
  client) shift; exec "$CLIENT" --no-defaults -u"$ME" --socket="$SOCK" "$@" ;;
  socket) echo "$LINK" ;;
  reopen-log) # after $LOG/mariadb.log was moved away: a new one, writable by the server's OS user
    touch "$LOG/mariadb.log"
    [ "$(id -u)" -eq 0 ] && chown "$(stat -c %U "$SRV"):" "$LOG/mariadb.log"
    admin -e 'FLUSH ERROR LOGS' ;;
  service-user) printf '%s %s\n' "$SERVICE_USER" "$PWFILE" ;; # the services' account and its password file
  *) echo "usage: $0 start|stop|restart|status|client [args]|socket|service-user|reopen-log" >&2; exit 2 ;;
esac
