#!/usr/bin/env bash
# `deploy/stack.sh stop` cuts no answer in flight: 10 WebSocket answers (build/bin/chat-ws, through
# lighttpd) and 3 REST answers are streaming when stop starts; every one completes, and the stop
# refuses new connections meanwhile. Its own stack in $CHAT_VAR/own on CHAT_PORT, tokens paced at 60 ms
# so that each answer lasts a few seconds.
source "$(dirname "$0")/lib.sh"
SV=$VAR/own
rm -rf "$SV/out"
mkdir -p "$SV/out"
stack() { own_stack "$SV" CHAT_TOKEN_DELAY_MS=60 -- "$@"; }
stack stop >/dev/null 2>&1
own_stack_start "$SV" "$SV/out/start.out" CHAT_TOKEN_DELAY_MS=60
TOKEN_FILE=$SV/token
own_token "$SV" stop-user stop@example.com "$TOKEN_FILE" 600
Q="What is the engine power of the Seawind 250?"

pids=()
for i in $(seq 1 10); do
  "$BIN/chat-ws" --url "ws://127.0.0.1:$PORT/ws/chat" --token-file "$TOKEN_FILE" --timeout 60 "$Q" \
    >"$SV/out/ws$i.json" 2>"$SV/out/ws$i.err" &
  pids+=($!)
done
rest=()
for i in 1 2 3; do
  curl -s -m 60 -o "$SV/out/rest$i.json" -w '%{http_code}' -H "Authorization: Bearer $(cat "$TOKEN_FILE")" \
    -H 'Content-Type: application/json' -d "{\"message\":\"$Q\"}" "$BASE/api/v1/chat" >"$SV/out/rest$i.code" &
  rest+=($!)
done
# Stop once every WebSocket answer is streaming (has its first token).
for _ in $(seq 1 100); do
  n=$(grep -l '"type":"token"' "$SV"/out/ws*.json 2>/dev/null | wc -l)
  [ "$n" -ge 10 ] && break
  sleep 0.1
done
check "10 WebSocket answers are streaming when the stop starts ($n)" test "$n" -ge 10
started=$(date +%s.%N)
stack stop >"$SV/out/stop.out" 2>&1 &
stopper=$!
sleep 0.5
code=$(http_code "$BASE/health" 1)
check "new connections are refused while the stack drains (GET /health -> $code)" test "$code" = 000
wait "$stopper"
took=$(echo "$(date +%s.%N) - $started" | bc)
ok "stop took ${took}s"

for i in $(seq 1 10); do
  wait "${pids[$((i - 1))]}"
  rc=$?
  if [ "$rc" = 0 ] && grep -q '"type":"complete"' "$SV/out/ws$i.json"; then ok "WebSocket answer $i completed"
  else not_ok "WebSocket answer $i completed (exit $rc)"; tail -2 "$SV/out/ws$i.json" "$SV/out/ws$i.err" | sed 's/^/# /'; fi
done
for i in 1 2 3; do
  wait "${rest[$((i - 1))]}"
  code=$(cat "$SV/out/rest$i.code")
  if [ "$code" = 200 ] && grep -q '"response"' "$SV/out/rest$i.json"; then ok "REST answer $i delivered"
  else not_ok "REST answer $i delivered (HTTP $code)"; head -c 300 "$SV/out/rest$i.json" | sed 's/^/# /'; fi
done
left=$(pgrep -f "$SV/" | tr '\n' ' ')
check "no process of the stack is left (${left:-none})" test -z "$left"
stack stop >/dev/null 2>&1
finish
