#!/usr/bin/env bash
# Several streamers in one stack (CHAT_STREAMERS=2, CHAT_DIRECT_PORT): both get connections through
# lighttpd (proxy.balance over their sockets) and on the shared direct port (SO_REUSEPORT), /metrics and
# /health count both, an answer streams on each, clients dropped mid-answer on one resume on the other
# (chat-storm: every answer whole, exactly once), a streamer killed with kill -9 is restarted by the
# supervisor (lighttpd sending new WebSockets to the other meanwhile), and `stop` drains both (answers streaming on each complete). Its own stack in
# $CHAT_VAR/own (own private MariaDB) on CHAT_PORT, the direct port CHAT_PORT + 1, tokens paced at 40 ms
# so that an answer lasts a few seconds.
source "$(dirname "$0")/lib.sh"
OWN=$VAR/own
DPORT=$((PORT + 1))
rm -rf "$OWN/out"
mkdir -p "$OWN/out"
stack() { own_stack "$OWN" CHAT_STREAMERS=2 CHAT_DIRECT_PORT="$DPORT" CHAT_TOKEN_DELAY_MS=40 -- "$@"; }
stack stop >/dev/null 2>&1
stack start >"$OWN/out/start.out" 2>&1 ||
  { not_ok "the stack starts with 2 streamers"; grep -v '^eyJ' "$OWN/out/start.out"; stack stop >/dev/null 2>&1; finish; }
SOCK1=$OWN/run/streamer.sock SOCK2=$OWN/run/streamer-2.sock
JWT_SECRET=$(cat "$OWN/jwt-secret")
export JWT_SECRET
tok=$OWN/token
(umask 077 && "$BIN/chat-token" --sub streamers-user --email st@example.com --ttl 600 >"$tok")
Q="What is the engine power of the Seawind 250?"

st=$(stack status 2>&1)
check "status lists both streamers running" quiet grep -qE '^chat-streamer-2 +running' <<<"$st"
health=$(curl -s -m 3 "$BASE/health")
check "/health probes both streamers (${health:0:160})" quiet grep -q '"streamer":{"ok":true,"up":2,"of":2' <<<"$health"

conns() { curl -s -m 2 --unix-socket "$1" http://localhost/status | sed -n 's/^{"connections":\([0-9]*\).*/\1/p'; }
front_gauge() { curl -s -m 3 "$BASE/metrics" | sed -n 's/^chat_websocket_connections \([0-9]*\)$/\1/p'; }
# held URL LABEL: 20 idle authenticated connections held through URL; both streamers must hold some,
# and the front door's /metrics their sum.
held() {
  local url=$1 label=$2 a=0 b=0 m="" i
  "$BIN/chat-bench" idle --url "$url" --conns 20 --duration 6 --max-time 40 >"$OWN/out/idle-$label.out" 2>&1 &
  local bench=$!
  for ((i = 0; i < 100; i++)); do
    a=$(conns "$SOCK1"); b=$(conns "$SOCK2")
    [ $((${a:-0} + ${b:-0})) -ge 20 ] && break
    sleep 0.1
  done
  sleep 1.2 # the metrics files are updated by each streamer's tick
  m=$(front_gauge)
  check "$label: 20 connections spread over both streamers ($a + $b)" test "${a:-0}" -gt 0 -a "${b:-0}" -gt 0 -a $((${a:-0} + ${b:-0})) -ge 20
  check "$label: /metrics counts both streamers' connections (chat_websocket_connections $m)" test "${m:-0}" -ge 20
  wait "$bench"
}
held "ws://127.0.0.1:$PORT/ws/chat" "through lighttpd"
held "ws://127.0.0.1:$DPORT/ws/chat" "direct port $DPORT"

# An answer streams on each streamer (its own socket), token by token.
for s in "$SOCK1" "$SOCK2"; do
  out=$OWN/out/answer-$(basename "$s" .sock).json
  "$BIN/chat-ws" --url "ws+unix:$s:/ws/chat" --token-file "$tok" --timeout 60 "$Q" >"$out" 2>&1
  n=$(grep -c '"type":"token"' "$out")
  check "an answer streams on $(basename "$s") ($n token frames, then complete)" \
    test "$n" -gt 3 -a "$(grep -c '"type":"complete"' "$out")" = 1
done

# Dropped mid-answer on one streamer, resumed on the other: every answer whole, exactly once.
storm() { # from to
  "$BIN/chat-storm" --url "ws+unix:$1:/ws/chat" --resume-url "ws+unix:$2:/ws/chat" --conns 10 --threads 2 \
    --drop-after 3 --timeout 60 >"$OWN/out/storm-$(basename "$1" .sock).out" 2>&1
}
for pair in "$SOCK1 $SOCK2" "$SOCK2 $SOCK1"; do
  read -r from to <<<"$pair"
  storm "$from" "$to"
  rc=$?
  line=$(grep -E '^storm: (lost|[0-9]+ clients,)' "$OWN/out/storm-$(basename "$from" .sock).out" | tr '\n' ' ')
  check "10 clients dropped mid-answer on $(basename "$from") resume on $(basename "$to"): all whole, once ($line)" \
    test "$rc" = 0 -a -n "$(grep -E '10 dropped mid-answer and answered after resuming' <<<"$line")"
done

# kill -9 of the first streamer (the one lighttpd's "fair" picks when both are idle): new WebSockets
# through lighttpd still open and get answers meanwhile (lighttpd disables the refused socket and takes
# the other). The supervisor restarts the killed one after 1 s, and until the workers have reconnected to
# it (up to a second or so) a message there gets OVERLOADED, a refusal to retry: the client asks
# again; a WebSocket that does not open at all is a failure.
kill -9 "$(cat "$OWN/run/chat-streamer.pid")"
answered() { # one client: up to 5 tries while the answer is OVERLOADED
  local try out=$OWN/out/down.json
  for try in 1 2 3 4 5; do
    "$BIN/chat-ws" --url "ws://127.0.0.1:$PORT/ws/chat" --token-file "$tok" --timeout 20 "Hello" >"$out" 2>&1 && return 0
    grep -q '"code":"OVERLOADED"' "$out" || return 1
    sleep 0.5
  done
  return 1
}
n=0
for _ in 1 2 3 4 5; do answered && n=$((n + 1)); done
check "while the first streamer is down, 5 new WebSockets through lighttpd open and are answered ($n)" test "$n" = 5
for _ in $(seq 1 150); do [ "$(http_code "$BASE/health" 2)" = 200 ] && break; sleep 0.1; done

# kill -9 of the second streamer: the supervisor restarts it, and /health sees both again.
FROM=$(stat -c %s "$OWN/log/stack.log")
old=$(cat "$OWN/run/chat-streamer-2.pid")
kill -9 "$old"
back=""
for _ in $(seq 1 150); do
  if tail -c +"$((FROM + 1))" "$OWN/log/stack.log" | grep -q 'stack: chat-streamer-2 restarted' &&
    [ "$(http_code "$BASE/health" 2)" = 200 ] && curl -s -m 2 "$BASE/health" | grep -q '"up":2,"of":2'; then back=1; break; fi
  sleep 0.1
done
check "after kill -9 of chat-streamer-2 the supervisor restarts it and /health is 200 with 2 of 2 (workers on both)" test -n "$back"

# stop drains both: an answer streaming on each completes.
pids=()
for s in "$SOCK1" "$SOCK2" "$SOCK1" "$SOCK2"; do
  "$BIN/chat-ws" --url "ws+unix:$s:/ws/chat" --token-file "$tok" --timeout 60 "$Q" \
    >"$OWN/out/drain${#pids[@]}.json" 2>&1 &
  pids+=($!)
done
for _ in $(seq 1 100); do
  [ "$(grep -l '"type":"token"' "$OWN"/out/drain*.json 2>/dev/null | wc -l)" -ge 4 ] && break
  sleep 0.1
done
stack stop >"$OWN/out/stop.out" 2>&1
done_n=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" && grep -q '"type":"complete"' "$OWN/out/drain$i.json" && done_n=$((done_n + 1))
done
check "stop drains both streamers: the 4 answers streaming on them complete ($done_n)" test "$done_n" = 4
check "stop says both streamers drained" quiet grep -q 'chat-streamer-2 drains' "$OWN/out/stop.out"
left=$(pgrep -f "$OWN/" | tr '\n' ' ')
check "no process of the stack is left (${left:-none})" test -z "$left"
stack stop >/dev/null 2>&1
finish
