#!/usr/bin/env bash
# make bench: the performance figures of issue 6 on a private stack, as one table.
#
# Starts its own stack (deploy/stack.sh start with CHAT_VAR=var/bench and CHAT_PORT=18080: extractive
# provider, no token delay, no practical rate limit per connection or per user, since each simulated
# user is a connection generating load as fast as it is answered), generates a 10,000-passage knowledge
# base (chat-kbgen), runs the scenarios with chat-bench, prints figure | target | measured | spec's claim, and
# stops everything it started. Loopback only; bounded to BENCH_BUDGET_S (default 570 s) by checking the
# time left before each step and bounding each step's own run time; it stops by itself.
#
# Scale with environment variables (defaults in parentheses; BENCH_QUICK=1 gives a one-minute run):
#   BENCH_IDLE_CONNS (100000)  idle connections held on the streamers' direct port: several streamer
#                              processes share one TCP port (SO_REUSEPORT, BENCH_DIRECT_PORT, default
#                              BENCH_PORT + 1), as many as BENCH_PER_STREAMER (17000) each allows (one
#                              process's fd limit), and the kernel spreads the connections over them
#   BENCH_MEM_CONNS (15000)    idle connections on the stack's one streamer, for memory per connection
#   BENCH_PROXY_CONNS (9000)   idle connections through lighttpd
#   BENCH_CHAT_CONNS (200)     closed-loop chat connections through lighttpd; BENCH_DURATION (15) seconds
#   BENCH_STREAMS (1000), BENCH_STREAM_RATE (300), BENCH_STREAM_DELAY_MS (50)  first-token latency:
#                              open loop on a worker pool pacing tokens like a real model (a token every
#                              DELAY ms), so about RATE x answer time streams are active at once
#   BENCH_FRAME_CONNS (1200), BENCH_FRAME_DELAY_MS (10)  token frames/s: closed loop on a paced pool, so
#                              every token is its own frame. N streams of a token every D ms can carry at
#                              most N x 1000/D frames/s, less the gap between an answer and the next: 1,200
#                              streams offer 120,000, so that the stack, not the scenario, sets the figure
#   BENCH_PACED_SLOTS (640)    slots per worker process of the paced pool (two processes)
#   BENCH_STORM_CONNS (5000)   reconnect storm: streaming clients that drop at once and resume (chat-storm)
#   BENCH_KB_PASSAGES (10000), BENCH_KB_LARGE (100000), BENCH_RETRIEVAL_Q (300)
#   BENCH_PACED_STREAMS ("400 1000"), BENCH_PACED_DELAY_MS (20), BENCH_PACED_DURATION (15)  issue 15's
#                              workload, last: the stack restarted with its workers pacing a token every
#                              DELAY ms, the sample knowledge base, N streams closed loop through lighttpd
#                              and on the streamer's socket; CPU per token frame of each process kind
#   BENCH_REST_CONNS (64), BENCH_PORT (18080), BENCH_VAR (var/bench), CHAT_WORKERS (stack default)
#   BENCH_ONLY ("")            run only the steps whose names match these patterns (e.g. "paced-*",
#                              "mem proxy paced-*"): the stack starts and stops around them all the same
# Full output of every step: $BENCH_VAR/log/bench-*.txt. Results and analysis: docs/benchmarks.md.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
BIN=$ROOT/build/bin
START=$SECONDS
BUDGET=${BENCH_BUDGET_S:-570}
QUICK=${BENCH_QUICK:-0}

q() { if [ "$QUICK" = 1 ]; then echo "$2"; else echo "$1"; fi; }
IDLE_CONNS=${BENCH_IDLE_CONNS:-$(q 100000 4000)}
PER_STREAMER=${BENCH_PER_STREAMER:-17000}
MEM_CONNS=${BENCH_MEM_CONNS:-$(q 15000 2000)}
PROXY_CONNS=${BENCH_PROXY_CONNS:-$(q 9000 1000)}
CHAT_CONNS=${BENCH_CHAT_CONNS:-200}
DURATION=${BENCH_DURATION:-$(q 15 4)}
STREAMS=${BENCH_STREAMS:-$(q 1000 200)}
STREAM_RATE=${BENCH_STREAM_RATE:-$(q 300 100)}
STREAM_DELAY=${BENCH_STREAM_DELAY_MS:-50}
FRAME_CONNS=${BENCH_FRAME_CONNS:-$(q 1200 200)}
FRAME_DELAY=${BENCH_FRAME_DELAY_MS:-10}
PACED_SLOTS=${BENCH_PACED_SLOTS:-640}
KB_PASSAGES=${BENCH_KB_PASSAGES:-10000}
KB_LARGE=${BENCH_KB_LARGE:-$(q 100000 20000)}
RETRIEVAL_Q=${BENCH_RETRIEVAL_Q:-$(q 300 50)}
REST_CONNS=${BENCH_REST_CONNS:-64}
STORM_CONNS=${BENCH_STORM_CONNS:-$(q 5000 500)}
PACED_STREAMS=${BENCH_PACED_STREAMS:-400 1000}
PACED_DELAY=${BENCH_PACED_DELAY_MS:-20}
PACED_DURATION=${BENCH_PACED_DURATION:-$(q 15 5)}
ONLY=${BENCH_ONLY:-}

export CHAT_VAR=${BENCH_VAR:-$ROOT/var/bench}
case "$CHAT_VAR" in /*) ;; *) CHAT_VAR=$ROOT/$CHAT_VAR ;; esac
export CHAT_PORT=${BENCH_PORT:-18080}
DIRECT_PORT=${BENCH_DIRECT_PORT:-$((CHAT_PORT + 1))}
export CHAT_BIND=127.0.0.1
export CHAT_LLM_PROVIDER=extractive CHAT_TOKEN_DELAY_MS=0 CHAT_RATE_LIMIT_PER_MIN=1000000 \
  CHAT_USER_MAX_ANSWERS=0 CHAT_USER_RATE_PER_MIN=0
export CHAT_DEMO=0
unset CHAT_DB_HOST CHAT_DB_SOCKET CHAT_STREAMER_LISTEN CHAT_STREAMER_SOCKET CHAT_ZMQ_ENDPOINT
RUN=$CHAT_VAR/run
LOG=$CHAT_VAR/log
mkdir -p "$RUN" "$LOG" "$CHAT_VAR/tmp"
rm -f "$LOG"/bench-*.txt "$LOG"/bench-streamer-*.log # figures of an earlier run must not leak into this table
# One secret for the stack, the extra streamers and chat-bench (which mints its tokens with it).
if [ -z "${JWT_SECRET:-}" ]; then
  JWT_SECRET=$(head -c 48 /dev/urandom | od -An -v -tx1 | tr -d ' \n')
fi
export JWT_SECRET
# MariaDB takes its temporary directory from TMPDIR: a private one, because retrieval queries create
# on-disk temporary tables and other processes on the machine clean the shared /tmp (a vanished
# temporary file made MariaDB fail queries and once crash; see docs/benchmarks.md).
export TMPDIR=$CHAT_VAR/tmp
# ...that MariaDB's own account can write to when this runs as root (mariadb.sh runs it as mysql then)
[ "$(id -u)" = 0 ] && chmod 1777 "$TMPDIR"
# Every connection is a descriptor: take what the hard limit allows (stack.sh passes it on).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

DB_ENV=(CHAT_DB_SOCKET="$RUN/mariadb.sock" CHAT_DB_USER=root)
WS_DIRECT="ws+unix:$RUN/streamer.sock:/ws/chat"
WS_PROXY="ws://127.0.0.1:$CHAT_PORT/ws/chat"
HTTP_BASE="http://127.0.0.1:$CHAT_PORT"
STATUS_URL="http+unix:$RUN/streamer.sock:/status"
EXTRA_PIDS=()

say() { printf '\n== %s\n' "$*"; }
left() { echo $((BUDGET - (SECONDS - START))); }

# want NAME: the step is to run (BENCH_ONLY empty, or one of its patterns matches NAME)
want() {
  [ -z "$ONLY" ] && return 0
  local -a pats
  local p
  read -ra pats <<<"$ONLY"
  for p in "${pats[@]}"; do
    # shellcheck disable=SC2254 # the patterns are globs on purpose
    case $1 in $p) return 0 ;; esac
  done
  return 1
}

# Runs a step when it is wanted and enough budget is left: name need_s command... (output to the log
# and, without the machine-readable BENCH lines, to the terminal)
step() {
  local name=$1 need=$2; shift 2
  local out=$LOG/bench-$name.txt
  want "$name" || return 1
  if [ "$(left)" -lt "$need" ]; then
    echo "(skipped $name: $(left) s of the budget left, it needs about $need s)" | tee "$out"
    return 1
  fi
  "$@" >"$out" 2>&1
  local rc=$?
  grep -v '^BENCH ' "$out"
  [ $rc = 0 ] || echo "(step $name exited with status $rc)"
  return $rc
}

# kv FILE KEY [FILTER]: the value of KEY= in the BENCH lines of FILE (those containing FILTER).
kv() {
  local f=$LOG/bench-$1.txt
  [ -f "$f" ] || return 0
  grep '^BENCH ' "$f" | grep -- "${3:-}" | tr ' ' '\n' | grep "^$2=" | head -1 | cut -d= -f2
}

ms() { [ -n "${1:-}" ] && awk -v u="$1" 'BEGIN { if (u < 1000) printf "%.2f ms", u / 1000; else printf "%.1f ms", u / 1000 }' || echo "n/a"; }
num() { [ -n "${1:-}" ] && printf "%s" "$1" | awk '{ n = sprintf("%.0f", $1); s = ""; while (length(n) > 3) { s = "," substr(n, length(n) - 2) s; n = substr(n, 1, length(n) - 3) } print n s }' || echo "n/a"; }
# both VERDICT VERDICT: "met" when both are, "MISSED" when either is, empty when either is empty
both() { [ -n "$1" ] && [ -n "$2" ] || { echo ""; return; }; [ "$1" = met ] && [ "$2" = met ] && echo met || echo MISSED; }
# verdict MEASURED OP TARGET: "met" / "MISSED" (OP: ge or le), empty when nothing was measured
verdict() {
  [ -n "${1:-}" ] || { echo ""; return; }
  awk -v m="$1" -v op="$2" -v t="$3" 'BEGIN { ok = (op == "ge") ? (m >= t) : (m <= t); print ok ? "met" : "MISSED" }'
}

# The extra streamers this script started (by pid, never by name).
cleanup_extra() {
  local p
  for p in "${EXTRA_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${EXTRA_PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  done
  EXTRA_PIDS=()
  rm -f "$RUN"/bench-streamer-*.sock "$RUN"/bench-streamer-*.pid "$RUN"/bench-streamer-*.ipc "$RUN"/bench-paced.*
}

# A second streamer on its own socket with its own worker pool (two processes of PACED_SLOTS slots) whose
# extractive provider paces tokens like a real model, one every $1 ms: streams then stay active for
# seconds and every token is its own frame. Same database, same knowledge base.
PACED_SOCK=$RUN/bench-paced.sock
start_paced() {
  local ep=ipc://$RUN/bench-paced.ipc i
  rm -f "$PACED_SOCK"
  env "${DB_ENV[@]}" CHAT_ZMQ_ENDPOINT="$ep" CHAT_WORKERS=2 CHAT_WORKER_SLOTS="$PACED_SLOTS" CHAT_TOKEN_DELAY_MS="$1" \
    CHAT_LOG_LEVEL=warn setsid "$BIN/chat-worker" >>"$LOG/bench-paced-worker.log" 2>&1 </dev/null &
  EXTRA_PIDS+=($!)
  echo $! >"$RUN/bench-paced-worker.pid"
  # PACED_TCP=PORT: on that loopback TCP port instead of the Unix socket (chat-storm speaks TCP only)
  local listen=unix:$PACED_SOCK
  [ -n "${PACED_TCP:-}" ] && listen=127.0.0.1:$PACED_TCP
  CHAT_STREAMER_LISTEN=$listen CHAT_ZMQ_ENDPOINT=$ep CHAT_LOG_LEVEL=warn \
    setsid "$BIN/chat-streamer" >>"$LOG/bench-paced-streamer.log" 2>&1 </dev/null &
  EXTRA_PIDS+=($!)
  echo $! >"$RUN/bench-paced.pid"
  local status_at=(--unix-socket "$PACED_SOCK" http://localhost/status)
  [ -n "${PACED_TCP:-}" ] && status_at=("http://127.0.0.1:$PACED_TCP/status")
  for ((i = 0; i < 300; i++)); do
    curl -s -m 1 "${status_at[@]}" 2>/dev/null |
      grep -q "\"workers_live\":$((2 * PACED_SLOTS))," && return 0
    sleep 0.1
  done
  echo "(the paced worker pool did not come up; see $LOG/bench-paced-*.log)"
  return 1
}

cleanup() {
  cleanup_extra
  bash deploy/stack.sh stop >>"$LOG/bench-stack.txt" 2>&1
}
trap 'cleanup; exit 130' INT TERM

for b in chat-bench chat-storm chat-kbgen chat-kb chat-streamer chat-worker chat-fcgi; do
  [ -x "$BIN/$b" ] || { echo "bench: build/bin/$b is missing (make)" >&2; exit 1; }
done
for p in "$CHAT_PORT" "$DIRECT_PORT"; do
  if ss -ltn 2>/dev/null | grep -q "127.0.0.1:$p "; then
    echo "bench: port $p is taken (another stack?); set BENCH_PORT (and BENCH_DIRECT_PORT)" >&2
    exit 1
  fi
done

say "machine"
echo "$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(free -m | awk '/Mem:/ { print $2 }') MB RAM," \
  "kernel $(uname -r), fd limit $(ulimit -n), load $(cut -d' ' -f1-3 /proc/loadavg)"

say "stack (CHAT_VAR=$CHAT_VAR, port $CHAT_PORT)"
bash deploy/stack.sh stop >"$LOG/bench-stack.txt" 2>&1 # a stack left over by an interrupted run
rm -f "$CHAT_VAR/demo-token"
if ! bash deploy/stack.sh start >>"$LOG/bench-stack.txt" 2>&1; then
  tail -20 "$LOG/bench-stack.txt"
  echo "bench: the stack did not start" >&2
  cleanup
  exit 1
fi
grep -E '^stack:' "$LOG/bench-stack.txt" | tail -3
# Every run starts with no conversations: the bench database is kept between runs, and hundreds of
# thousands of sessions left by earlier runs would make later runs read history pages from disk.
bash deploy/mariadb.sh client chat -e "SET FOREIGN_KEY_CHECKS = 0; TRUNCATE TABLE chat_messages;
  TRUNCATE TABLE chat_sessions; SET FOREIGN_KEY_CHECKS = 1" >>"$LOG/bench-stack.txt" 2>&1
echo "MariaDB tmpdir: $(bash deploy/mariadb.sh client -N -e 'SELECT @@tmpdir' 2>/dev/null)"
PID_STREAMER=$RUN/chat-streamer.pid PID_WORKER=$RUN/chat-worker.pid PID_LIGHTTPD=$RUN/lighttpd.pid PID_DB=$RUN/mariadb.pid

# First the pipeline's cost without the retrieval cost: the hand-written knowledge base only (187
# passages, sub-millisecond full-text queries), built-in questions about it.
say "chat through lighttpd, sample knowledge base only: $CHAT_CONNS connections, closed loop, ${DURATION} s"
env "${DB_ENV[@]}" "$BIN/chat-kbgen" --passages 0 >"$LOG/bench-kbgen-empty.txt" 2>&1
step chat-small $((DURATION + 30)) timeout $((DURATION + 120)) "$BIN/chat-bench" chat --url "$WS_PROXY" \
  --conns "$CHAT_CONNS" --duration "$DURATION" --warmup 2 --timeout 20 --pid-file "$PID_LIGHTTPD" \
  --pid-file "$PID_STREAMER" --pid-file "$PID_WORKER" --pid-file "$PID_DB" --max-time $((DURATION + 100))
say "REST POST /api/v1/chat through lighttpd, sample knowledge base only"
step rest-small $((DURATION + 20)) timeout $((DURATION + 80)) "$BIN/chat-bench" rest --url "$HTTP_BASE/api/v1/chat" \
  --conns 32 --duration "$DURATION" --timeout 20 --pid-file "$PID_LIGHTTPD" --pid-file "$PID_DB" \
  --max-time $((DURATION + 60))

say "knowledge base: $KB_PASSAGES synthetic passages"
step kbgen 60 env "${DB_ENV[@]}" "$BIN/chat-kbgen" --passages "$KB_PASSAGES"
env "${DB_ENV[@]}" "$BIN/chat-kbgen" --questions 5000 --seed 7 >"$CHAT_VAR/tmp/questions.txt" 2>"$LOG/bench-questions.txt"
QUESTIONS=$CHAT_VAR/tmp/questions.txt
[ -s "$QUESTIONS" ] || QUESTIONS=""
QOPT=(); [ -n "$QUESTIONS" ] && QOPT=(--questions "$QUESTIONS")

say "retrieval over the $KB_PASSAGES-passage knowledge base"
step retrieval10k 60 timeout 120 env "${DB_ENV[@]}" "$BIN/chat-kbgen" --retrieval-bench 500

# Memory early, while the streamer has held only chat-small's 200 connections (freed memory is reused,
# not returned, so a later step would under-count).
say "memory: $MEM_CONNS idle connections on the stack's streamer"
step mem 60 timeout 150 "$BIN/chat-bench" idle --url "$WS_DIRECT" --conns "$MEM_CONNS" --duration 3 \
  --pid-file "$PID_STREAMER" --status-url "$STATUS_URL" --max-time 120

say "connect + auth, one at a time, directly on the streamer's socket"
step connect 30 timeout 60 "$BIN/chat-bench" connect --url "$WS_DIRECT" --conns 1000 --concurrency 1 --max-time 50

# The direct port: several streamer processes listening on one TCP port with SO_REUSEPORT (one process's
# descriptors cannot hold the target), the kernel spreading the connections over them; each also has a
# Unix socket for its /status (no workers needed for idle connections: they only need the lws side).
say "$IDLE_CONNS idle connections on the streamers' direct port $DIRECT_PORT (SO_REUSEPORT)"
NSTREAMERS=$(( (IDLE_CONNS + PER_STREAMER - 1) / PER_STREAMER ))
PIDS=()
if want idle; then
  for ((i = 1; i <= NSTREAMERS; i++)); do
    sock=$RUN/bench-streamer-$i.sock
    rm -f "$sock"
    CHAT_STREAMER_LISTEN=unix:$sock,127.0.0.1:$DIRECT_PORT CHAT_ZMQ_ENDPOINT=ipc://$RUN/bench-streamer-$i.ipc \
      CHAT_LOG_LEVEL=warn setsid "$BIN/chat-streamer" >>"$LOG/bench-streamer-$i.log" 2>&1 </dev/null &
    EXTRA_PIDS+=($!)
    echo $! >"$RUN/bench-streamer-$i.pid"
    PIDS+=(--pid-file "$RUN/bench-streamer-$i.pid")
  done
  for ((i = 1; i <= NSTREAMERS; i++)); do
    for _ in $(seq 1 100); do
      [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' --unix-socket "$RUN/bench-streamer-$i.sock" http://localhost/status)" = 200 ] && break
      sleep 0.1
    done
  done
  echo "$NSTREAMERS streamer process(es) on 127.0.0.1:$DIRECT_PORT"
fi
# How the kernel spread them: the most connections each streamer's /status showed, sampled every second
# while the step runs (chat-bench's per-process lines divide each one's RSS by all the connections; its
# "all sampled server processes" line is the figure).
spread_sampler() {
  local -a most
  local i c
  while :; do
    for ((i = 1; i <= NSTREAMERS; i++)); do
      c=$(curl -s -m 1 --unix-socket "$RUN/bench-streamer-$i.sock" http://localhost/status | sed -n 's/^{"connections":\([0-9]*\).*/\1/p')
      [ "${c:-0}" -gt "${most[$i]:-0}" ] && most[$i]=$c
    done
    echo "connections per streamer (most seen): ${most[*]}" >"$LOG/bench-idle-spread.txt"
    sleep 1
  done
}
SAMPLER=""
if want idle; then spread_sampler & SAMPLER=$!; fi
step idle 90 timeout 300 "$BIN/chat-bench" idle --url "ws://127.0.0.1:$DIRECT_PORT/ws/chat" --conns "$IDLE_CONNS" \
  --duration 10 "${PIDS[@]}" --max-time 280
if [ -n "$SAMPLER" ]; then
  kill "$SAMPLER" 2>/dev/null
  wait "$SAMPLER" 2>/dev/null
  cat "$LOG/bench-idle-spread.txt" 2>/dev/null
fi
cleanup_extra

say "$PROXY_CONNS idle connections through lighttpd"
step proxy 60 timeout 200 "$BIN/chat-bench" idle --url "$WS_PROXY" --conns "$PROXY_CONNS" --duration 5 \
  --pid-file "$PID_LIGHTTPD" --pid-file "$PID_STREAMER" --max-time 180

# MariaDB's query cache answers a question asked before (SQL_CACHE on the knowledge-base reads): its hit
# share during the chat run goes in the table beside the figure.
qcache() { bash deploy/mariadb.sh client -N -e "SHOW GLOBAL STATUS WHERE Variable_name IN ('Qcache_hits','Qcache_inserts','Qcache_not_cached')" 2>/dev/null | awk '{ printf "%s ", $2 }'; }
# The passages the knowledge base holds now: the steps after kbgen label their figures with it, since a
# BENCH_ONLY without kbgen runs them on the sample knowledge base (the set-up above imports it alone).
kb_count() { bash deploy/mariadb.sh client chat -N -e "SELECT COUNT(*) FROM kb_documents" 2>/dev/null; } # "" when unknown
KB_AT_CHAT=$(kb_count)
QC_BEFORE=$(qcache)
# InnoDB's undo history (rows purge has still to clean up) once a second into $1, until killed: a purge
# running during a step takes a CPU from it.
history_sampler() {
  while :; do
    bash deploy/mariadb.sh client -N -e "SHOW ENGINE INNODB STATUS" 2>/dev/null | sed -n 's/.*History list length \([0-9]*\).*/\1/p'
    sleep 1
  done >"$1"
}
# "hits inserts" of the query cache between two qcache() readings
qc_delta() { echo "$1 $2" | awk 'NF == 6 { printf "%d %d", $4 - $1, $5 - $2 }'; }
say "chat through lighttpd: $CHAT_CONNS connections, closed loop, ${DURATION} s"
step chat $((DURATION + 30)) timeout $((DURATION + 120)) "$BIN/chat-bench" chat --url "$WS_PROXY" --conns "$CHAT_CONNS" \
  --duration "$DURATION" --warmup 2 --timeout 20 "${QOPT[@]}" --pid-file "$PID_LIGHTTPD" --pid-file "$PID_STREAMER" \
  --pid-file "$PID_WORKER" --pid-file "$PID_DB" --max-time $((DURATION + 100))

QC_AFTER=$(qcache)
say "token frames: $FRAME_CONNS connections, closed loop, a token every $FRAME_DELAY ms, ${DURATION} s"
if want frames && start_paced "$FRAME_DELAY"; then
  step frames $((DURATION + 30)) timeout $((DURATION + 120)) "$BIN/chat-bench" chat --url "ws+unix:$PACED_SOCK:/ws/chat" \
    --conns "$FRAME_CONNS" --duration "$DURATION" --warmup 3 --timeout 30 "${QOPT[@]}" \
    --pid-file "$RUN/bench-paced.pid" --pid-file "$RUN/bench-paced-worker.pid" --pid-file "$PID_DB" \
    --max-time $((DURATION + 100))
fi
cleanup_extra

say "first token: $STREAMS connections, open loop at $STREAM_RATE messages/s, a token every $STREAM_DELAY ms, ${DURATION} s"
if want stream && start_paced "$STREAM_DELAY"; then
  # The steps before asked the same question file: without this their query cache entries would answer
  # most of this step's searches, a warmer cache than a user's first questions meet (docs/benchmarks.md).
  bash deploy/mariadb.sh client -e "RESET QUERY CACHE" >/dev/null 2>&1 || echo "bench: RESET QUERY CACHE failed"
  KB_AT_STREAM=$(kb_count)
  echo "stream: the knowledge base holds $KB_AT_STREAM passages"
  QC_STREAM_BEFORE=$(qcache)
  history_sampler "$LOG/bench-stream-history.txt" & HSAMPLER=$!
  step stream $((DURATION + 30)) timeout $((DURATION + 120)) "$BIN/chat-bench" chat --url "ws+unix:$PACED_SOCK:/ws/chat" \
    --conns "$STREAMS" --rate "$STREAM_RATE" --duration "$DURATION" --warmup 5 --timeout 30 "${QOPT[@]}" \
    --pid-file "$RUN/bench-paced.pid" --pid-file "$RUN/bench-paced-worker.pid" --pid-file "$PID_DB" \
    --max-time $((DURATION + 100))
  QC_STREAM=$(qc_delta "$QC_STREAM_BEFORE" "$(qcache)")
  kill "$HSAMPLER" 2>/dev/null
  wait "$HSAMPLER" 2>/dev/null
  echo "stream: query cache hits / inserts ${QC_STREAM:-unknown}; InnoDB history length first / most / last" \
    "$(awk 'NR == 1 { f = $1 } $1 > m { m = $1 } { l = $1 } END { print f " / " m " / " l }' "$LOG/bench-stream-history.txt")"
fi
cleanup_extra

# The reconnect storm (resumable streams): every streaming client drops at once, reconnects and resumes; each answer
# must arrive whole exactly once (chat-storm checks the text) and be stored once (checked here).
say "reconnect storm: $STORM_CONNS streaming clients (a token every 25 ms) drop at once and resume"
STORM_PORT=$((CHAT_PORT + 7))
if want storm && PACED_TCP=$STORM_PORT PACED_SLOTS=$((STORM_CONNS / 2 + 64)) start_paced 25; then
  step storm 60 timeout 240 "$BIN/chat-storm" --url "ws://127.0.0.1:$STORM_PORT/ws/chat" --conns "$STORM_CONNS" \
    --timeout 120
  bash deploy/mariadb.sh client chat -N -e "SELECT COUNT(*), COALESCE(SUM(n <> 2), 0) FROM (SELECT s.id,
    (SELECT COUNT(*) FROM chat_messages m WHERE m.user_id = s.user_id AND m.session_id = s.id) AS n FROM chat_sessions s
    WHERE s.user_id LIKE 'storm-user-%') t" >"$LOG/bench-storm-db.txt" 2>&1
  read -r storm_sessions storm_bad_store <"$LOG/bench-storm-db.txt"
  echo "storm: $storm_sessions conversations in the database, ${storm_bad_store:-?} of them without exactly one stored turn"
fi
cleanup_extra

say "REST GET /health through lighttpd"
step health 25 timeout 60 "$BIN/chat-bench" rest --url "$HTTP_BASE/health" --conns "$REST_CONNS" --duration "$(q 10 3)" \
  --pid-file "$PID_LIGHTTPD" --pid-file "$PID_DB" --max-time 50

say "REST POST /api/v1/chat through lighttpd"
step rest $((DURATION + 20)) timeout $((DURATION + 80)) "$BIN/chat-bench" rest --url "$HTTP_BASE/api/v1/chat" \
  --conns 32 --duration "$DURATION" --timeout 20 "${QOPT[@]}" --pid-file "$PID_LIGHTTPD" --pid-file "$PID_DB" \
  --max-time $((DURATION + 60))

# The large knowledge base goes to its own database on the same server (kept between runs: generation is
# deterministic, so an existing one with the right size is reused).
say "retrieval over $KB_LARGE passages (database chat_bench_large)"
LARGE_ENV=("${DB_ENV[@]}" CHAT_DB_NAME=chat_bench_large)
have=0
want retrieval-large && have=$(bash deploy/mariadb.sh client -N -e "SELECT COUNT(*) FROM chat_bench_large.kb_documents WHERE source LIKE 'gen/%'" 2>/dev/null || echo 0)
gen_large() { env "${LARGE_ENV[@]}" "$BIN/chat-kb" setup && env "${LARGE_ENV[@]}" "$BIN/chat-kbgen" --passages "$KB_LARGE"; }
# a database kept from a run of an older version gets its migrations (kb_documents to Aria: about 10 s)
[ "$have" = "$KB_LARGE" ] && want retrieval-large && env "${LARGE_ENV[@]}" "$BIN/chat-kb" migrate >>"$LOG/bench-kbgen-large.txt" 2>&1
if ! want retrieval-large; then
  :
elif [ "$have" != "$KB_LARGE" ]; then
  step kbgen-large 90 gen_large
else
  echo "(reusing the existing $KB_LARGE-passage database)"
fi
RQ=$RETRIEVAL_Q
# about 0.03 s per question at 100,000 passages on 2 cores, after a warm-up of 200 questions that fills
# the word-frequency cache as a long-running worker's is (about 6 s): keep inside the budget
maxq=$(( ($(left) - 50) * 20 ))
[ "$maxq" -lt "$RQ" ] && RQ=$maxq
if ! want retrieval-large; then
  :
elif [ "$RQ" -ge 20 ]; then
  # the same questions as any earlier run: without this a second run is answered from the query cache
  bash deploy/mariadb.sh client -e "RESET QUERY CACHE" >/dev/null 2>&1
  step retrieval-large 30 timeout $(( $(left) - 20 )) env "${LARGE_ENV[@]}" "$BIN/chat-kbgen" --retrieval-bench "$RQ" --warmup 200
else
  echo "(skipped: not enough budget left)" | tee "$LOG/bench-retrieval-large.txt"
fi

# Issue 15's workload: what a token costs when a real model paces it. The stack again, its workers
# pacing a token every PACED_DELAY ms (so every token is its own frame) with enough slots for the largest
# N (2 x 640), on the sample knowledge base with the built-in questions (the issue's MariaDB target is
# per turn on it); N streams closed loop through lighttpd and on the streamer's socket. chat-bench
# samples every process group's CPU at the edges of the measured window; the table divides it by the
# token frames received in that window.
PACED_STEPS=()
for n in $PACED_STREAMS; do PACED_STEPS+=("paced-proxy-$n" "paced-direct-$n"); done
paced_wanted() { local x; for x in "${PACED_STEPS[@]}"; do want "$x" && return 0; done; return 1; }
if paced_wanted && [ "$(left)" -lt $((PACED_DURATION + 60)) ]; then
  echo "(skipped the paced steps: $(left) s of the budget left)"
elif paced_wanted; then
  say "paced streams: a token every $PACED_DELAY ms, closed loop, $PACED_STREAMS streams, ${PACED_DURATION} s each"
  env "${DB_ENV[@]}" "$BIN/chat-kbgen" --passages 0 >"$LOG/bench-kbgen-paced.txt" 2>&1
  bash deploy/stack.sh stop >>"$LOG/bench-stack.txt" 2>&1
  if CHAT_TOKEN_DELAY_MS=$PACED_DELAY CHAT_WORKERS=2 CHAT_WORKER_SLOTS=640 bash deploy/stack.sh start >>"$LOG/bench-stack.txt" 2>&1; then
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    for n in $PACED_STREAMS; do
      for via in proxy direct; do
        url=$WS_PROXY pids=(--pid-file "$PID_LIGHTTPD")
        [ "$via" = direct ] && url=$WS_DIRECT pids=()
        say "  $n streams, $([ "$via" = direct ] && echo "on the streamer's socket" || echo "through lighttpd")"
        step "paced-$via-$n" $((PACED_DURATION + 25)) timeout $((PACED_DURATION + 90)) "$BIN/chat-bench" chat --url "$url" \
          --conns "$n" --duration "$PACED_DURATION" --warmup 3 --timeout 30 "${pids[@]}" --pid-file "$PID_STREAMER" \
          --pid-file "$PID_WORKER" --pid-file "$PID_DB" --max-time $((PACED_DURATION + 80))
      done
    done
  else
    tail -5 "$LOG/bench-stack.txt"
    echo "(the stack did not start with paced workers)"
  fi
fi

say "stopping the stack"
cleanup
trap - INT TERM

# ---- the table ----
held=$(kv idle ready mode=)
held_failed=$(kv idle failed mode=)
idle_mem=$(kv idle bytes_per_conn server=all)
proxy_held=$(kv proxy ready mode=)
mem=$(kv mem bytes_per_conn server=chat-streamer)
lt_share=$(kv proxy bytes_per_conn server=lighttpd)
turns=$(kv chat turns_per_s mode=)
turns_small=$(kv chat-small turns_per_s mode=)
fail_small=$(kv chat-small turns_failed mode=)
fail_chat=$(kv chat turns_failed mode=)
out50=$(kv stream outside_p50_us mode=)
out99=$(kv stream outside_p99_us mode=)
qc_share=$(qc_delta "$QC_BEFORE" "$QC_AFTER" | awk 'NF == 2 && $1 + $2 > 0 { printf "%.0f", 100 * $1 / ($1 + $2) }')
frames=$(kv frames token_frames_per_s mode=)
frames_gap99=$(kv frames gap_p99_us mode=)
frames_cpu=$(kv frames cpu_pct server=bench-paced)
frame_us=$( [ -n "$frames_cpu" ] && [ -n "$frames" ] && awk -v c="$frames_cpu" -v f="$frames" 'BEGIN { if (f > 0) printf "%.1f", c * 1e4 / f }' )
frames_unpaced=$(kv chat token_frames_per_s mode=)
st_turn50=$(kv stream turn_p50_us mode=)
active=$( [ -n "$st_turn50" ] && awk -v r="$STREAM_RATE" -v t="$st_turn50" 'BEGIN { printf "%.0f", r * t / 1e6 }' )
toks=$(kv chat tokens_per_s mode=)
tpa=$(kv chat tokens_per_answer mode=)
ft50=$(kv stream first_p50_us mode=)
ft99=$(kv stream first_p99_us mode=)
sft50=$(kv stream srv_first_token_ms_p50_us mode=)
sft99=$(kv stream srv_first_token_ms_p99_us mode=)
gap50=$(kv chat gap_p50_us mode=)
gap99=$(kv chat gap_p99_us mode=)
ca99=$(kv connect connauth_p99_us mode=)
ca50=$(kv connect connauth_p50_us mode=)
r10=$(kv retrieval10k retrieval_p99_us)
rl50=$(kv retrieval-large retrieval_p50_us)
rl99=$(kv retrieval-large retrieval_p99_us)
rln=$(kv retrieval-large retrieval_passages)
rest=$(kv rest req_ok_per_s mode=)
rest_small=$(kv rest-small req_ok_per_s mode=)
health=$(kv health req_ok_per_s mode=)

kb() { [ -n "${1:-}" ] && awk -v b="$1" 'BEGIN { printf "%.1f KB", b / 1024 }' || echo "n/a"; }
row() { printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4"; }

# ---- issue 15's table: CPU per token frame of each process group, paced streams ----
# per STEP SERVER... : the summed window CPU (ms) of those servers per token frame received, in us
per() {
  local st=$1 f c sum=0 x; shift
  f=$(kv "$st" token_frames_win mode=)
  [ -n "$f" ] && [ "$f" != 0 ] || return 0
  for x in "$@"; do
    c=$(kv "$st" win_group_cpu_ms "server=$x ")
    [ -n "$c" ] || return 0
    sum=$(awk -v a="$sum" -v b="$c" 'BEGIN { print a + b }')
  done
  awk -v c="$sum" -v f="$f" 'BEGIN { printf "%.1f", c * 1000 / f }'
}
us() { [ -n "${1:-}" ] && echo "$1 us" || echo "n/a"; }
paced_table() {
  local n via st sw lt all db turns dbt fps gap99 ft50 ft99 fail
  local -a procs
  echo
  echo "Paced streams (issue 15): a token every $PACED_DELAY ms, every token its own frame, closed loop, sample knowledge base;"
  echo "CPU time of each process group in the measured window (/proc/PID/stat) / token frames received"
  echo
  row "figure" "target" "measured" "issue 15's baseline"
  row "---" "---" "---" "---"
  for n in $PACED_STREAMS; do
    for via in proxy direct; do
      st=paced-$via-$n
      [ -f "$LOG/bench-$st.txt" ] || continue
      sw=$(per "$st" chat-streamer chat-worker)
      procs=(chat-streamer chat-worker mariadb)
      [ "$via" = proxy ] && procs+=(lighttpd)
      all=$(per "$st" "${procs[@]}")
      db=$(kv "$st" win_group_cpu_ms "server=mariadb ")
      turns=$(kv "$st" turns_win mode=)
      dbt=$( [ -n "$db" ] && [ -n "$turns" ] && [ "$turns" != 0 ] && awk -v c="$db" -v t="$turns" 'BEGIN { printf "%.0f", c * 1000 / t }' )
      fps=$(kv "$st" token_frames_per_s mode=)
      gap99=$(kv "$st" gap_p99_us mode=)
      ft50=$(kv "$st" first_p50_us mode=)
      ft99=$(kv "$st" first_p99_us mode=)
      fail=$(kv "$st" turns_failed mode=)
      if [ "$via" = proxy ]; then
        lt=$(per "$st" lighttpd)
        row "$n streams through lighttpd: streamer + workers per token frame" "<= 6 us" \
          "$(us "$sw") $(verdict "$sw" le 6) (streamer $(us "$(per "$st" chat-streamer)"), workers $(us "$(per "$st" chat-worker)"); $(num "$fps") token frames/s, $(num "$fail") turns failed)" "33.2 us (16.9 + 16.3)"
        row "  lighttpd per token frame" "<= 12 us" "$(us "$lt") $(verdict "$lt" le 12)" "19.7 us"
        row "  all server processes incl. MariaDB per token frame" "<= 20 us" "$(us "$all") $(verdict "$all" le 20)" "62 us"
      else
        row "$n streams on the streamer's socket: streamer + workers per token frame" "<= 6 us" \
          "$(us "$sw") $(verdict "$sw" le 6) (streamer $(us "$(per "$st" chat-streamer)"), workers $(us "$(per "$st" chat-worker)"); $(num "$fps") token frames/s, $(num "$fail") turns failed)" "33.5 us"
        row "  all server processes incl. MariaDB per token frame" "-" "$(us "$all")" "43 us"
      fi
      row "  MariaDB CPU per turn" "<= 250 us" "$(us "$dbt") $(verdict "$dbt" le 250) ($(num "$turns") turns)" "~630 us"
      row "  inter-token gap p99; first token p50 / p99" "<= $((PACED_DELAY + 5)) ms; <= 1 ms / <= 5 ms" \
        "$(ms "$gap99") $(verdict "$gap99" le $(((PACED_DELAY + 5) * 1000))); $(ms "$ft50") / $(ms "$ft99") $(both "$(verdict "$ft50" le 1000)" "$(verdict "$ft99" le 5000)")" "-"
    done
  done
  row "memory per idle authenticated connection, streamer's socket (mem step)" "<= 2.5 KB" "$(kb "$mem") $(verdict "$mem" le 2560)" "2.4 KB"
  row "idle authenticated connections on the direct port (idle step)" ">= 100,000 at <= 2.5 KB" \
    "$(num "$held") at $(kb "$idle_mem") $(both "$(verdict "$held" ge 100000)" "$(verdict "$idle_mem" le 2560)") on $NSTREAMERS streamers" "2.4 KB"
  row "memory per idle authenticated connection, lighttpd's share (proxy step)" "<= 5 KB" "$(kb "$lt_share") $(verdict "$lt_share" le 5120)" "10.3 KB"
}

storm_row() {
  local lost dup gaps all ok=""
  lost=$(kv storm lost) dup=$(kv storm duplicated) gaps=$(kv storm gaps) all=$(kv storm all_s)
  [ -n "$lost" ] && ok=$(verdict "$((lost + dup + gaps + ${storm_bad_store:-1}))" le 0)
  row "reconnect storm: $(num "$STORM_CONNS") streaming clients drop at once and resume" "none lost, none duplicated" \
    "$(num "$(kv storm resumed)") resumed, all answered ${all:-?} s after the drop; lost ${lost:-?}, duplicated ${dup:-?}, gaps ${gaps:-?}, not stored once ${storm_bad_store:-?} $ok" "-"
}

first_token_row() {
  row "first token, ~$(num "${active:-}") active streams ($STREAM_RATE msg/s, a token every $STREAM_DELAY ms), $(num "${KB_AT_STREAM:-}") passages: p50 / p99" "<= 1 ms / <= 5 ms" \
    "$(ms "$ft50") / $(ms "$ft99") $(both "$(verdict "$ft50" le 1000)" "$(verdict "$ft99" le 5000)") (pipeline: $(ms "$sft50") / $(ms "$sft99"); outside it: $(ms "$out50") / $(ms "$out99"); query cache hits / inserts ${QC_STREAM:-?})" "500-1000 ms"
}

if [ -n "$ONLY" ]; then
  want storm && storm_row
  want stream && first_token_row
  paced_table
  echo
  echo "bench: done in $((SECONDS - START)) s (BENCH_ONLY=$ONLY)"
  exit 0
fi
echo
echo "Results (client-side latencies over loopback; full output in $LOG/bench-*.txt)"
echo
row "figure" "target" "measured" "spec's claim"
row "---" "---" "---" "---"
row "idle authenticated WebSocket connections, streamers' direct port (SO_REUSEPORT)" ">= 100,000" \
  "$(num "$held") held on $NSTREAMERS streamer process(es), $(num "${held_failed:-}") failed $(verdict "$held" ge 100000)" "1000+ concurrent"
row "idle authenticated WebSocket connections through lighttpd" ">= 9,000" "$(num "$proxy_held") $(verdict "$proxy_held" ge 9000)" "1000+ concurrent"
row "streamer memory per idle connection" "<= 8 KB" \
  "$(kb "$mem") $(verdict "$mem" le 8192) (lighttpd adds $(kb "$lt_share") per proxied connection)" "~5 MB"
row "chat turns/s through lighttpd ($CHAT_CONNS conns, extractive, no delay), $(num "$KB_AT_CHAT") passages, generated questions" ">= 2,000" \
  "$(num "$turns") $(verdict "$turns" ge 2000) (answers of ${tpa:-?} tokens; $(num "$fail_chat") turns failed; ${qc_share:-?} % of the reads from the query cache)" "100+ messages/s"
row "  same, sample knowledge base (187 passages), built-in questions" ">= 2,000" "$(num "$turns_small") $(verdict "$turns_small" ge 2000) ($(num "$fail_small") turns failed)" "-"
row "token frames delivered per second ($FRAME_CONNS streams, a token every $FRAME_DELAY ms)" ">= 100,000" \
  "$(num "$frames") $(verdict "$frames" ge 100000) (inter-token gap p99 $(ms "$frames_gap99"); streamer CPU ${frame_us:-?} us per token frame)" "a token every 20-100 ms per stream"
row "  tokens/s in the unpaced chat run (tokens coalesce into $(num "$frames_unpaced") frames/s)" "-" "$(num "$toks")" "-"
first_token_row
row "inter-token gap p50 / p99 (chat run)" "-" "$(ms "$gap50") / $(ms "$gap99")" "20-100 ms"
row "connect + auth (unloaded, streamer socket): p50 / p99" "p99 <= 1 ms" "$(ms "$ca50") / $(ms "$ca99") $(verdict "$ca99" le 1000)" \
  "10-50 ms + 50-100 ms"
row "retrieval p99 over $(num "$rln") passages (p50)" "<= 20 ms" "$(ms "$rl99") ($(ms "$rl50")) $(verdict "$rl99" le 20000)" "-"
row "retrieval p99 over $KB_PASSAGES passages" "-" "$(ms "$r10")" "-"
row "REST POST /api/v1/chat through lighttpd" ">= 1,000 req/s" "$(num "$rest") req/s $(verdict "$rest" ge 1000)" "-"
row "  same, sample knowledge base only (187 passages)" "-" "$(num "$rest_small") req/s" "-"
storm_row
row "REST GET /health through lighttpd" ">= 10,000 req/s" "$(num "$health") req/s $(verdict "$health" ge 10000)" "-"
paced_table
exited=$(grep -l '^BENCH server=.* exited=1' "$LOG"/bench-*.txt 2>/dev/null | sed 's|.*/bench-||; s|\.txt$||' | tr '\n' ' ')
[ -n "$exited" ] && echo && echo "WARNING: a server process exited during: $exited(its figures and the later ones are not valid)"
echo
echo "bench: done in $((SECONDS - START)) s"
