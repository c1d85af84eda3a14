#!/usr/bin/env bash
# GET /api/v1/demo-token only on a loopback bind, and stack.sh's log line says which: on 127.0.0.1 it
# hands out the demo token, on 0.0.0.0 it answers 404 (in the API's JSON shape). Its own stack in
# $CHAT_VAR/own on CHAT_PORT.
source "$(dirname "$0")/lib.sh"
OWN=$VAR/own
own_stack "$OWN" -- stop >/dev/null 2>&1

own_stack "$OWN" CHAT_DEMO=1 CHAT_BIND=127.0.0.1 -- start >"$LOG/ops-demo-start.out" 2>&1 || not_ok "the stack starts on 127.0.0.1"
code=$(curl -s -o "$OWN/demo.json" -m 5 -w '%{http_code}' "$BASE/api/v1/demo-token")
check "on a loopback bind the demo token is served (HTTP $code)" grep -q '"token":"eyJ' "$OWN/demo.json"
check "the log line says the endpoint is on for the loopback bind only" \
  grep -q 'demo token endpoint on, for the loopback bind 127.0.0.1 only' "$LOG/ops-demo-start.out"
rm -f "$OWN/demo.json"
own_stack "$OWN" -- stop >/dev/null 2>&1

own_stack "$OWN" CHAT_DEMO=1 CHAT_BIND=0.0.0.0 -- start >"$LOG/ops-demo-start.out" 2>&1 || not_ok "the stack starts on 0.0.0.0"
body=$(curl -s -m 5 -w ' %{http_code}' "$BASE/api/v1/demo-token")
check "on 0.0.0.0 the demo token endpoint answers 404 ($body)" test "${body##* }" = 404
check "the log line says the endpoint is off and why" \
  grep -q 'demo token endpoint off: CHAT_BIND=0.0.0.0 is not a loopback address' "$LOG/ops-demo-start.out"
own_stack "$OWN" -- stop >/dev/null 2>&1
sed -i '/^eyJ/d' "$LOG/ops-demo-start.out" # the printed demo token
finish
