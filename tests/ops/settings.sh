#!/usr/bin/env bash
# Every setting reaches every process, and `make start` has the development defaults of `make run`.
# - Every variable the services read (getenv, chat_config's table) is documented in
#   deploy/chat.env.example, so that the documented list is the programs' list.
# - A stack started with every documented variable set: each one is in the environment of the streamer,
#   of every worker process and of every FastCGI responder (lighttpd passes them on).
# - CHAT_CUSTOMER_ACCESS=any: REST and WebSocket both accept a customer that is not the user's own.
# - Started without CHAT_TOKEN_DELAY_MS / CHAT_CUSTOMER_ACCESS, `start` paces tokens at 25 ms and allows
#   any customer, like `run` (tests/ops/make_run.sh checks `make run`).
# Its own stack in $CHAT_VAR/own on CHAT_PORT.
source "$(dirname "$0")/lib.sh"
OWN=$VAR/own
EXAMPLE=deploy/chat.env.example

code_vars=$( { grep -ohE '(^|[^A-Z_])(STR|INT)\([a-z_]+, "[A-Z][A-Z0-9_]+"' shared/chat_config.c
  grep -rohE '(getenv|chat_config_env_int)\("[A-Z][A-Z0-9_]+"' shared fcgi streamer worker guard; } |
  grep -oE '"[A-Z][A-Z0-9_]+"' | tr -d '"' | sort -u)
doc_vars=$(grep -oE '^#?[A-Z][A-Z0-9_]+=' "$EXAMPLE" | tr -d '#=' | sort -u)
missing=$(comm -23 <(echo "$code_vars") <(echo "$doc_vars") | tr '\n' ' ')
check "every variable the services read is documented in $EXAMPLE (undocumented: ${missing:-none})" test -z "$missing"

# The documented default of each variable (a commented line), the real paths for the layout ones; the
# ones stack.sh sets itself (port, sockets, database account, secret) keep its values.
STACK_SET=" CHAT_ROOT CHAT_VAR CHAT_BIND CHAT_PORT CHAT_FCGI_PROCS CHAT_STREAMER_SOCKET CHAT_STREAMER_LISTEN
 CHAT_ZMQ_ENDPOINT CHAT_WS_IDLE_S CHAT_FRONT_DRAIN_S CHAT_HEAD_IDLE_S CHAT_DB_SOCKET CHAT_DB_USER CHAT_DB_PASSWORD JWT_SECRET
 CHAT_DEMO_TOKEN_FILE CHAT_LOG_LEVEL CHAT_LOG_FILE CHAT_METRICS_DIR CHAT_STREAMER_SOCKETS "
envs=()
for v in $doc_vars; do
  case "$STACK_SET" in *" $v "*) continue ;; esac
  case $v in
    CHAT_SQL_DIR) val=$ROOT/sql ;;
    CHAT_PROMPTS_DIR) val=$ROOT/prompts ;;
    CHAT_CUSTOMER_ACCESS) val=any ;;
    CHAT_DB_HOST) val= ;; # set, but empty: the private server's socket still wins
    *) val=$(sed -n "s/^#$v=//p" "$EXAMPLE" | head -1) ;;
  esac
  envs+=("$v=$val")
done
own_stack "$OWN" -- stop >/dev/null 2>&1
own_stack "$OWN" CHAT_DEMO=1 "${envs[@]}" -- start >"$LOG/ops-settings-start.out" 2>&1 ||
  { not_ok "the stack starts with every setting"; grep -v '^eyJ' "$LOG/ops-settings-start.out"; own_stack "$OWN" -- stop; finish; }

# name=value pairs each process must hold: the streamer's view of every documented variable
streamer=$(cat "$OWN/run/chat-streamer.pid")
want=()
streamer_env=$(tr '\0' '\n' <"/proc/$streamer/environ")
for v in $doc_vars; do
  line=$(grep -m1 "^$v=" <<<"$streamer_env")
  [ "$v" = CHAT_LOG_FILE ] && [ -n "$line" ] && line="$v=" # one file per program: the name must be there
  [ -n "$line" ] && want+=("$line") || want+=("$v=<missing>")
done
missing_in() { # pid -> the documented settings it lacks (or holds with another value)
  local w out="" envs
  # read once, then searched: `tr | grep -q` fails under pipefail when grep stops before tr has written
  # everything (SIGPIPE), which a large environment makes likely
  envs=$(tr '\0' '\n' <"/proc/$1/environ")
  for w in "${want[@]}"; do
    if [[ "$w" == *= ]]; then grep -q "^$w" <<<"$envs" || out+="${w%%=*} "
    else grep -qxF -- "$w" <<<"$envs" || out+="${w%%=*} "; fi
  done
  echo "$out"
}
m=$(missing_in "$streamer")
check "every documented setting reaches the streamer (missing: ${m:-none})" test -z "$m"
sup=$(cat "$OWN/run/chat-worker.pid")
workers=$(pgrep -P "$sup" | tr '\n' ' ')
m=""; for p in $workers; do m+=$(missing_in "$p"); done
check "every documented setting reaches every worker process (${workers:-none}; missing: ${m:-none})" \
  test -n "$workers" -a -z "$m"
front=$(cat "$OWN/run/lighttpd.pid")
responders=$(pgrep -g "$front" -x chat-fcgi | tr '\n' ' ')
m=""; for p in $responders; do m+=$(missing_in "$p"); done
check "every documented setting reaches every FastCGI responder (${responders:-none}; missing: ${m:-none})" \
  test -n "$responders" -a -z "$m"

# CHAT_CUSTOMER_ACCESS=any, seen the same way by REST and WebSocket: a customer who is not the user.
tok=$OWN/token
own_token "$OWN" staff-1 staff@example.com "$tok"
code=$(curl -s -o "$OWN/rest.json" -m 30 -w '%{http_code}' -H "Authorization: Bearer $(cat "$tok")" \
  -H 'Content-Type: application/json' -d '{"message":"When is my next service?","customer_id":"cust-1001"}' "$BASE/api/v1/chat")
check "REST accepts customer cust-1001 (HTTP $code)" test "$code" = 200
"$BIN/chat-ws" --url "ws://127.0.0.1:$PORT/ws/chat" --token-file "$tok" --customer cust-1001 --timeout 30 \
  "When is my next service?" >"$OWN/ws.json" 2>&1
check "WebSocket accepts customer cust-1001" grep -q '"type":"complete"' "$OWN/ws.json"
own_stack "$OWN" -- stop >/dev/null 2>&1

# `start` with neither variable set: the development defaults.
own_stack "$OWN" -- start >"$LOG/ops-settings-start.out" 2>&1 || not_ok "the stack starts with the defaults"
streamer=$(cat "$OWN/run/chat-streamer.pid")
env_of() { tr '\0' '\n' <"/proc/$1/environ" | sed -n "s/^$2=//p"; }
check "start paces tokens at 25 ms by default ($(env_of "$streamer" CHAT_TOKEN_DELAY_MS))" \
  test "$(env_of "$streamer" CHAT_TOKEN_DELAY_MS)" = 25
check "start allows any customer by default ($(env_of "$streamer" CHAT_CUSTOMER_ACCESS))" \
  test "$(env_of "$streamer" CHAT_CUSTOMER_ACCESS)" = any
own_stack "$OWN" -- stop >/dev/null 2>&1
finish
