#!/usr/bin/env bash
# Slowloris at the front door: lighttpd closes a client that trickles its request head, one byte every
# few seconds, once it pauses longer than CHAT_HEAD_IDLE_S (shortened to 2 s here), for /health and
# /ws/chat heads alike; a head that keeps coming faster is answered, and an authenticated WebSocket may
# still sit idle much longer (its own limit, CHAT_WS_IDLE_S, applies once the head is in).
# Its own stack in $CHAT_VAR/own on CHAT_PORT.
source "$(dirname "$0")/lib.sh"
OWN=$VAR/own
own_stack "$OWN" -- stop >/dev/null 2>&1
own_stack_start "$OWN" "$LOG/ops-slowloris-start.out" CHAT_HEAD_IDLE_S=2

# trickle PATH INTERVAL MAX: sends the request line, then one header byte every INTERVAL seconds (the
# head never ends unless MAX bytes were sent, then it ends properly). Prints "closed N" (seconds after
# the first byte) or "answered N" or "open N".
trickle() {
  local path=$1 interval=$2 max=$3 t0 sent=0 line rc
  exec 4<>"/dev/tcp/127.0.0.1/$PORT" || { echo "noconnect 0"; return; }
  t0=$(date +%s)
  printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ' "$path" >&4
  while :; do
    read -r -t "$interval" -u 4 line
    rc=$?
    [ "$rc" = 0 ] && { echo "answered $(( $(date +%s) - t0 ))"; break; }
    [ "$rc" -gt 128 ] || { echo "closed $(( $(date +%s) - t0 ))"; break; } # EOF: the server closed
    [ $(( $(date +%s) - t0 )) -ge 30 ] && { echo "open $(( $(date +%s) - t0 ))"; break; }
    if [ "$sent" -ge "$max" ]; then printf '\r\nConnection: close\r\n\r\n' >&4 2>/dev/null; sent=0; max=1000000
    else printf 'x' >&4 2>/dev/null; sent=$((sent + 1)); fi
  done
  exec 4<&-
}
r=$(trickle /health 3 1000)
check "a /health head trickled at one byte every 3 s is closed within 5 s ($r)" quiet grep -Eq '^closed [0-5]$' <<<"$r"
r=$(trickle /ws/chat 3 1000)
check "a /ws/chat head trickled at one byte every 3 s is closed within 5 s ($r)" quiet grep -Eq '^closed [0-5]$' <<<"$r"
r=$(trickle /health 1 5)
check "a head that pauses 1 s between bytes is still answered ($r)" quiet grep -q '^answered' <<<"$r"

tok=$OWN/token
own_token "$OWN" slow-user slow@example.com "$tok"
(sleep 5; echo "What is the engine power of the Seawind 250?") |
  "$BIN/chat-ws" --url "ws://127.0.0.1:$PORT/ws/chat" --token-file "$tok" --timeout 30 >"$OWN/ws-idle.json" 2>&1
check "a WebSocket idle for 5 s after its handshake is not cut" grep -q '"type":"complete"' "$OWN/ws-idle.json"
own_stack "$OWN" -- stop >/dev/null 2>&1
finish
