#!/usr/bin/env bash
# Every process reopens its log on SIGHUP: after the logs are moved away (as logrotate does) and
# `deploy/stack.sh reopen-logs` (what the logrotate file's postrotate runs), the streamer, the worker
# supervisor and its workers, the FastCGI responders, lighttpd (error and access log) and the supervisor
# write to new files, and not to the moved ones. Also the supervisor's own rotation: a log over
# CHAT_LOG_MAX_MB becomes <log>.1 within seconds. Its own stack in $CHAT_VAR/own, at debug level so that
# every process logs the test's chats.
source "$(dirname "$0")/lib.sh"
OWN=$VAR/own
L=$OWN/log
own_stack "$OWN" -- stop >/dev/null 2>&1
rm -f "$L"/*.log.[12] "$L"/*.log.moved
own_stack_start "$OWN" "$LOG/ops-logs-start.out" CHAT_LOG_LEVEL=debug CHAT_LOG_MAX_MB=1
tok=$OWN/token
own_token "$OWN" log-user log@example.com "$tok"
chats() { # one WebSocket and one REST chat, and a worker process ended (its supervisor logs that)
  "$BIN/chat-ws" --url "ws://127.0.0.1:$PORT/ws/chat" --token-file "$tok" --timeout 30 "What is the engine power?" >/dev/null 2>&1
  curl -s -o /dev/null -m 30 -H "Authorization: Bearer $(cat "$tok")" -H 'Content-Type: application/json' \
    -d '{"message":"What is the engine power?"}' "$BASE/api/v1/chat"
  kill -TERM "$(pgrep -P "$(cat "$OWN/run/chat-worker.pid")" | head -1)"
  sleep 1.5 # the supervisor's back-off before it starts the worker again
}
LOGS="chat-streamer chat-worker chat-fcgi access lighttpd-error stack"
for f in $LOGS; do mv "$L/$f.log" "$L/$f.log.moved"; done
own_stack "$OWN" -- reopen-logs
sleep 1
declare -A size
for f in $LOGS; do size[$f]=$(stat -c %s "$L/$f.log.moved"); done
chats
has() { [ -f "$L/$1.log" ] && grep -q -- "$2" "$L/$1.log"; }
# lighttpd buffers its access log and writes it out about once a second: wait for it a little.
has_soon() { local i; for i in $(seq 1 30); do has "$@" && return 0; sleep 0.1; done; return 1; }
check "the streamer writes to a new chat-streamer.log" has chat-streamer 'streamer: job [0-9]* submitted'
check "the workers write to a new chat-worker.log" has chat-worker 'worker: job [0-9]* done'
check "the worker supervisor writes to the new chat-worker.log" has chat-worker 'supervisor: worker pid [0-9]* exited'
check "the FastCGI responders write to a new chat-fcgi.log" has chat-fcgi 'POST /api/v1/chat 200'
check "lighttpd writes to a new access.log" has_soon access '"POST /api/v1/chat HTTP/1.1" 200'
check "lighttpd reopened its error log" test -f "$L/lighttpd-error.log"
check "the supervisor writes to a new stack.log" has stack 'log reopened'
grown=""
for f in $LOGS; do [ "$(stat -c %s "$L/$f.log.moved")" = "${size[$f]}" ] || grown+="$f "; done
check "no process writes to a moved log any more (grown: ${grown:-none})" test -z "$grown"

# Rotation by size (CHAT_LOG_MAX_MB=1): a streamer log over 1 MB is rotated, and the streamer follows.
head -c 1100000 /dev/zero | tr '\0' '.' >>"$L/chat-streamer.log"
for _ in $(seq 1 150); do [ -f "$L/chat-streamer.log.1" ] && break; sleep 0.1; done
check "the supervisor rotates a log over CHAT_LOG_MAX_MB" test -f "$L/chat-streamer.log.1"
sleep 0.5
chats
check "the streamer writes to the log that replaced it" has chat-streamer 'streamer: job [0-9]* submitted'
check "the rotation is in stack.log" has stack 'rotated .*chat-streamer.log'
own_stack "$OWN" -- stop >/dev/null 2>&1
rm -f "$L"/*.log.[12] "$L"/*.log.moved
finish
