#!/usr/bin/env bash
# `make run`: builds only what running needs, has the same development defaults as `make start`, and
# Ctrl-C on `make run 2>&1 | tee log` stops everything (the script outlives tee's death: no SIGPIPE).
# Its own stack in $CHAT_VAR/own on CHAT_PORT, run as a terminal would: one process group that gets
# the SIGINT.
source "$(dirname "$0")/lib.sh"
OWN=$VAR/own
mkdir -p "$OWN/out"

plan=$(make -n -B run 2>&1)
built=$(echo "$plan" | grep -oE -- '-o build/(tests/[^ ]*|bin/fake-llm)|npm (ci|install)|deploy/deps.sh$' | sort -u | tr '\n' ' ')
check "make run builds no test program and installs no test package (found: ${built:-none})" test -z "$built"
check "make run builds the programs it runs" quiet grep -q -- '-o build/bin/chat-streamer ' <<<"$plan"

own_stack "$OWN" -- stop >/dev/null 2>&1
rm -f "$OWN/out/make-run.log"
# Job control (set -m): the pipeline gets a process group of its own, like a terminal's foreground job,
# and keeps SIGINT (a plain background job of a script would ignore it, and so would everything it runs).
set -m
env -u CHAT_DB_SOCKET -u CHAT_DB_HOST -u CHAT_DB_USER -u CHAT_DB_PASSWORD -u CHAT_DB_NAME -u CHAT_TOKEN_DELAY_MS \
  -u CHAT_CUSTOMER_ACCESS -u MAKEFLAGS -u MAKELEVEL CHAT_VAR="$OWN" CHAT_DEMO=0 \
  bash -c 'make run 2>&1 | tee "$1" >/dev/null' _ "$OWN/out/make-run.log" &
job=$!
set +m
for _ in $(seq 1 600); do [ -f "$OWN/run/stack.ready" ] && break; kill -0 "$job" 2>/dev/null || break; sleep 0.1; done
check "make run comes up" test -f "$OWN/run/stack.ready"
streamer=$(cat "$OWN/run/chat-streamer.pid" 2>/dev/null)
env_of() { tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null | sed -n "s/^$2=//p"; }
check "make run paces tokens at 25 ms ($(env_of "$streamer" CHAT_TOKEN_DELAY_MS))" \
  test "$(env_of "$streamer" CHAT_TOKEN_DELAY_MS)" = 25
check "make run allows any customer ($(env_of "$streamer" CHAT_CUSTOMER_ACCESS))" \
  test "$(env_of "$streamer" CHAT_CUSTOMER_ACCESS)" = any

pids="$(cat "$OWN"/run/{chat-worker,chat-streamer,lighttpd}.pid 2>/dev/null | tr '\n' ' ')"
kill -INT -- "-$job" # Ctrl-C: the whole foreground group (make, the script, tee)
for _ in $(seq 1 900); do kill -0 -- "-$job" 2>/dev/null || break; sleep 0.1; done
check "after Ctrl-C the make run pipeline ends" quiet sh -c "! kill -0 -- -$job"
alive=""; for p in $pids; do kill -0 "$p" 2>/dev/null && alive+="$p "; done
check "after Ctrl-C the worker, streamer and lighttpd are stopped (alive: ${alive:-none})" test -z "$alive"
left=$(pgrep -f "$OWN/" | tr '\n' ' ')
check "after Ctrl-C no process of the stack is left (${left:-none})" test -z "$left"
rm -f "$OWN/out/make-run.log" # it holds the demo token
own_stack "$OWN" -- stop >/dev/null 2>&1
finish
