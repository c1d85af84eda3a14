#!/usr/bin/env bash
# `make start` against an existing MariaDB server needs only a least-privilege account when the schema
# exists: schema set-up is an admin step (chat-kb setup with CHAT_DB_ADMIN_USER), not the services'.
# Uses the test database (tests/run.sh's private server) as the "existing server", through its real socket
# path so stack.sh does not manage it, with a stack of its own in $CHAT_VAR/ext on CHAT_PORT (run after the
# main test stack has stopped).
source "$(dirname "$0")/lib.sh"
EXT=$VAR/ext
rm -rf "$EXT"
mkdir -p "$EXT"
PW=$(cat "$VAR/db-password")
ext_stack() { # env assignments... -- stack.sh arguments
  env CHAT_VAR="$EXT" CHAT_DB_SOCKET="$(readlink -f "$RUN/mariadb.sock")" CHAT_DB_USER=chat CHAT_DB_PASSWORD="$PW" \
    CHAT_DB_NAME="${CHAT_DB_NAME:-chat_test}" CHAT_DEMO=0 "$@"
}

out=$(ext_stack bash deploy/stack.sh start 2>&1)
rc=$?
check "make start with the least-privilege account on an existing schema succeeds" test "$rc" = 0
echo "$out" | grep -q 'schema is current' && ok "it skipped the admin step (chat-kb check)" ||
  { not_ok "it skipped the admin step (chat-kb check)"; echo "$out" | grep -v '^eyJ' | sed 's/^/# /'; }
check "the stack is healthy" wait_code "$BASE/health" 200 10
tok=$(JWT_SECRET=$(cat "$EXT/jwt-secret") "$BIN/chat-token" --sub ext-user --email ext@example.com --ttl 300)
code=$(curl -s -o "$EXT/answer.json" -w '%{http_code}' -m 30 -H "Authorization: Bearer $tok" \
  -H 'Content-Type: application/json' -d '{"message":"What is the engine power of the Seawind 250?"}' "$BASE/api/v1/chat")
check "a REST chat is answered and stored (HTTP $code)" test "$code" = 200
ext_stack bash deploy/stack.sh stop >/dev/null 2>&1

# A database without the schema: the least-privilege account cannot create it, and says what to do.
out=$(ext_stack CHAT_DB_NAME=chat_ext_missing bash deploy/stack.sh start 2>&1)
rc=$?
check_not "without the schema and without an admin account, start fails" test "$rc" = 0
echo "$out" | grep -q 'CHAT_DB_ADMIN_USER' && ok "the failure names CHAT_DB_ADMIN_USER" ||
  { not_ok "the failure names CHAT_DB_ADMIN_USER"; echo "$out" | grep -v '^eyJ' | tail -5 | sed 's/^/# /'; }
ext_stack bash deploy/stack.sh stop >/dev/null 2>&1
finish
