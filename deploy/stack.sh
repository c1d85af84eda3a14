#!/usr/bin/env bash
# The whole chat stack on one machine, for development, tests and benchmarks (production uses the
# systemd units in deploy/systemd instead).
#
#   deploy/stack.sh run                         everything in the foreground; Ctrl-C stops it all cleanly
#   deploy/stack.sh start | stop | restart | status
#                                               the same in the background (idempotent)
#   deploy/stack.sh reload                      SIGHUP: workers and FastCGI responders reload the agents'
#                                               prompts and model settings (CHAT_PROMPTS_DIR)
#   deploy/stack.sh reopen-logs                 after moving logs away: every process starts a new file
#   deploy/stack.sh token [SUB EMAIL NAME TTL]  mints a JWT with the stack's secret (prints it)
#   deploy/stack.sh kb-import DIR               imports markdown files into the knowledge base
#
# Order: MariaDB (private, unless CHAT_DB_HOST / CHAT_DB_SOCKET name another server) -> chat-kb setup
# (schema, sample data, knowledge base; once, later runs keep the data) -> chat-worker -> chat-streamer
# -> lighttpd with its FastCGI pool -> chat-guard (the bound on a request's time). `stop` lets every answer
# in flight finish (see stop_all).
# This script is also the supervisor (`run` in the foreground, `start` in the background, pid in
# run/stack.pid): it restarts a process that dies, with a back-off (sv_check), rotates the logs that grow
# too big (rotate_logs), and stops everything on SIGINT/SIGTERM (what `stop` sends it).
#
# Everything lives under CHAT_VAR (default var/): run/ (pid files, sockets), log/, tmp/, the JWT secret
# (jwt-secret, mode 600, unless JWT_SECRET is set) and the demo token (demo-token). With CHAT_VAR and
# CHAT_PORT (default 8000) set differently, a second stack (make test) runs beside `make run` without
# sharing a port, a socket or a file: the streamer and the FastCGI pool listen on Unix sockets there.
#
# Other settings: CHAT_BIND (127.0.0.1), CHAT_FCGI_PROCS (4), CHAT_DEMO (1: /api/v1/demo-token on a
# loopback bind, never on another; 0 = off), CHAT_STREAMERS (1: streamer processes, each with its own
# Unix socket, pid file and log, all sharing the worker pool and lighttpd balancing /ws/chat over them),
# CHAT_DIRECT_PORT (none: a TCP port on CHAT_BIND every streamer also listens on, shared with
# SO_REUSEPORT, for a load balancer of your own in front of the streamers),
# and every variable of deploy/chat.env.example, passed through to the programs.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
VAR=${CHAT_VAR:-$ROOT/var}
case "$VAR" in /*) ;; *) VAR=$ROOT/$VAR ;; esac
RUN=$VAR/run
LOG=$VAR/log
BIN=$ROOT/build/bin

export CHAT_ROOT=$ROOT CHAT_VAR=$VAR
export CHAT_PORT=${CHAT_PORT:-8000}
export CHAT_BIND=${CHAT_BIND:-127.0.0.1}
export CHAT_FCGI_PROCS=${CHAT_FCGI_PROCS:-4}
export CHAT_LOG_LEVEL=${CHAT_LOG_LEVEL:-info}
# One set of development defaults, for `make run` and `make start` alike: the offline provider paced like
# a real model (25 ms a token) so that streaming is visible, and the demo user allowed to look at any
# sample customer (the test page's customer field). Anything set in the environment wins (tests/run.sh
# sets its own).
export CHAT_TOKEN_DELAY_MS=${CHAT_TOKEN_DELAY_MS:-25}
export CHAT_CUSTOMER_ACCESS=${CHAT_CUSTOMER_ACCESS:-any}
export CHAT_METRICS_DIR=${CHAT_METRICS_DIR:-$RUN/metrics}
# lighttpd proxies /ws/chat over a Unix socket (see lighttpd.conf), so the streamer listens on one.
case "${CHAT_STREAMER_LISTEN:-}" in
  unix:/*) export CHAT_STREAMER_SOCKET=${CHAT_STREAMER_LISTEN#unix:} ;;
  "") export CHAT_STREAMER_SOCKET=${CHAT_STREAMER_SOCKET:-$RUN/streamer.sock} ;;
  *) echo "stack: CHAT_STREAMER_LISTEN must be unix:/path (lighttpd.conf proxies over a Unix socket)" >&2; exit 2 ;;
esac
export CHAT_STREAMER_LISTEN=unix:$CHAT_STREAMER_SOCKET
# Several streamers: streamer i (from 1) is ST_NAMES[i-1] (its pid file and log), listens on ST_SOCKS[i-1]
# and binds ST_EPS[i-1], one endpoint of the workers' list (CHAT_ZMQ_ENDPOINT, one per streamer). The
# first keeps the names of a single streamer (chat-streamer, streamer.sock, chat-workers.ipc).
export CHAT_STREAMERS=${CHAT_STREAMERS:-1}
if ! [[ "$CHAT_STREAMERS" =~ ^[0-9]+$ ]] || [ "$CHAT_STREAMERS" -lt 1 ] || [ "$CHAT_STREAMERS" -gt 16 ]; then
  echo "stack: CHAT_STREAMERS must be 1..16" >&2; exit 2
fi
export CHAT_DIRECT_PORT=${CHAT_DIRECT_PORT:-}
if [ -n "$CHAT_DIRECT_PORT" ] && { ! [[ "$CHAT_DIRECT_PORT" =~ ^[0-9]+$ ]] || [ "$CHAT_DIRECT_PORT" -lt 1 ] || [ "$CHAT_DIRECT_PORT" -gt 65535 ]; }; then
  echo "stack: CHAT_DIRECT_PORT must be a TCP port (1..65535) or empty" >&2; exit 2
fi
ST_NAMES=() ST_SOCKS=() ST_EPS=()
if [ -z "${CHAT_ZMQ_ENDPOINT:-}" ]; then
  for ((i = 1; i <= CHAT_STREAMERS; i++)); do
    ST_EPS+=("ipc://$RUN/chat-workers$([ "$i" = 1 ] || echo "-$i").ipc")
  done
  CHAT_ZMQ_ENDPOINT=$(IFS=,; echo "${ST_EPS[*]}")
else
  IFS=, read -ra ST_EPS <<<"$CHAT_ZMQ_ENDPOINT"
  if [ "${#ST_EPS[@]}" != "$CHAT_STREAMERS" ]; then
    echo "stack: CHAT_ZMQ_ENDPOINT lists ${#ST_EPS[@]} endpoints for CHAT_STREAMERS=$CHAT_STREAMERS streamers (one each)" >&2; exit 2
  fi
fi
export CHAT_ZMQ_ENDPOINT
for ((i = 1; i <= CHAT_STREAMERS; i++)); do
  if [ "$i" = 1 ]; then ST_NAMES+=(chat-streamer) ST_SOCKS+=("$CHAT_STREAMER_SOCKET")
  else ST_NAMES+=("chat-streamer-$i") ST_SOCKS+=("${CHAT_STREAMER_SOCKET%.sock}-$i.sock"); fi
done
# Every streamer's socket: lighttpd balances /ws/chat over them (deploy/lighttpd-env.sh), /health probes each.
CHAT_STREAMER_SOCKETS=$(IFS=,; echo "${ST_SOCKS[*]}")
export CHAT_STREAMER_SOCKETS
DIRECT_LISTEN=""
if [ -n "$CHAT_DIRECT_PORT" ]; then
  case "$CHAT_BIND" in *:*) DIRECT_LISTEN="[$CHAT_BIND]:$CHAT_DIRECT_PORT" ;; *) DIRECT_LISTEN="$CHAT_BIND:$CHAT_DIRECT_PORT" ;; esac
fi
# lighttpd must never cut an idle WebSocket before the streamer's own idle timeout does.
export CHAT_WS_IDLE_S=${CHAT_WS_IDLE_S:-$(( ${CHAT_IDLE_TIMEOUT_S:-300} + 60 ))}
# ...nor, on a graceful stop, a WebSocket the streamer is still draining.
export CHAT_FRONT_DRAIN_S=${CHAT_FRONT_DRAIN_S:-$(( ${CHAT_SHUTDOWN_GRACE_S:-10} + 20 ))}
# A request head may pause this long between two bytes (lighttpd.conf: slowloris).
export CHAT_HEAD_IDLE_S=${CHAT_HEAD_IDLE_S:-10}
# ... and must be complete (head and body) this long after the server last answered; chat-guard closes
# it otherwise (guard/guard_track.h), the bound lighttpd itself lacks.
export CHAT_HEAD_TIMEOUT_S=${CHAT_HEAD_TIMEOUT_S:-20}

# The private MariaDB unless another server is named. Its schema set-up runs as your own account
# (unix_socket, see deploy/mariadb.sh), the services as its least-privilege `chat` account (db_start).
# Another server: the services use CHAT_DB_USER / CHAT_DB_PASSWORD, and the set-up, needed only when
# `chat-kb check` finds the schema missing or old, CHAT_DB_ADMIN_USER / CHAT_DB_ADMIN_PASSWORD when set.
PRIVATE_DB=0
ADMIN_ENV=()
if [ -z "${CHAT_DB_HOST:-}" ] && { [ -z "${CHAT_DB_SOCKET:-}" ] || [ "$CHAT_DB_SOCKET" = "$RUN/mariadb.sock" ]; }; then
  PRIVATE_DB=1
  export CHAT_DB_SOCKET=$RUN/mariadb.sock
  ADMIN_ENV=(CHAT_DB_USER="$(id -un)" CHAT_DB_PASSWORD=)
elif [ -n "${CHAT_DB_ADMIN_USER:-}" ]; then
  ADMIN_ENV=(CHAT_DB_USER="$CHAT_DB_ADMIN_USER" CHAT_DB_PASSWORD="${CHAT_DB_ADMIN_PASSWORD:-}")
fi
unset CHAT_DB_ADMIN_USER CHAT_DB_ADMIN_PASSWORD # never in the services' environment

HOST=$CHAT_BIND
case "$HOST" in 0.0.0.0 | "::" | "[::]") HOST=127.0.0.1 ;; esac
BASE=http://$HOST:$CHAT_PORT
# A name in $BASE for people (localhost), the literal address for curl (no IPv6 detour).
PUBLIC=http://localhost:$CHAT_PORT
[ "$HOST" = 127.0.0.1 ] || PUBLIC=$BASE

say() { printf 'stack: %s\n' "$*"; }
# (ERR_FD: the supervisor's loop runs with stderr to /dev/null, see supervise)
warn() { printf 'stack: %s\n' "$*" >&"${ERR_FD:-2}"; }

# ---- processes: pid files under $RUN, checked against /proc so a recycled pid is never signalled ----

pid_of() { # name -> pid on stdout when that process runs
  local f=$RUN/$1.pid p
  [ -f "$f" ] || return 1
  p=$(cat "$f" 2>/dev/null) || return 1
  [[ "$p" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$p" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q -- "$2" || return 1
  echo "$p"
}

# Starts a program in its own session (Ctrl-C in the terminal reaches only this script, which then stops
# everything in order), stdout and stderr appended to $LOG/<log>.log. setsid execs in place (a background
# job of a non-interactive shell is no group leader), so $! is the program's pid. Returns once that pid
# runs the program itself: until the execs are done its command line is this script's, and a pid_of
# right after the spawn would call a starting program gone ("lighttpd exited at start").
# (The subshell gives the program back the default SIGPIPE the supervisor ignores for itself.)
# CHAT_LOG_FILE names the same log for the program itself, which reopens it on SIGHUP (reopen_logs);
# lighttpd passes it to its FastCGI responders, whose log chat-fcgi.log is.
spawn() { # name log command...
  local name=$1 log=$2 exe i; shift 2
  exe=$(readlink -f "$(command -v "$1")")
  (trap - PIPE; export CHAT_LOG_FILE="$LOG/$log.log"; exec setsid "$@" >>"$LOG/$log.log" 2>&1 </dev/null) &
  echo $! >"$RUN/$name.pid"
  for ((i = 0; i < 200; i++)); do
    [ "$(readlink "/proc/$!/exe" 2>/dev/null)" = "$exe" ] && return 0
    kill -0 "$!" 2>/dev/null || return 0 # gone already: the caller reports it
    sleep 0.01
  done
}

# SIGTERM (or signal; "-" for none: one sent earlier is at work), wait up to grace seconds, then whatever
# is left of its process group, then SIGKILL.
stop_proc() { # name pattern grace [signal]
  local name=$1 pat=$2 grace=$3 sig=${4:-TERM} p i
  if ! p=$(pid_of "$name" "$pat"); then rm -f "$RUN/$name.pid"; return 0; fi
  say "stopping $name (pid $p)"
  [ "$sig" = - ] || kill -"$sig" "$p" 2>/dev/null
  for ((i = 0; i < grace * 10; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$p" 2>/dev/null; then warn "$name did not exit within ${grace}s; killing it"; kill -KILL "$p" 2>/dev/null; fi
  # Children it left behind (FastCGI responders, worker processes) share its process group.
  if kill -0 -- "-$p" 2>/dev/null; then
    kill -TERM -- "-$p" 2>/dev/null
    for ((i = 0; i < 30; i++)); do kill -0 -- "-$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$p" 2>/dev/null
  fi
  rm -f "$RUN/$name.pid"
}

# lighttpd's graceful stop: its master process exits at once, its worker processes when their requests
# are done, the FastCGI responders when it ends them, all in the process group stack.sh gave it. Waits
# up to grace seconds for that group to empty, then SIGTERM, then SIGKILL.
stop_group() { # name pgid grace
  local name=$1 g=$2 grace=$3 i
  for ((i = 0; i < grace * 10; i++)); do kill -0 -- "-$g" 2>/dev/null || return 0; sleep 0.1; done
  warn "$name did not finish within ${grace}s; stopping what is left"
  kill_group "$g"
}

kill_group() { # pgid: SIGTERM, up to 3 s, SIGKILL
  local g=$1 i
  kill -TERM -- "-$g" 2>/dev/null || return 0
  for ((i = 0; i < 30; i++)); do kill -0 -- "-$g" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL -- "-$g" 2>/dev/null
}

fail_with_log() { # name logfile message
  warn "$3"
  [ -f "$2" ] && { warn "last lines of $2:"; tail -n 15 "$2" >&"${ERR_FD:-2}"; }
  return 1
}

http_code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$@" 2>/dev/null; }

# ---- the pieces ----

secret() {
  [ -n "${JWT_SECRET:-}" ] && return 0
  local f=$VAR/jwt-secret
  if [ ! -s "$f" ]; then
    (umask 077 && head -c 48 /dev/urandom | od -An -v -tx1 | tr -d ' \n' >"$f.tmp" && mv "$f.tmp" "$f") ||
      { warn "cannot write $f"; return 1; }
    say "generated a JWT secret in $f"
  fi
  chmod 600 "$f"
  JWT_SECRET=$(cat "$f")
  export JWT_SECRET
}

db_start() {
  if [ "$PRIVATE_DB" != 1 ]; then
    say "database: ${CHAT_DB_SOCKET:-${CHAT_DB_HOST}:${CHAT_DB_PORT:-3306}} (not managed here)"
    return 0
  fi
  if ! bash deploy/mariadb.sh status >/dev/null 2>&1; then
    say "starting the private MariaDB ($RUN/mariadb.sock)"
    bash deploy/mariadb.sh start || return 1
    touch "$RUN/stack.mariadb" # we started it, so `stop` stops it
  else
    bash deploy/mariadb.sh start || return 1 # running: re-applies its accounts (CHAT_DB_NAME's grant)
  fi
  local user pwfile
  read -r user pwfile < <(bash deploy/mariadb.sh service-user)
  [ -s "$pwfile" ] || { warn "no password for the database account $user in $pwfile"; return 1; }
  CHAT_DB_PASSWORD=$(cat "$pwfile")
  export CHAT_DB_USER=$user CHAT_DB_PASSWORD
}

# The admin step: schema, migrations, sample data. On another server it runs only when the schema is
# missing or old, so that a least-privilege CHAT_DB_USER is all `make start` needs.
kb_setup() {
  [ -x "$BIN/chat-kb" ] || { warn "build/bin/chat-kb is missing (make): database not set up"; return 0; }
  if [ "$PRIVATE_DB" != 1 ] && "$BIN/chat-kb" check >>"$LOG/chat-kb.log" 2>&1; then
    say "database schema is current (chat-kb check): no set-up"
    return 0
  fi
  say "database set-up (chat-kb setup; log in $LOG/chat-kb.log)"
  env "${ADMIN_ENV[@]}" "$BIN/chat-kb" setup >>"$LOG/chat-kb.log" 2>&1 && return 0
  if [ "$PRIVATE_DB" != 1 ] && [ ${#ADMIN_ENV[@]} = 0 ]; then
    fail_with_log chat-kb "$LOG/chat-kb.log" \
      "chat-kb setup failed: it needs DDL rights (CHAT_DB_ADMIN_USER / CHAT_DB_ADMIN_PASSWORD name an admin account)"
  else
    fail_with_log chat-kb "$LOG/chat-kb.log" "chat-kb setup failed"
  fi
}

demo_token() {
  rm -f "$VAR/demo-token"
  if [ "${JWT_ALGORITHM:-HS256}" != HS256 ]; then warn "JWT_ALGORITHM is not HS256: no demo token"; return 0; fi
  [ -x "$BIN/chat-token" ] || { warn "build/bin/chat-token is missing (make): no demo token"; return 0; }
  local t
  if ! t=$("$BIN/chat-token" --sub demo-user --email demo@example.com --name "Demo User" --ttl 86400) || [ -z "$t" ]; then
    warn "chat-token failed: no demo token"; return 0
  fi
  (umask 077 && printf '%s\n' "$t" >"$VAR/demo-token")
}

start_worker() {
  [ -x "$BIN/chat-worker" ] || { warn "build/bin/chat-worker is missing (make): no LLM workers"; return 0; }
  if p=$(pid_of chat-worker chat-worker); then say "chat-worker already running (pid $p)"; return 0; fi
  spawn chat-worker chat-worker "$BIN/chat-worker"
  sleep 0.3
  kill -0 "$(cat "$RUN/chat-worker.pid")" 2>/dev/null || fail_with_log chat-worker "$LOG/chat-worker.log" "chat-worker exited at start"
}

# Streamer i (1..CHAT_STREAMERS): its own socket and worker endpoint, and the shared direct port.
start_streamer() { # i
  local i=$1 name=${ST_NAMES[$1 - 1]} sock=${ST_SOCKS[$1 - 1]} listen
  [ -x "$BIN/chat-streamer" ] || { warn "build/bin/chat-streamer is missing (make): no /ws/chat"; return 0; }
  if p=$(pid_of "$name" chat-streamer); then say "$name already running (pid $p)"; return 0; fi
  rm -f "$sock"
  listen=unix:$sock${DIRECT_LISTEN:+,$DIRECT_LISTEN}
  CHAT_STREAMER_LISTEN=$listen CHAT_ZMQ_ENDPOINT=${ST_EPS[$i - 1]} spawn "$name" "$name" "$BIN/chat-streamer"
  # kill -0 on the pid just spawned, not pid_of: until setsid has exec'd, its command line is still this
  # script's, and pid_of would call a starting streamer gone.
  local n spawned
  spawned=$(cat "$RUN/$name.pid")
  for ((n = 0; n < 200; n++)); do
    kill -0 "$spawned" 2>/dev/null ||
      { fail_with_log "$name" "$LOG/$name.log" "$name exited at start"; return 1; }
    [ "$(http_code --unix-socket "$sock" http://localhost/status)" = 200 ] && return 0
    sleep 0.1
  done
  fail_with_log "$name" "$LOG/$name.log" "$name did not answer /status within 20 s"
}

start_streamers() {
  local i
  for ((i = 1; i <= CHAT_STREAMERS; i++)); do start_streamer "$i" || return 1; done
}

# The streamers to stop or report: ST_NAMES, and any other one a pid file names (a stack started with a
# larger CHAT_STREAMERS than this shell's, its supervisor gone).
all_streamers() {
  local c f
  for c in "${ST_NAMES[@]}"; do echo "$c"; done
  for f in "$RUN"/chat-streamer-*.pid; do
    [ -f "$f" ] || continue
    c=$(basename "$f" .pid)
    [[ " ${ST_NAMES[*]} " == *" $c "* ]] || echo "$c"
  done
}

# A name of ST_NAMES -> its index from 1 (for sv_restart)
streamer_index() { local i; for ((i = 1; i <= CHAT_STREAMERS; i++)); do [ "${ST_NAMES[$i - 1]}" = "$1" ] && echo "$i" && return 0; done; return 1; }

start_lighttpd() {
  command -v lighttpd >/dev/null || { warn "lighttpd is not installed (make deps)"; return 1; }
  [ -x "$BIN/chat-fcgi" ] || { warn "build/bin/chat-fcgi is missing (make): lighttpd cannot start its FastCGI pool"; return 1; }
  if p=$(pid_of lighttpd lighttpd); then say "lighttpd already running (pid $p)"; return 0; fi
  lighttpd -tt -f "$ROOT/lighttpd.conf" >"$LOG/lighttpd-check.log" 2>&1 ||
    { fail_with_log lighttpd "$LOG/lighttpd-check.log" "lighttpd.conf does not validate"; return 1; }
  # Every WebSocket costs lighttpd two descriptors: let it use what the hard limit allows.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  # lighttpd's own messages go to lighttpd-error.log; its stderr, inherited by the FastCGI responders,
  # is theirs.
  # -D: no fork, so the pid spawn records is lighttpd's (its master process).
  spawn lighttpd chat-fcgi lighttpd -D -f "$ROOT/lighttpd.conf"
}

# chat-guard beside lighttpd: closes the front door's connections whose request trickles in longer than
# CHAT_HEAD_TIMEOUT_S (slowloris). It finds lighttpd by the port, so the order of the two does not matter.
start_guard() {
  [ -x "$BIN/chat-guard" ] || { warn "build/bin/chat-guard is missing (make): no bound on a request's time"; return 0; }
  if p=$(pid_of chat-guard chat-guard); then say "chat-guard already running (pid $p)"; return 0; fi
  spawn chat-guard chat-guard "$BIN/chat-guard"
  kill -0 "$(cat "$RUN/chat-guard.pid")" 2>/dev/null || fail_with_log chat-guard "$LOG/chat-guard.log" "chat-guard exited at start"
}

# Waits for /health; 200 only when every component was found. Returns 1 when lighttpd never answers.
wait_ready() {
  local want_all=1 code="" i
  for b in chat-worker chat-streamer; do [ -x "$BIN/$b" ] || want_all=0; done
  for ((i = 0; i < 300; i++)); do
    pid_of lighttpd lighttpd >/dev/null ||
      { fail_with_log lighttpd "$LOG/lighttpd-error.log" "lighttpd exited at start"; return 1; }
    code=$(http_code "$BASE/health")
    [ "$code" = 200 ] && return 0
    [ "$want_all" = 0 ] && [ -n "$code" ] && [ "$code" != 000 ] && break
    sleep 0.1
  done
  if [ -z "$code" ] || [ "$code" = 000 ]; then
    fail_with_log lighttpd "$LOG/lighttpd-error.log" "lighttpd does not answer on $BASE"
    return 1
  fi
  warn "not fully healthy (GET /health -> $code): $(curl -s -m 2 "$BASE/health")"
  [ "$want_all" = 0 ] # degraded is expected only when a program is missing
}

start_all() {
  mkdir -p "$RUN" "$LOG" "$VAR/tmp"
  # Each process keeps its figures in a file here; GET /metrics sums them. A new stack starts from zero.
  rm -rf "$CHAT_METRICS_DIR" && mkdir -m 0700 -p "$CHAT_METRICS_DIR"
  command -v curl >/dev/null || { warn "curl is not installed (make deps)"; return 1; }
  secret || return 1
  db_start || return 1
  kb_setup || return 1
  # The demo token is always minted (scripts and benchmarks read it); CHAT_DEMO decides whether
  # GET /api/v1/demo-token hands it out.
  demo_token
  # Only on a loopback bind: on any other address anyone who reaches the port would get a valid token.
  local loopback=0
  case "$CHAT_BIND" in 127.* | localhost | ::1 | "[::1]") loopback=1 ;; esac
  if [ "${CHAT_DEMO:-1}" != 1 ]; then
    unset CHAT_DEMO_TOKEN_FILE
  elif [ "$loopback" != 1 ]; then
    unset CHAT_DEMO_TOKEN_FILE
    warn "demo token endpoint off: CHAT_BIND=$CHAT_BIND is not a loopback address (GET /api/v1/demo-token answers 404)"
  elif [ -s "$VAR/demo-token" ]; then
    export CHAT_DEMO_TOKEN_FILE=${CHAT_DEMO_TOKEN_FILE:-$VAR/demo-token}
    say "demo token endpoint on, for the loopback bind $CHAT_BIND only: GET /api/v1/demo-token (CHAT_DEMO=0 turns it off)"
  fi
  start_worker || return 1
  start_streamers || return 1
  start_lighttpd || return 1
  start_guard || return 1
  wait_ready || return 1
}

# Nothing in flight is cut: lighttpd stops accepting first (SIGINT, its graceful shutdown: requests in
# flight go on), the streamer drains (answers finish within CHAT_SHUTDOWN_GRACE_S, then 1001, through the
# still-running lighttpd), lighttpd then exits by itself once its REST answers are delivered and the
# WebSockets closed (within CHAT_FRONT_DRAIN_S), and the workers go last: they produce the streamed answers.
stop_all() {
  local front=""
  if front=$(pid_of lighttpd lighttpd); then say "lighttpd stops accepting (pid $front)"; kill -INT "$front" 2>/dev/null; fi
  # Every streamer drains at once (SIGTERM to all, then each waited for): one grace period, not N.
  local c p streamers
  streamers=$(all_streamers)
  for c in $streamers; do if p=$(pid_of "$c" chat-streamer); then say "$c drains (pid $p)"; kill -TERM "$p" 2>/dev/null; fi; done
  for c in $streamers; do stop_proc "$c" chat-streamer $(( ${CHAT_SHUTDOWN_GRACE_S:-10} + 5 )) -; done
  [ -n "$front" ] && stop_group lighttpd "$front" $(( CHAT_FRONT_DRAIN_S + 5 ))
  stop_proc lighttpd lighttpd 5
  stop_proc chat-guard chat-guard 5
  stop_proc chat-worker chat-worker $(( ${CHAT_SHUTDOWN_GRACE_S:-10} + 15 ))
  rm -f "${ST_SOCKS[@]}" "${CHAT_STREAMER_SOCKET%.sock}"-[0-9]*.sock
  if [ -f "$RUN/stack.mariadb" ]; then
    say "stopping the private MariaDB"
    bash deploy/mariadb.sh stop
    rm -f "$RUN/stack.mariadb"
  fi
}

print_info() {
  local ws="${PUBLIC/http:/ws:}/ws/chat"
  [ "$CHAT_STREAMERS" = 1 ] || ws+="   ($CHAT_STREAMERS streamers)"
  [ -z "$DIRECT_LISTEN" ] || ws+=$'\n'"  Direct      ws://$DIRECT_LISTEN/ws/chat   (every streamer's shared port)"
  cat <<EOF

  Test page   $PUBLIC/ws/test
  WebSocket   $ws
  REST        POST $PUBLIC/api/v1/chat   (Authorization: Bearer <token>)
  Health      $PUBLIC/health
  Logs        $LOG/
EOF
  if [ -s "$VAR/demo-token" ]; then
    printf '  Demo JWT    (24 h, also in %s)\n\n%s\n\n' "$VAR/demo-token" "$(cat "$VAR/demo-token")"
  else
    echo
  fi
}

status() {
  local rc=0 p
  if p=$(supervisor_pid); then printf '%-16s running (pid %s)\n' supervisor "$p"; else printf '%-16s none\n' supervisor; fi
  local streamers=""
  for c in $(all_streamers); do streamers+=" $c:chat-streamer"; done
  for c in chat-worker:chat-worker $streamers lighttpd:lighttpd chat-guard:chat-guard; do
    if p=$(pid_of "${c%%:*}" "${c#*:}"); then
      printf '%-16s running (pid %s)\n' "${c%%:*}" "$p"
    else
      printf '%-16s stopped\n' "${c%%:*}"; rc=3
    fi
  done
  if [ "$PRIVATE_DB" = 1 ]; then
    printf '%-16s %s\n' mariadb "$(bash deploy/mariadb.sh status 2>/dev/null || echo stopped)"
  else
    printf '%-16s external (%s)\n' mariadb "${CHAT_DB_SOCKET:-${CHAT_DB_HOST}}"
  fi
  if pid_of lighttpd lighttpd >/dev/null; then
    printf '%-16s %s %s\n' health "$(http_code "$BASE/health")" "$(curl -s -m 2 "$BASE/health")"
  fi
  return $rc
}

# ---- supervision: `run` in the foreground, `start` the same in the background ----

# A process of the stack that is gone: the supervisor restarts it after a back-off that doubles from 1 s
# to 30 s while it keeps dying young (under 60 s), with a log line each time. A lighttpd whose master
# died leaves worker processes and FastCGI responders holding the port: its process group goes first.
# The private MariaDB is supervised when this stack started it.
declare -A SV_BACKOFF SV_DUE SV_SINCE
now_ms() { echo $(( ${EPOCHREALTIME/./} / 1000 )); }

supervised() { # the names, in start order
  [ -f "$RUN/stack.mariadb" ] && echo mariadb
  local c; for c in chat-worker "${ST_NAMES[@]}" lighttpd chat-guard; do [ -f "$RUN/$c.pid" ] && echo "$c"; done
}

sv_alive() { # name
  case $1 in
    mariadb) kill -0 "$(cat "$RUN/mariadb/mariadb.pid" 2>/dev/null)" 2>/dev/null ;;
    chat-streamer*) pid_of "$1" chat-streamer >/dev/null ;;
    *) pid_of "$1" "$1" >/dev/null ;;
  esac
}

sv_restart() { # name
  case $1 in
    mariadb) bash deploy/mariadb.sh start 2>&3 ;;
    chat-worker) start_worker ;;
    chat-streamer*) start_streamer "$(streamer_index "$1")" ;;
    lighttpd) start_lighttpd && wait_ready ;;
    chat-guard) start_guard ;;
  esac
}

# One pass over the supervised processes.
sv_check() {
  local c now p st lived
  now=$(now_ms)
  for c in $(supervised); do
    if sv_alive "$c"; then
      [ -n "${SV_SINCE[$c]:-}" ] || SV_SINCE[$c]=$now
      [ $(( now - SV_SINCE[$c] )) -ge 60000 ] && SV_BACKOFF[$c]=1000
      continue
    fi
    if [ -z "${SV_DUE[$c]:-}" ]; then # just found dead
      p=$(cat "$RUN/$c.pid" 2>/dev/null || cat "$RUN/mariadb/mariadb.pid" 2>/dev/null)
      st="exited"
      if [ "$c" != mariadb ] && [[ "$p" =~ ^[0-9]+$ ]]; then
        wait "$p" 2>/dev/null; st=$?
        if [ "$st" = 127 ]; then st="exited"; elif [ "$st" -gt 128 ]; then st="killed by signal $((st - 128))"; else st="exited with $st"; fi
      fi
      lived=$(( (now - ${SV_SINCE[$c]:-$now}) / 1000 ))
      SV_BACKOFF[$c]=${SV_BACKOFF[$c]:-1000}
      warn "$c (pid ${p:-?}) $st after ${lived}s; restarting in $(( SV_BACKOFF[$c] / 1000 ))s"
      [ "$c" = lighttpd ] && [[ "$p" =~ ^[0-9]+$ ]] && kill_group "$p"
      SV_DUE[$c]=$(( now + SV_BACKOFF[$c] ))
      SV_BACKOFF[$c]=$(( SV_BACKOFF[$c] * 2 > 30000 ? 30000 : SV_BACKOFF[$c] * 2 ))
      continue
    fi
    [ "$now" -ge "${SV_DUE[$c]}" ] || continue
    if sv_restart "$c" && sv_alive "$c"; then
      say "$c restarted (pid $(cat "$RUN/$c.pid" 2>/dev/null || cat "$RUN/mariadb/mariadb.pid"))"
      unset "SV_DUE[$c]"; SV_SINCE[$c]=$(now_ms)
    else
      warn "$c did not restart; next try in $(( SV_BACKOFF[$c] / 1000 ))s"
      SV_DUE[$c]=$(( $(now_ms) + SV_BACKOFF[$c] ))
      SV_BACKOFF[$c]=$(( SV_BACKOFF[$c] * 2 > 30000 ? 30000 : SV_BACKOFF[$c] * 2 ))
    fi
  done
}

# SIGHUP to the worker supervisor (it passes it on to its workers) and to lighttpd's FastCGI responders.
reload() {
  local p kid n=0
  if p=$(pid_of chat-worker chat-worker); then kill -HUP "$p" && n=$((n + 1)); fi
  if p=$(pid_of lighttpd lighttpd); then
    for kid in $(pgrep -P "$p" -x chat-fcgi); do kill -HUP "$kid" && n=$((n + 1)); done
  fi
  say "asked $n processes to reload the agents' prompts and model settings"
}

# ---- logs: every process reopens its log on SIGHUP; the supervisor rotates what grows too big ----

# After the logs were moved away (logrotate, rotate_logs): each process starts a new file. The
# programs reopen their CHAT_LOG_FILE, lighttpd its error and access logs (its whole process group
# gets the signal: master, workers, responders), MariaDB its error log, the supervisor stack.log.
reopen_logs() {
  local c p
  for c in chat-worker "${ST_NAMES[@]}" lighttpd chat-guard; do
    if p=$(pid_of "$c" "${c%-[0-9]*}"); then kill -HUP -- "-$p" 2>/dev/null; fi
  done
  if [ "$PRIVATE_DB" = 1 ] && bash deploy/mariadb.sh status >/dev/null 2>&1; then bash deploy/mariadb.sh reopen-log; fi
  if p=$(supervisor_pid) && [ "$p" != $$ ]; then
    kill -USR1 "$p" 2>/dev/null
  elif [ "${SV_MODE:-}" = bg ]; then # the background supervisor itself (rotate_logs)
    exec >>"$LOG/stack.log" 3>&1
  fi
  return 0
}

# Run by the supervisor every 10 s: a log over CHAT_LOG_MAX_MB (default 100; 0 = never) becomes
# <log>.1 (the previous .1 becomes .2, the older one goes), then every process reopens.
rotate_logs() {
  local max_mb=${CHAT_LOG_MAX_MB:-100} f moved=0
  [[ "$max_mb" =~ ^[0-9]+$ ]] && [ "$max_mb" -gt 0 ] || return 0
  for f in "$LOG"/*.log; do
    [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt $(( max_mb * 1048576 )) ] || continue
    [ -f "$f.1" ] && mv -f "$f.1" "$f.2"
    mv -f "$f" "$f.1"
    say "rotated $f (over ${max_mb} MB)"
    moved=1
  done
  [ "$moved" = 0 ] || reopen_logs
}

# The supervisor's own pid file: `stack.sh stop` from any shell asks it to stop the stack.
supervisor_pid() { pid_of stack "deploy/stack.sh"; }

# Starts everything and supervises it until SIGINT/SIGTERM, then stops everything in order.
supervise() { # mode: run (foreground, prints the URLs) | bg (background, tells `start` when ready)
  local mode=$1 p
  SV_MODE=$mode
  if p=$(supervisor_pid) && [ "$p" != $$ ]; then
    warn "the stack already runs (supervisor pid $p): deploy/stack.sh stop first"; exit 1
  fi
  # A closed terminal or pipe (`make run | tee log` and Ctrl-C) must not kill this script halfway through
  # stopping: writes to a vanished stdout fail instead.
  trap '' PIPE
  trap 'trap "" INT TERM HUP; echo; say "stopping"; stop_all; rm -f "$RUN/stack.pid" "$RUN/stack.ready"; exit 0' INT TERM
  if [ "$mode" = run ]; then
    trap 'trap "" INT TERM HUP; say "terminal closed: stopping"; stop_all; rm -f "$RUN/stack.pid" "$RUN/stack.ready"; exit 0' HUP
  else
    # reopen_logs: stack.log, the background supervisor's stdout and message fd, moved away.
    trap 'exec >>"$LOG/stack.log" 3>&1; say "log reopened"' USR1 HUP
  fi
  mkdir -p "$RUN" "$LOG"
  echo $$ >"$RUN/stack.pid"
  rm -f "$RUN/stack.ready"
  if ! start_all; then
    warn "start failed; stopping what was started"
    stop_all; rm -f "$RUN/stack.pid"; exit 1
  fi
  touch "$RUN/stack.ready"
  if [ "$mode" = run ]; then
    print_info
    say "running in the foreground; Ctrl-C stops everything"
  else
    say "running (supervisor pid $$)"
  fi
  # The loop's stderr is /dev/null: bash reports each child killed by a signal there ("line N: PID
  # Killed ..."), and sv_check says it better; the script's own messages go to the real stderr (fd 3).
  exec 3>&2
  ERR_FD=3
  local n=0
  while :; do
    sleep 0.5
    sv_check
    (( ++n % 20 )) || rotate_logs
  done 2>/dev/null
}

# `start`: the supervisor in the background; returns once the stack is healthy (0) or start failed (1).
start_bg() {
  local p i from
  mkdir -p "$RUN" "$LOG"
  if p=$(supervisor_pid); then say "already running (supervisor pid $p)"; print_info; return 0; fi
  from=$(stat -c %s "$LOG/stack.log" 2>/dev/null || echo 0)
  setsid bash "$ROOT/deploy/stack.sh" supervise >>"$LOG/stack.log" 2>&1 </dev/null &
  p=$!
  for ((i = 0; i < 1800; i++)); do
    if [ -f "$RUN/stack.ready" ]; then
      tail -c +"$((from + 1))" "$LOG/stack.log"
      print_info
      return 0
    fi
    kill -0 "$p" 2>/dev/null || break
    sleep 0.1
  done
  tail -c +"$((from + 1))" "$LOG/stack.log" >&2
  kill -0 "$p" 2>/dev/null && { warn "not ready after 180 s; stopping"; kill -TERM "$p"; wait "$p"; }
  return 1
}

# `stop`: through the supervisor when there is one (it stops everything, in order), else directly.
stop_cmd() {
  local p i bound from
  if p=$(supervisor_pid); then
    from=$(stat -c %s "$LOG/stack.log" 2>/dev/null || echo 0)
    kill -TERM "$p" 2>/dev/null
    bound=$(( ${CHAT_SHUTDOWN_GRACE_S:-10} * 2 + CHAT_FRONT_DRAIN_S + 90 ))
    for ((i = 0; i < bound * 10; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && { warn "the supervisor did not stop within ${bound}s"; kill -KILL "$p" 2>/dev/null; }
    tail -c +"$((from + 1))" "$LOG/stack.log" 2>/dev/null | grep -av '^$'
  fi
  stop_all # whatever is left (a supervisor killed hard, processes started by an earlier version)
  rm -f "$RUN/stack.pid" "$RUN/stack.ready"
}

token() { # [sub email name ttl]
  mkdir -p "$VAR"
  secret || exit 1
  [ -x "$BIN/chat-token" ] || { warn "build/bin/chat-token is missing (make)"; exit 1; }
  exec "$BIN/chat-token" --sub "${1:-demo-user}" --email "${2:-demo@example.com}" --name "${3:-Demo User}" --ttl "${4:-3600}"
}

kb_import() { # dir
  if [ -z "${1:-}" ] || [ ! -d "$1" ]; then warn "usage: make kb-import DIR=path/to/markdown"; exit 2; fi
  [ -x "$BIN/chat-kb" ] || { warn "build/bin/chat-kb is missing (make)"; exit 1; }
  mkdir -p "$RUN" "$LOG"
  db_start || exit 1
  exec env "${ADMIN_ENV[@]}" "$BIN/chat-kb" import "$1"
}

case "${1:-}" in
  run) supervise run ;;
  supervise) supervise bg ;;
  start) start_bg ;;
  stop) stop_cmd ;;
  restart) stop_cmd; start_bg ;;
  reload) reload ;;
  status) status ;;
  reopen-logs) reopen_logs ;;
  token) shift; token "$@" ;;
  kb-import) shift; kb_import "$@" ;;
  *) echo "usage: $0 run|start|stop|restart|reload|status|reopen-logs|token [SUB EMAIL NAME TTL]|kb-import DIR" >&2; exit 2 ;;
esac
