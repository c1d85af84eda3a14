# Shared by the operations tests in tests/ops/ (sourced): TAP-like output that tests/run.sh counts, one
# "ok - ..." or "not ok - ..." line per check, and small helpers around the running test stack.
# Each script runs with tests/run.sh's environment (CHAT_ROOT, CHAT_VAR, CHAT_PORT, the DB variables).
# shellcheck shell=bash
set -uo pipefail
ROOT=${CHAT_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
cd "$ROOT" || exit 1
VAR=${CHAT_VAR:-$ROOT/var/test}
RUN=$VAR/run
LOG=$VAR/log
BIN=$ROOT/build/bin
PORT=${CHAT_PORT:-18000}
BASE=http://127.0.0.1:$PORT
FAILS=0
# The scripts run several answers as one user: the per-user limits (on by default) are off unless the
# caller set them, as tests/run.sh does for the whole suite.
export CHAT_USER_MAX_ANSWERS=${CHAT_USER_MAX_ANSWERS:-0} CHAT_USER_RATE_PER_MIN=${CHAT_USER_RATE_PER_MIN:-0}

ok() { echo "ok - $*"; }
not_ok() { echo "not ok - $*"; FAILS=$((FAILS + 1)); }
# check "description" command...: ok when the command succeeds
check() { local d=$1; shift; if "$@"; then ok "$d"; else not_ok "$d"; fi; }
# check_not "description" command...: ok when the command fails
check_not() { local d=$1; shift; if "$@"; then not_ok "$d"; else ok "$d"; fi; }
quiet() { "$@" >/dev/null 2>&1; }
finish() { exit $((FAILS > 0)); }

# pid of a stack process from its pid file (empty when it does not run)
stack_pid() { local p; p=$(cat "$RUN/$1.pid" 2>/dev/null) && kill -0 "$p" 2>/dev/null && echo "$p"; }
http_code() { curl -s -o /dev/null -m "${2:-3}" -w '%{http_code}' "$1" 2>/dev/null; }
# waits until GET url answers want (default 200), up to seconds (default 20)
wait_code() { # url [want] [seconds]
  local i
  for ((i = 0; i < ${3:-20} * 10; i++)); do [ "$(http_code "$1" 1)" = "${2:-200}" ] && return 0; sleep 0.1; done
  return 1
}
# deploy/stack.sh for a stack of a script's own, with its own private MariaDB: own_stack DIR [VAR=value...]
# -- ARGS. (tests/run.sh's CHAT_DB_* name the test database, which would make it an "existing server".)
own_stack() {
  local dir=$1; shift
  local envs=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  env -u CHAT_DB_SOCKET -u CHAT_DB_HOST -u CHAT_DB_USER -u CHAT_DB_PASSWORD -u CHAT_DB_NAME \
    CHAT_VAR="$dir" CHAT_DEMO=0 "${envs[@]}" bash deploy/stack.sh "$@"
}
# Starts a script's own stack or ends the script: own_stack_start DIR OUT [VAR=value...] runs
# `own_stack DIR [VAR=value...] -- start` with its output in OUT; when it fails: "not ok - the stack
# starts", the output (without the demo token), the stack stopped, and the script's end.
own_stack_start() {
  local dir=$1 out=$2; shift 2
  own_stack "$dir" "$@" -- start >"$out" 2>&1 && return 0
  not_ok "the stack starts"
  grep -v '^eyJ' "$out"
  own_stack "$dir" -- stop >/dev/null 2>&1
  finish
}
# A token for a script's own stack, signed with its secret, in a file only its owner reads:
# own_token DIR SUB EMAIL FILE [TTL_S (default 300)]
own_token() {
  (umask 077 && JWT_SECRET=$(cat "$1/jwt-secret") "$BIN/chat-token" --sub "$2" --email "$3" --ttl "${5:-300}" >"$4")
}
# A JWT for the stack, signed with its secret: mint_token SUB [EMAIL]
mint_token() {
  JWT_SECRET=${JWT_SECRET:-$(cat "$VAR/jwt-secret")} "$BIN/chat-token" --sub "$1" --email "${2:-$1@example.com}" \
    --name "$1" --ttl 600
}
