#!/usr/bin/env bash
# The cluster test (make test-cluster): three hosts built on this machine with network namespaces, a
# streamer on one and a worker on each of the two others, over CurveZMQ on TCP.
#
#   host s (streamer)      10.231.1.1 ──veth── 10.231.1.2   host w1 (worker)
#   tcp://*:5555, ws on    10.231.2.1 ──veth── 10.231.2.2   host w2 (worker)
#   127.0.0.1:8100 (its own loopback)
#
# Every address and interface lives inside the namespaces (the veth pairs are created there), so the
# machine's own network is never touched and two runs at once do not meet. The database is the private
# MariaDB under var/cluster, reached over its Unix socket (filesystems are shared between namespaces).
# Checks: both workers are admitted by key from their own addresses; build/tests/cluster/test_cluster
# (run in the streamer's namespace) gets every answer whole, with both worker hosts serving; with worker
# host 1's link cut the pool shrinks to host 2 and answers still arrive whole; with the link back, host
# 1 joins again.
#
# Needs root and iproute2 (`ip netns`). Bounded: the whole run stops after CHAT_CLUSTER_TIME_LIMIT
# seconds (default 180), and every process, namespace and the database are removed on exit, failed or
# not. Ends with "N passed, N failed"; logs in var/cluster/log.
set -uo pipefail
# The bound: the run is its own child under timeout, whose TERM reaches the trap below (cleanup first).
LIMIT=${CHAT_CLUSTER_TIME_LIMIT:-180}
if [ -z "${CLUSTER_UNDER_TIMEOUT:-}" ]; then
  CLUSTER_UNDER_TIMEOUT=1 exec timeout --kill-after=30 "$LIMIT" bash "$0" "$@"
fi
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT" || exit 1
for v in $(compgen -e | grep '^CHAT_'); do
  case $v in CHAT_LOG_LEVEL | CHAT_CLUSTER_TIME_LIMIT) ;; *) unset "$v" ;; esac
done
export CHAT_ROOT=$ROOT CHAT_VAR=$ROOT/var/cluster
export CHAT_DB_SOCKET=$CHAT_VAR/run/mariadb.sock CHAT_DB_USER=root CHAT_DB_PASSWORD="" CHAT_DB_NAME=chat_cluster
export CHAT_LOG_LEVEL=${CHAT_LOG_LEVEL:-info}
export JWT_SECRET=cluster-test-secret-0123456789abcdef0123
BIN=$ROOT/build/bin
LOG=$CHAT_VAR/log
KEYS=$CHAT_VAR/keys
PREFIX=chatc$$
NS_S=$PREFIX-s
NS_W=("$PREFIX-w1" "$PREFIX-w2")
NET=10.231
ZMQ_PORT=5555
WS_PORT=8100

passed=0; failed=0
ok() { echo "ok - $*"; passed=$((passed + 1)); }
not_ok() { echo "not ok - $*"; failed=$((failed + 1)); }
check() { # description command...
  local what=$1; shift
  if "$@"; then ok "$what"; else not_ok "$what"; fi
}
summary() { echo; echo "$passed passed, $failed failed"; }

pids=() namespaces=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 50); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done
  for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null; done
  bash deploy/mariadb.sh stop >/dev/null 2>&1
}
trap cleanup EXIT
trap 'echo "!! stopped (time limit or signal)"; not_ok "finished within ${LIMIT} s"; summary; exit 1' INT TERM

fail_now() { not_ok "$*"; summary; exit 1; }

# ---------------------------------------------------------------- preconditions
[ "$(id -u)" = 0 ] || fail_now "runs as root (ip netns needs it)"
command -v ip >/dev/null || fail_now "iproute2 is installed (ip)"
for b in chat-streamer chat-worker chat-keys chat-kb; do [ -x "$BIN/$b" ] || fail_now "build/bin/$b is built (make)"; done
[ -x build/tests/cluster/test_cluster ] || fail_now "build/tests/cluster/test_cluster is built (make)"
rm -rf "$LOG" "$KEYS"
mkdir -p "$LOG" && install -d -m 700 "$KEYS"

# ---------------------------------------------------------------- hosts and links
make_hosts() {
  local ns i
  for ns in "$NS_S" "${NS_W[@]}"; do
    ip netns add "$ns" || return 1
    namespaces+=("$ns")
    ip -n "$ns" link set lo up || return 1
  done
  for i in 1 2; do # streamer side "w$i", worker side "s"; a /24 of its own per link
    ip -n "$NS_S" link add "w$i" type veth peer name s netns "${NS_W[$((i - 1))]}" || return 1
    ip -n "$NS_S" addr add "$NET.$i.1/24" dev "w$i" && ip -n "$NS_S" link set "w$i" up || return 1
    ip -n "${NS_W[$((i - 1))]}" addr add "$NET.$i.2/24" dev s && ip -n "${NS_W[$((i - 1))]}" link set s up || return 1
  done
}
check "three hosts in network namespaces, a veth link from the streamer's to each worker's" make_hosts
[ "$failed" = 0 ] || fail_now "ip netns works here"

# ---------------------------------------------------------------- database and keys
bash deploy/mariadb.sh start >"$LOG/mariadb.out" 2>&1 || fail_now "the private MariaDB starts (see $LOG/mariadb.out)"
"$BIN/chat-kb" setup >"$LOG/chat-kb.log" 2>&1 || fail_now "chat-kb setup (see $LOG/chat-kb.log)"
S_PUB=$("$BIN/chat-keys" "$KEYS/streamer.key") || fail_now "chat-keys makes the streamer's key pair"
{
  echo "# the worker hosts this streamer admits"
  for i in 1 2; do echo "$("$BIN/chat-keys" "$KEYS/w$i.key")   # host w$i, $NET.$i.2"; done
} >"$KEYS/workers" || fail_now "chat-keys makes the workers' key pairs"

# ---------------------------------------------------------------- processes
# run_in NS LOGNAME VAR=value... PROGRAM: started in the background inside the namespace, pid kept.
run_in() {
  local ns=$1 log=$2; shift 2
  ip netns exec "$ns" env "$@" >"$LOG/$log.log" 2>&1 &
  pids+=($!)
}
run_in "$NS_S" streamer CHAT_ZMQ_ENDPOINT="tcp://*:$ZMQ_PORT" CHAT_STREAMER_LISTEN="127.0.0.1:$WS_PORT" \
  CHAT_CURVE_SECRET_FILE="$KEYS/streamer.key" CHAT_CURVE_ALLOWED="$KEYS/workers" "$BIN/chat-streamer"
for i in 1 2; do
  run_in "${NS_W[$((i - 1))]}" "worker-w$i" CHAT_ZMQ_ENDPOINT="tcp://$NET.$i.1:$ZMQ_PORT" \
    CHAT_CURVE_SECRET_FILE="$KEYS/w$i.key" CHAT_CURVE_SERVER_KEY="$S_PUB" CHAT_WORKERS=1 CHAT_WORKER_SLOTS=4 \
    CHAT_LLM_PROVIDER=extractive CHAT_TOKEN_DELAY_MS=5 "$BIN/chat-worker"
done

status() { ip netns exec "$NS_S" curl -s -m 2 "http://127.0.0.1:$WS_PORT/status"; }
worker_count() { status | grep -o '"pid":' | wc -l; }
# wait_workers N SECONDS: true once the streamer lists N worker processes.
wait_workers() {
  local deadline=$((SECONDS + $2))
  while [ "$(worker_count)" != "$1" ]; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep 0.2
  done
}
admitted() { grep -q "curve: admitted a peer from $NET.$1.2 " "$LOG/streamer.log"; }
# Distinct worker pids that completed jobs since line $1 of the streamer's log.
serving() { tail -n "+$1" "$LOG/streamer.log" | sed -n 's/.*completed on worker pid \([0-9]*\).*/\1/p' | sort -u | wc -l; }
# ask LABEL: the protocol check in the streamer's namespace; its cmocka lines go to $LOG/check-LABEL.out.
ask() {
  ip netns exec "$NS_S" env CLUSTER_URL="ws://127.0.0.1:$WS_PORT/ws/chat" CLUSTER_CONNS=8 CLUSTER_ROUNDS=3 \
    timeout 120 build/tests/cluster/test_cluster >"$LOG/check-$1.out" 2>&1
}

check "both worker hosts register with the streamer over CURVE" wait_workers 2 30
check "the streamer admitted worker host 1 by its key, from its own address" admitted 1
check "the streamer admitted worker host 2 by its key, from its own address" admitted 2

mark=$(($(wc -l <"$LOG/streamer.log") + 1))
check "24 answers arrive whole through the two worker hosts" ask both
check "both worker hosts served answers" test "$(serving $mark)" = 2

ip -n "$NS_S" link set w1 down
check "with worker host 1's link cut, the streamer drops it" wait_workers 1 15
mark=$(($(wc -l <"$LOG/streamer.log") + 1))
check "24 answers arrive whole through worker host 2 alone" ask one
check "only worker host 2 served them" test "$(serving $mark)" = 1
ip -n "$NS_S" link set w1 up
check "with the link back, worker host 1 joins again" wait_workers 2 30

grep -h -E '^\[  (PASSED|FAILED)|^# ' "$LOG"/check-*.out 2>/dev/null
summary
[ "$failed" = 0 ]
