#!/usr/bin/env bash
# Runs the test suite: unit tests (cmocka) against a private MariaDB, then end-to-end tests against the
# real stack started on test ports with its own data folder (var/test), so a `make run` stack on the same
# machine is never touched. Usage: tests/run.sh [all|unit|e2e]
# Ends with one summary line "N passed, N failed" (counted from every cmocka program and script).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MODE=${1:-all}
# The caller's own settings must not change what is tested (a CHAT_TOKEN_DELAY_MS=0 left in the shell
# made the browser test's answers arrive unpaced): every CHAT_* variable goes, but the log level, the
# test port and the binaries the e2e tests run (CHAT_E2E_STREAMER_BIN, CHAT_E2E_WORKER_BIN: a sanitizer
# build, for instance).
for v in $(compgen -e | grep '^CHAT_'); do
  case $v in CHAT_LOG_LEVEL | CHAT_TEST_PORT | CHAT_E2E_STREAMER_BIN | CHAT_E2E_WORKER_BIN) ;; *) unset "$v" ;; esac
done
export CHAT_ROOT=$ROOT
export CHAT_VAR=$ROOT/var/test
# The tests' own database account: the private server's unix_socket admin, i.e. your login name (root in CI).
export CHAT_DB_SOCKET=$CHAT_VAR/run/mariadb.sock CHAT_DB_USER=$(id -un) CHAT_DB_PASSWORD= CHAT_DB_NAME=chat_test
export CHAT_LOG_LEVEL=${CHAT_LOG_LEVEL:-warn}
unset OPENROUTER_API_KEY LLM_BASE_URL LLM_API_KEY LLM_MODEL CHAT_LLM_PROVIDER JWT_SECRET
mkdir -p "$CHAT_VAR/log"

passed=0; failed=0; failed_names=()
record() { # name passed failed
  passed=$((passed + $2)); failed=$((failed + $3))
  [ "$3" -gt 0 ] && failed_names+=("$1")
}

# Runs one cmocka program and counts its results from cmocka's closing lines.
run_cmocka() {
  local t=$1 name; name=$(basename "$t")
  local log=$CHAT_VAR/log/$name.out
  echo "== $name"
  timeout "${TEST_TIMEOUT:-300}" "$t" >"$log" 2>&1
  local rc=$?
  cat "$log"
  if grep -q '#answer length changes' "$log"; then
    echo "# the stack's workers before the browser test: $(cat "$CHAT_VAR/log/status-before-browser.json" 2>/dev/null)"
  fi
  local p f
  p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
  f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
  p=${p:-0}; f=${f:-0}
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "!! $name exited with $rc"; fi
  record "$name" "$p" "$f"
}

# Runs one operations test script (tests/ops/*.sh, or another script given its name) and counts its
# "ok - " and "not ok - " lines; a script that exits non-zero without a "not ok" line counts as one failure.
run_script() {
  local s=$1 name=${2:-ops-$(basename "$1" .sh)}
  local log=$CHAT_VAR/log/$name.out
  echo "== $name"
  timeout "${TEST_TIMEOUT:-300}" bash "$s" >"$log" 2>&1
  local rc=$?
  cat "$log"
  local p f
  p=$(grep -c '^ok ' "$log"); f=$(grep -c '^not ok ' "$log")
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "!! $name exited with $rc"; fi
  record "$name" "$p" "$f"
}

cleanup() {
  [ "${STACK_STARTED:-0}" = 1 ] && bash deploy/stack.sh stop >/dev/null 2>&1
  # the stacks of tests/ops scripts, should one have been interrupted
  for d in "$CHAT_VAR/own" "$CHAT_VAR/ext" "$CHAT_VAR/examples"; do
    [ -d "$d/run" ] && env -u CHAT_DB_SOCKET CHAT_VAR="$d" bash deploy/stack.sh stop >/dev/null 2>&1
  done
  bash deploy/mariadb.sh stop >/dev/null 2>&1
}
trap cleanup EXIT

bash deploy/mariadb.sh start || { echo "0 passed, 1 failed"; exit 1; }

# Counts a script's closing "N passed, N failed" line (log file, exit code): record name passed failed.
record_summary() {
  local name=$1 log=$2 rc=$3 line p f
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
  p=$(echo "$line" | sed -n 's/^\([0-9]*\) passed.*/\1/p'); f=$(echo "$line" | sed -n 's/.* \([0-9]*\) failed.*/\1/p')
  p=${p:-0}; f=${f:-0}
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  record "$name" "$p" "$f"
}

# www/chat-client.js against a fake WebSocket (node only: no browser, no stack).
run_client_js() {
  local log=$CHAT_VAR/log/client-js.out
  echo "== node test-client.mjs"
  if ! command -v node >/dev/null; then echo "!! node is missing (make deps)"; record client-js 0 1; return; fi
  timeout 60 node tests/browser/test-client.mjs >"$log" 2>&1
  local rc=$?
  cat "$log"
  record_summary client-js "$log" "$rc"
}

if [ "$MODE" = all ] || [ "$MODE" = unit ]; then
  for t in build/tests/unit/test_*; do
    [ -x "$t" ] && run_cmocka "$t"
  done
  run_client_js
fi

# Runs the real-browser test and counts its closing "N passed, N failed" line.
run_browser() {
  local log=$CHAT_VAR/log/browser.out
  echo "== browser test-page.mjs"
  if [ ! -d tests/browser/node_modules/playwright-core ] || [ ! -x /usr/bin/chromium ]; then
    echo "!! browser test cannot run: make deps installs chromium and playwright-core"; record browser 0 1; return
  fi
  CHAT_BASE_URL=http://127.0.0.1:$CHAT_PORT CHAT_TOKEN=$(cat "$CHAT_VAR/demo-token") \
    CHAT_SCREENSHOT=$CHAT_VAR/ws-test.png timeout 120 node tests/browser/test-page.mjs >"$log" 2>&1
  local rc=$?
  cat "$log"
  if grep -q '#answer length changes' "$log"; then
    echo "# the stack's workers before the browser test: $(cat "$CHAT_VAR/log/status-before-browser.json" 2>/dev/null)"
  fi
  record_summary browser "$log" "$rc"
}

# Runs the official openai npm client against /v1 and counts its closing line.
run_clients() {
  local log=$CHAT_VAR/log/clients.out
  echo "== clients openai-client.mjs"
  if [ ! -d tests/clients/node_modules/openai ]; then
    echo "!! client test cannot run: make deps installs the openai package"; record clients 0 1; return
  fi
  CHAT_BASE_URL=http://127.0.0.1:$CHAT_PORT CHAT_TOKEN=$(cat "$CHAT_VAR/demo-token") \
    timeout 120 node tests/clients/openai-client.mjs >"$log" 2>&1
  local rc=$?
  cat "$log"
  record_summary clients "$log" "$rc"
}

if [ "$MODE" = all ] || [ "$MODE" = e2e ]; then
  # The whole stack on test ports with its own data folder (var/test), so `make run` is never touched.
  export CHAT_PORT=${CHAT_TEST_PORT:-18000}
  # The tests share a few users over many connections and many messages a minute: the per-user limits
  # (on by default) are off for every process they start, except where a test sets or unsets them
  # (test_streamer's per-user limit tests).
  export CHAT_USER_MAX_ANSWERS=0 CHAT_USER_RATE_PER_MIN=0
  # Tokens paced a little (5 ms) so streaming is observable token by token, as with a real model, and
  # customer access as in production (own), not the development stack's any.
  # (the demo token stack.sh prints for people is kept out of the saved output)
  # (test_frontdoor checks the Origin allowlist against CHAT_ALLOWED_ORIGINS, and CUSTOMER_FORBIDDEN)
  CHAT_DEMO=0 CHAT_TOKEN_DELAY_MS=5 CHAT_CUSTOMER_ACCESS=own CHAT_ALLOWED_ORIGINS='https://*.allowed.example' \
    bash deploy/stack.sh start 2>&1 |
    grep -v '^eyJ' >"$CHAT_VAR/log/stack.out"
  if [ "${PIPESTATUS[0]}" -eq 0 ]; then
    STACK_STARTED=1
    for t in build/tests/e2e/test_*; do [ -x "$t" ] && run_cmocka "$t"; done
    # which workers serve the stack (kept for diagnosing the browser test's rare unpaced answer)
    curl -s -m 2 --unix-socket "$CHAT_VAR/run/streamer.sock" http://localhost/status >"$CHAT_VAR/log/status-before-browser.json" 2>&1
    run_browser
    run_clients
    # Operations tests against the running stack.
    run_script tests/ops/db_lockdown.sh
    run_script tests/ops/api_errors.sh
    run_script tests/ops/tools_exit.sh
    bash deploy/stack.sh stop >/dev/null 2>&1; STACK_STARTED=0
    # Operations tests that start stacks of their own (on the same port, now free).
    run_script tests/ops/db_external.sh
    rm -rf "$CHAT_VAR/own" # the stack of the next scripts, with its own private MariaDB
    run_script tests/ops/supervise.sh
    run_script tests/ops/settings.sh
    run_script tests/ops/make_run.sh
    run_script tests/ops/demo_token.sh
    run_script tests/ops/log_reopen.sh
    run_script tests/ops/log_json.sh
    run_script tests/ops/slowloris.sh
    run_script tests/ops/graceful_stop.sh
    run_script tests/ops/streamers.sh
    run_script tests/ops/rolling_restart.sh
    # Every shell example of README.md, docs/ and sql/README.md, against a stack of make start's defaults.
    CHAT_EXAMPLES_PORT=$CHAT_PORT CHAT_EXAMPLES_VAR=${CHAT_VAR#"$ROOT"/}/examples run_script tests/doc_examples.sh doc-examples
    # Log hygiene: after every test above, no service log holds a JWT or the text of a chat message.
    echo "== log hygiene"
    leaks=$(grep -l -E 'eyJ[A-Za-z0-9_-]{10,}|engine power|Seawind 250 is powered' \
      "$CHAT_VAR"/log/{chat-streamer,chat-worker,chat-fcgi,chat-kb,access,lighttpd-error}.log \
      "$CHAT_VAR"/log/streamer-*.log "$CHAT_VAR"/own/log/chat-streamer*.log 2>/dev/null)
    if [ -z "$leaks" ]; then echo "ok - no token or message text in service logs"; record logs 1 0
    else echo "not ok - token or message text found in: $leaks"; record logs 0 1; fi
  else
    cat "$CHAT_VAR/log/stack.out"; record stack 0 1
  fi
fi

echo
[ ${#failed_names[@]} -gt 0 ] && echo "failing: ${failed_names[*]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
