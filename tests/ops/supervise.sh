#!/usr/bin/env bash
# Every long-running process of `make start` is supervised: after a kill -9 of the streamer, lighttpd,
# chat-guard, the worker supervisor or the private MariaDB, the stack answers again within a few seconds, and the
# supervisor says so in $CHAT_VAR/log/stack.log (with a back-off that doubles for a process dying young).
# Its own stack in $CHAT_VAR/own (which owns its private MariaDB) on CHAT_PORT.
source "$(dirname "$0")/lib.sh"
OWN=$VAR/own
stack() { own_stack "$OWN" -- "$@"; }
stack stop >/dev/null 2>&1
own_stack_start "$OWN" "$VAR/log/ops-supervise-start.out"
FROM=$(stat -c %s "$OWN/log/stack.log")
newlog() { tail -c +"$((FROM + 1))" "$OWN/log/stack.log"; } # this run's lines only
pidfile() { [ "$1" = mariadb ] && echo "$OWN/run/mariadb/mariadb.pid" || echo "$OWN/run/$1.pid"; }

tok=$OWN/token
own_token "$OWN" sv-user sv@example.com "$tok"
ws_chat() { quiet "$BIN/chat-ws" --url "ws://127.0.0.1:$PORT/ws/chat" --token-file "$tok" --timeout 5 "$@" \
  "What is the engine power of the Seawind 250?"; }
rest_chat() {
  [ "$(curl -s -o /dev/null -m 5 -w '%{http_code}' -H "Authorization: Bearer $(cat "$tok")" \
    -H 'Content-Type: application/json' -d '{"message":"What is the engine power?"}' "$BASE/api/v1/chat")" = 200 ]
}

for c in chat-streamer lighttpd chat-guard chat-worker mariadb; do
  old=$(cat "$(pidfile "$c")")
  kill -9 "$old"
  t0=$(date +%s%N)
  back=""
  for _ in $(seq 1 150); do
    new=$(cat "$(pidfile "$c")" 2>/dev/null)
    if [ -n "$new" ] && [ "$new" != "$old" ] && newlog | grep -q "stack: $c restarted (pid $new)" &&
      [ "$(http_code "$BASE/health" 1)" = 200 ] && ws_chat && rest_chat; then back=1; break; fi
    sleep 0.1
  done
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  check "after kill -9 of $c the supervisor restarts it and both WebSocket and REST answer within 10 s (${ms} ms)" \
    test -n "$back" -a "$ms" -le 10000
done
newlog | grep -q 'chat-streamer (pid [0-9]*) killed by signal 9' &&
  ok "the log line names the signal" || not_ok "the log line names the signal"

# Dying young again doubles the back-off.
kill -9 "$(cat "$OWN/run/chat-streamer.pid")"
for _ in $(seq 1 50); do newlog | grep -q 'chat-streamer .*restarting in 2s' && break; sleep 0.1; done
check "a second quick death of the streamer waits 2 s" quiet grep -q 'chat-streamer .*restarting in 2s' <(newlog)
for _ in $(seq 1 100); do [ "$(newlog | grep -c 'stack: chat-streamer restarted')" -ge 2 ] && ws_chat && break; sleep 0.1; done
check "a WebSocket chat is answered after the second restart" ws_chat

stack stop >/dev/null 2>&1
left=$(pgrep -f "$OWN/" | tr '\n' ' ')
check "stop leaves no process behind (${left:-none})" test -z "$left"
finish
