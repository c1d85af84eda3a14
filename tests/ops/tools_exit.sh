#!/usr/bin/env bash
# Admin tools exit non-zero on failure: every tools/*_cli.c program, with no database, a database
# without the schema, no secret, a closed port, a missing file. Positive controls against the test
# stack's database and front door (tests/run.sh, e2e).
source "$(dirname "$0")/lib.sh"
NODB=(env CHAT_DB_SOCKET=/nonexistent/mariadb.sock CHAT_DB_HOST=)
fails() { # description command...: ok when the command exits non-zero
  local d=$1; shift
  "$@" >/dev/null 2>&1
  local rc=$?
  if [ "$rc" -ne 0 ]; then ok "$d (exit $rc)"; else not_ok "$d (exit 0)"; fi
}
succeeds() { local d=$1; shift; if "$@" >/dev/null 2>&1; then ok "$d"; else not_ok "$d (exit $?)"; fi; }

for q in "the" "?" "V6 engine"; do
  fails "chat-kb search '$q' with no database" "${NODB[@]}" "$BIN/chat-kb" search "$q"
done
admin() { mariadb --no-defaults --socket="$RUN/mariadb.sock" -u"$(id -un)" "$@"; }
admin -e 'CREATE DATABASE IF NOT EXISTS ops_no_schema'
fails "chat-kb search 'the' on a database without the schema" env CHAT_DB_NAME=ops_no_schema "$BIN/chat-kb" search "the"
fails "chat-kb check on a database without the schema" env CHAT_DB_NAME=ops_no_schema "$BIN/chat-kb" check
admin -e 'DROP DATABASE ops_no_schema'
fails "chat-kb setup with no database" "${NODB[@]}" "$BIN/chat-kb" setup
fails "chat-kb migrate with no database" "${NODB[@]}" "$BIN/chat-kb" migrate
fails "chat-kb check with no database" "${NODB[@]}" "$BIN/chat-kb" check
fails "chat-kb import of a missing folder" "$BIN/chat-kb" import /nonexistent/docs
fails "chat-kb load-sql of a missing file" "$BIN/chat-kb" load-sql /nonexistent/x.sql
fails "chat-kb with an unknown command" "$BIN/chat-kb" frobnicate
succeeds "chat-kb search 'V6 engine' on the test database" "$BIN/chat-kb" search "V6 engine"
succeeds "chat-kb check on the test database" "$BIN/chat-kb" check

fails "chat-ask with no database" "${NODB[@]}" "$BIN/chat-ask" "What is the engine power?"
fails "chat-kbgen --questions with no database" "${NODB[@]}" "$BIN/chat-kbgen" --questions 3
fails "chat-token without a secret" env -u JWT_SECRET "$BIN/chat-token" --sub x
fails "chat-token with a short secret" env JWT_SECRET=short "$BIN/chat-token" --sub x

SECRET=$(cat "$VAR/jwt-secret")
fails "chat-ws to a closed port" "$BIN/chat-ws" --url ws://127.0.0.1:1/ws/chat --token x "hi"
fails "chat-ws with an invalid token" "$BIN/chat-ws" --url "ws://127.0.0.1:$PORT/ws/chat" --token not.a.jwt "hi"
fails "chat-bench connect to a closed port" env JWT_SECRET="$SECRET" "$BIN/chat-bench" connect \
  --url ws://127.0.0.1:1/ws/chat --conns 3 --duration 1 --warmup 0
fails "chat-bench rest to a closed port" env JWT_SECRET="$SECRET" "$BIN/chat-bench" rest \
  --url http://127.0.0.1:1/api/v1/chat --conns 2 --duration 1 --warmup 0
succeeds "chat-bench connect to the test stack" env JWT_SECRET="$SECRET" "$BIN/chat-bench" connect \
  --url "ws://127.0.0.1:$PORT/ws/chat" --conns 3 --duration 1 --warmup 0
finish
