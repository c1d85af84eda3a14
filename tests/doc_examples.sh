#!/usr/bin/env bash
# Runs every shell example of README.md, docs/*.md and sql/README.md against a stack started the way
# `make start` starts it, so that the documentation cannot drift from what the commands do.
#
# A fenced block whose info string is exactly `sh` is an example to run; `sh no-run` marks the ones that
# cannot run here (they build, install, start long runs or need production hosts), with the reason in
# the text around them. Each block runs as written, from the repository's root, as an interactive shell
# would run it (bash -eu: a failing command fails the block; no pipefail, so `curl ... | head` is fine),
# with two substitutions so that a stack already running on the machine (`make run`) is never touched:
# this stack's port for 8000, and its data folder for `var/`. CHAT_PORT and CHAT_VAR name the same
# stack to the tools (chat-ws, chat-kb, chat-ask) as `make start`'s defaults do in a plain shell.
# A block passes when it exits 0 within 30 s and prints no API error (`"error":`). Each block is
# reported as "ok - FILE:LINE: first command" or "not ok - ...", with the block and its output's end.
#
# Usage: tests/doc_examples.sh   (tests/run.sh calls it with CHAT_EXAMPLES_PORT=its test port and
# CHAT_EXAMPLES_VAR=var/test/examples; ends with "N passed, N failed")
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PORT=${CHAT_EXAMPLES_PORT:-18090}
VAR_REL=${CHAT_EXAMPLES_VAR:-var/examples} # relative to the root: what `var/` in a block becomes
export CHAT_VAR=$ROOT/$VAR_REL
LOG=$CHAT_VAR/log
mkdir -p "$LOG"

# The stack as `make start` makes it: its defaults, not the test suite's settings.
for v in $(compgen -e | grep '^CHAT_'); do
  case $v in CHAT_VAR | CHAT_LOG_LEVEL) ;; *) unset "$v" ;; esac
done
unset JWT_SECRET
export CHAT_PORT=$PORT

stop_stack() { bash deploy/stack.sh stop >/dev/null 2>&1; bash deploy/mariadb.sh stop >/dev/null 2>&1; }
trap stop_stack EXIT
if ! bash deploy/stack.sh start >"$LOG/stack.out" 2>&1; then
  cat "$LOG/stack.out"
  echo "not ok - the stack of the examples did not start"
  echo "0 passed, 1 failed"
  exit 1
fi

# Prints every runnable block of file as one line "file:line<TAB>base64 of the block".
blocks() {
  awk -v F="$1" '
    /^```sh[ \t]*$/ { inblk = 1; start = NR; text = ""; next }
    /^```/ && inblk { inblk = 0; printf "%s:%d\t", F, start; print text | "base64 -w0"; close("base64 -w0"); printf "\n"; next }
    inblk { text = text $0 "\n" }
  ' "$1"
}

passed=0; failed=0
for f in README.md docs/*.md sql/README.md; do
  while IFS=$'\t' read -r where b64; do
    [ -n "$where" ] || continue
    code=$(printf '%s' "$b64" | base64 -d |
      sed -e "s#localhost:8000#127.0.0.1:$PORT#g; s#127\.0\.0\.1:8000#127.0.0.1:$PORT#g" \
          -e "s#\([ (\"'=]\)var/#\1$VAR_REL/#g")
    name="$where: $(printf '%s' "$b64" | base64 -d | grep -m1 -v '^[[:space:]]*\(#\|$\)' | cut -c1-60 | sed "s/[[:space:]]*$//")"
    out=$(cd "$ROOT" && timeout 30 bash -eu -c "$code" </dev/null 2>&1)
    rc=$?
    if [ "$rc" -eq 0 ] && ! grep -q '"error":' <<<"$out"; then
      echo "ok - $name"; passed=$((passed + 1))
    else
      echo "not ok - $name (exit $rc)"; printf '%s\n' "$code" | sed 's/^/#   $ /'
      printf '%s\n' "$out" | tail -5 | sed 's/^/#   /'
      failed=$((failed + 1))
    fi
  done < <(blocks "$f")
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
