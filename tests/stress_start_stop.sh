#!/usr/bin/env bash
# Stress test of the development stack's start and stop (not part of `make test`: about 10 s a round):
# N rounds (default 20) of `deploy/stack.sh start` from an empty data folder, a health check, a chat over
# REST, and `deploy/stack.sh stop` leaving no process behind. Every round must be healthy.
#   bash tests/stress_start_stop.sh [ROUNDS]     (CHAT_PORT, default 18090; data in var/stress, wiped)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
ROUNDS=${1:-20}
export CHAT_VAR=$ROOT/var/stress CHAT_PORT=${CHAT_PORT:-18090} CHAT_DEMO=0
unset CHAT_DB_HOST CHAT_DB_SOCKET CHAT_DB_USER CHAT_DB_PASSWORD CHAT_DB_NAME JWT_SECRET
BASE=http://127.0.0.1:$CHAT_PORT
failed=0
bash deploy/stack.sh stop >/dev/null 2>&1
for ((r = 1; r <= ROUNDS; r++)); do
  rm -rf "$CHAT_VAR"
  t0=$(date +%s%N)
  problem=""
  if ! out=$(bash deploy/stack.sh start 2>&1); then
    problem="start failed: $(echo "$out" | grep -v '^eyJ' | tail -n 20)"
  elif [ "$(curl -s -o /dev/null -m 5 -w '%{http_code}' "$BASE/health")" != 200 ]; then
    problem="not healthy: $(curl -s -m 5 "$BASE/health")"
  else
    tok=$(JWT_SECRET=$(cat "$CHAT_VAR/jwt-secret") build/bin/chat-token --sub stress --email stress@example.com --ttl 300)
    code=$(curl -s -o /dev/null -m 30 -w '%{http_code}' -H "Authorization: Bearer $tok" \
      -H 'Content-Type: application/json' -d '{"message":"What is the engine power?"}' "$BASE/api/v1/chat")
    [ "$code" = 200 ] || problem="REST chat answered $code"
  fi
  up_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  bash deploy/stack.sh stop >/dev/null 2>&1
  left=$(pgrep -f "$CHAT_VAR/" | tr '\n' ' ')
  [ -z "$left" ] || problem+="${problem:+; }processes left after stop: $left"
  if [ -z "$problem" ]; then
    echo "round $r/$ROUNDS: healthy (up in ${up_ms} ms)"
  else
    echo "round $r/$ROUNDS: FAILED: $problem"
    failed=$((failed + 1))
  fi
done
echo "$((ROUNDS - failed)) of $ROUNDS rounds healthy"
[ "$failed" = 0 ]
