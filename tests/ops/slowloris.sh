#!/usr/bin/env bash
# Slowloris at the front door: lighttpd closes a client that trickles its request head, one byte every
# few seconds, once it pauses longer than CHAT_HEAD_IDLE_S (shortened to 2 s here), for /health and
# /ws/chat heads alike. A head that keeps coming faster than that is closed by chat-guard once it has
# taken CHAT_HEAD_TIMEOUT_S (6 s here), on any path; one that ends in time is answered. What the guard
# must leave alone: a REST answer slower than that bound (the client waits, sending nothing), and an
# authenticated WebSocket that sits idle longer than it and then streams an answer longer than it.
# Its own stack in $CHAT_VAR/own on CHAT_PORT.
source "$(dirname "$0")/lib.sh"
OWN=$VAR/own
own_stack "$OWN" -- stop >/dev/null 2>&1
own_stack_start "$OWN" "$LOG/ops-slowloris-start.out" CHAT_HEAD_IDLE_S=2 CHAT_HEAD_TIMEOUT_S=6 CHAT_TOKEN_DELAY_MS=200

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
r=$(trickle /health 1 3)
check "a head that pauses 1 s between bytes and ends within 6 s is answered ($r)" quiet grep -q '^answered' <<<"$r"
# Faster than lighttpd's per-read limit, for longer than CHAT_HEAD_TIMEOUT_S: chat-guard closes it
# between 6 s and 6 + 2 (CHAT_HEAD_IDLE_S) + 1 (its poll) s; three at once, on three paths. First
# lighttpd's worker processes are killed, and its master forks new ones: the connections are then in
# processes the guard did not see when it started (as after a worker crash, or when the guard looked
# before lighttpd had forked them).
master=$(cat "$OWN/run/lighttpd.pid")
old_workers=$(pgrep -P "$master" -x lighttpd | sort | tr '\n' ' ')
pkill -KILL -P "$master" -x lighttpd
for _ in $(seq 50); do
  new_workers=$(pgrep -P "$master" -x lighttpd | sort | tr '\n' ' ')
  [ -n "$new_workers" ] && [ "$(wc -w <<<"$new_workers")" = "$(wc -w <<<"$old_workers")" ] && break
  sleep 0.1
done
check "lighttpd replaced its workers ($old_workers-> $new_workers)" test -n "$new_workers" -a "$new_workers" != "$old_workers"
GUARD_LOG=$OWN/log/chat-guard.log
FROM=$(stat -c %s "$GUARD_LOG" 2>/dev/null || echo 0)
trickle /health 1 1000 >"$OWN/t1" & trickle /ws/chat 1 1000 >"$OWN/t2" & trickle /api/v1/chat 1 1000 >"$OWN/t3" &
wait
for f in t1 t2 t3; do
  r=$(cat "$OWN/$f")
  check "a head trickled at one byte a second is closed by chat-guard within 6-10 s ($f: $r)" \
    quiet grep -Eq '^closed ([6-9]|10)$' <<<"$r"
done
check "chat-guard logged the closes by address" \
  quiet grep -q 'closing the connection from 127.0.0.1:' <(tail -c +"$((FROM + 1))" "$GUARD_LOG" 2>/dev/null)
check "chat_slow_requests_closed_total counts them" \
  quiet grep -Eq '^chat_slow_requests_closed_total [3-9]' <(curl -s -m 3 "$BASE/metrics")

tok=$OWN/token
own_token "$OWN" slow-user slow@example.com "$tok"
# A REST answer of ~46 tokens at 200 ms (about 9 s): longer than the guard's bound, delivered whole.
t0=$(date +%s)
code=$(curl -s -o "$OWN/rest-slow.json" -m 30 -w '%{http_code}' -H "Authorization: Bearer $(cat "$tok")" \
  -H 'Content-Type: application/json' -d '{"message":"What is the engine power of the Seawind 250?"}' "$BASE/api/v1/chat")
took=$(( $(date +%s) - t0 ))
check "a REST answer that takes ${took} s (more than CHAT_HEAD_TIMEOUT_S) is delivered (HTTP $code)" \
  test "$code" = 200 -a "$took" -gt 6

(sleep 8; echo "What is the engine power of the Seawind 250?") |
  "$BIN/chat-ws" --url "ws://127.0.0.1:$PORT/ws/chat" --token-file "$tok" --timeout 30 >"$OWN/ws-idle.json" 2>&1
check "a WebSocket idle for 8 s after its handshake, then streaming a 9 s answer, is not cut" \
  grep -q '"type":"complete"' "$OWN/ws-idle.json"
own_stack "$OWN" -- stop >/dev/null 2>&1
finish
