#!/usr/bin/env bash
# The cluster test (make test-cluster): seven hosts built on this machine with network namespaces, one
# switch between them (a bridge in a namespace of its own), and the whole protocol through them.
#
#   host   address        runs
#   s1     10.231.0.1     front door: lighttpd :8000 over two streamers (Unix sockets), chat-fcgi (/health)
#   s2     10.231.0.2     a streamer alone on 10.231.0.2:8100 (a deployment's direct port)
#   w1/w2  10.231.0.11/12 a worker each, connected over CurveZMQ (TCP) to all three streamers
#   db1    10.231.0.21    MariaDB primary (binary log, GTID): every write, the session and history reads
#   db2    10.231.0.22    MariaDB replica of db1 (MariaDB's own replication, GTID): retrieval (CHAT_DB_READ_*)
#   c      10.231.0.10    the clients (build/tests/cluster/test_cluster), curl, the admin's edits
#
# Every address and interface lives inside the namespaces (the veth pairs are created there), so the
# machine's own network is never touched and two runs at once do not meet. Filesystems are shared: the
# hosts' folders are var/cluster/<host>, the keys var/cluster/keys, the logs var/cluster/log.
# `cluster.sh galera` runs the same stack on a three-node Galera cluster instead (db1, db2, db3 at .21-.23:
# the services write to db1 and read from db2), with the database checks only: the nodes synced, every
# table InnoDB, answers stored once and on every node, reads on db2, an edit on db1 seen there, db2 killed.
# Checks, in order: the hosts and the replication; the workers admitted by key from their own addresses;
# answers whole and stored once through both streamer hosts and both worker hosts; retrieval reading the
# replica (a document only the replica has is found, one only the primary has is not); an admin's edit
# on the primary seen by the next question, with the replica's lag measured and printed; answers
# dropped on one streamer host and resumed on the other; then, each with every answer in flight, a worker
# host killed, a streamer host killed and the replica killed: every answer arrives whole exactly once
# (an answer whose worker died with it ends in PROCESSING_ERROR and is asked again), is stored exactly
# once in the primary (counted there), /health/ready reports the dead replica and reads fall back to the
# primary. "Killed" is kill -9 of every process of the host's namespace.
#
# Needs root, iproute2 (`ip netns`), lighttpd and MariaDB (make deps). Bounded: the whole run stops after
# CHAT_CLUSTER_TIME_LIMIT seconds (default 300), and every process, namespace and database is removed on
# exit, failed or not (the servers' data too, unless CLUSTER_KEEP_DATA=1). Ends with "N passed, N
# failed (T s)"; logs in var/cluster/log and the servers' in var/cluster/db*/log.
set -uo pipefail
# The bound: the run is its own child under timeout, whose TERM reaches the trap below (cleanup first).
LIMIT=${CHAT_CLUSTER_TIME_LIMIT:-300}
if [ -z "${CLUSTER_UNDER_TIMEOUT:-}" ]; then
  CLUSTER_UNDER_TIMEOUT=1 exec timeout --kill-after=30 "$LIMIT" bash "$0" "$@"
fi
MODE=${1:-replica}
case $MODE in replica | galera) ;; *) echo "usage: cluster.sh [replica|galera]" >&2; exit 2 ;; esac
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT" || exit 1
for v in $(compgen -e | grep '^CHAT_'); do
  case $v in CHAT_LOG_LEVEL | CHAT_CLUSTER_TIME_LIMIT) ;; *) unset "$v" ;; esac
done
T0=$SECONDS
VAR=$ROOT/var/cluster
export CHAT_ROOT=$ROOT
export CHAT_LOG_LEVEL=${CHAT_LOG_LEVEL:-info}
export JWT_SECRET=cluster-test-secret-0123456789abcdef0123
BIN=$ROOT/build/bin
LOG=$VAR/log
KEYS=$VAR/keys
RUN=$VAR/run
PREFIX=chatc$$
NET=10.231.0
declare -A ADDR=([s1]=1 [s2]=2 [w1]=11 [w2]=12 [db1]=21 [db2]=22 [db3]=23 [c]=10)
HOSTS=(s1 s2 w1 w2 db1 db2 c)
[ "$MODE" = galera ] && HOSTS+=(db3)
ns() { echo "$PREFIX-$1"; }
FRONT_PORT=8000 DIRECT_PORT=8100
FRONT_URL="ws://$NET.1:$FRONT_PORT/ws/chat" DIRECT_URL="ws://$NET.2:$DIRECT_PORT/ws/chat"
DB_NAME=chat_cluster DB_USER=chat DB_PASSWORD=cluster-db-password
# What the services on every host are told about the database: the primary for writes, the replica
# for the reads that may be stale.
DB_ENV=(CHAT_DB_HOST="$NET.21" CHAT_DB_PORT=3306 CHAT_DB_USER=$DB_USER CHAT_DB_PASSWORD=$DB_PASSWORD
  CHAT_DB_NAME=$DB_NAME CHAT_DB_READ_HOST="$NET.22" CHAT_DB_READ_PORT=3306)
[ -n "${CLUSTER_BREAK_NO_REPLICA:-}" ] && DB_ENV=("${DB_ENV[@]:0:5}") # the check of the checks: no replica reads

# What the checks call the database hosts: the read handle's server and the write handle's.
READER="the replica" WRITER="the primary"
[ "$MODE" = galera ] && READER="read node db2" WRITER="node db1"

passed=0; failed=0
ok() { echo "ok - $*"; passed=$((passed + 1)); }
not_ok() { echo "not ok - $*"; failed=$((failed + 1)); }
check() { # description command...
  local what=$1; shift
  if "$@"; then ok "$what"; else not_ok "$what"; fi
}
summary() { echo; echo "$passed passed, $failed failed ($((SECONDS - T0)) s)"; }

namespaces=()
# Every process of a host: the namespace's own list (a supervisor's children included).
host_pids() { ip netns pids "$(ns "$1")" 2>/dev/null; }
kill_host() { host_pids "$1" | xargs -r kill -KILL 2>/dev/null; }
cleanup() {
  trap - EXIT INT TERM
  local h
  for h in "${HOSTS[@]}"; do host_pids "$h" | xargs -r kill -TERM 2>/dev/null; done
  for _ in $(seq 50); do
    local alive=0
    for h in "${HOSTS[@]}"; do [ -n "$(host_pids "$h")" ] && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for h in "${HOSTS[@]}"; do kill_host "$h"; done
  for n in "${namespaces[@]}"; do ip netns del "$n" 2>/dev/null; done
  # the servers' data (about 230 MB each); their logs stay in var/cluster/db*/log
  [ -n "${CLUSTER_KEEP_DATA:-}" ] || rm -rf "$VAR"/db*/data
}
trap cleanup EXIT
trap 'echo "!! stopped (time limit or signal)"; not_ok "finished within ${LIMIT} s"; summary; exit 1' INT TERM

fail_now() { not_ok "$*"; summary; exit 1; }

# ---------------------------------------------------------------- preconditions
[ "$(id -u)" = 0 ] || fail_now "runs as root (ip netns needs it)"
command -v ip >/dev/null || fail_now "iproute2 is installed (ip)"
for b in chat-streamer chat-worker chat-fcgi chat-keys chat-kb; do [ -x "$BIN/$b" ] || fail_now "build/bin/$b is built (make)"; done
[ -x build/tests/cluster/test_cluster ] || fail_now "build/tests/cluster/test_cluster is built (make)"
LIGHTTPD=$(command -v lighttpd || echo /usr/sbin/lighttpd)
MARIADBD=$(command -v mariadbd || echo /usr/sbin/mariadbd)
INSTALL_DB=$(command -v mariadb-install-db || command -v mysql_install_db)
for b in "$LIGHTTPD" "$MARIADBD" "$INSTALL_DB"; do [ -x "$b" ] || fail_now "$b is installed (make deps)"; done
rm -rf "$VAR"
mkdir -p "$LOG" "$RUN" && install -d -m 700 "$KEYS"
for h in "${HOSTS[@]}"; do mkdir -p "$VAR/$h/log" "$VAR/$h/run" "$VAR/$h/tmp"; done

# ---------------------------------------------------------------- hosts and the switch
make_hosts() {
  local sw h
  sw=$(ns sw)
  ip netns add "$sw" && namespaces+=("$sw") || return 1
  ip -n "$sw" link add name sw0 type bridge && ip -n "$sw" link set sw0 up || return 1
  for h in "${HOSTS[@]}"; do
    ip netns add "$(ns "$h")" && namespaces+=("$(ns "$h")") || return 1
    ip -n "$(ns "$h")" link set lo up || return 1
    ip -n "$sw" link add "p-$h" type veth peer name eth0 netns "$(ns "$h")" || return 1
    ip -n "$sw" link set "p-$h" master sw0 && ip -n "$sw" link set "p-$h" up || return 1
    ip -n "$(ns "$h")" addr add "$NET.${ADDR[$h]}/24" dev eth0 && ip -n "$(ns "$h")" link set eth0 up || return 1
  done
}
check "${#HOSTS[@]} hosts in network namespaces on one switch" make_hosts
[ "$failed" = 0 ] || fail_now "ip netns works here"

# run_in HOST LOGNAME VAR=value... PROGRAM: started in the background inside the host's namespace.
run_in() {
  local h=$1 log=$2; shift 2
  ip netns exec "$(ns "$h")" env CHAT_VAR="$VAR/$h" "$@" >"$LOG/$log.log" 2>&1 &
  disown $! # killed hosts are this test's doing: no "Killed" line from the shell
}

# ---------------------------------------------------------------- MariaDB primary and replica
# db HOST SQL...: the mariadb client as root on the host's own socket.
db() { local h=$1; shift; mariadb --no-defaults -uroot --socket="$VAR/$h/run/mariadb.sock" "$@"; }
# mariadbd runs as the mysql system user when there is one (as Debian runs it: Galera's rsync state
# transfer needs it, its rsync daemon started by root would drop to nobody), else as root.
DB_OS_USER=root
id mysql >/dev/null 2>&1 && DB_OS_USER=mysql
# start_db HOST SERVER-ID OPTION...: a fresh server on the host's address, the options of its role after.
start_db() {
  local h=$1 id=$2 d=$VAR/$1/data
  shift 2
  chown "$DB_OS_USER": "$VAR/$h" "$VAR/$h/run" "$VAR/$h/tmp" "$VAR/$h/log" || return 1
  "$INSTALL_DB" --no-defaults --datadir="$d" --user="$DB_OS_USER" --auth-root-authentication-method=socket \
    --skip-test-db >"$LOG/$h-install.log" 2>&1 || return 1
  run_in "$h" "mariadb-$h" "$MARIADBD" --no-defaults --datadir="$d" --user="$DB_OS_USER" \
    --socket="$VAR/$h/run/mariadb.sock" --pid-file="$VAR/$h/run/mariadb.pid" --bind-address="$NET.${ADDR[$h]}" \
    --port=3306 --skip-name-resolve --server-id="$id" --binlog-format=ROW --log-error="$VAR/$h/log/mariadb.err" \
    --tmpdir="$VAR/$h/tmp" --innodb-buffer-pool-size=64M --innodb-log-file-size=16M \
    --innodb-ft-min-token-size=1 --innodb-ft-enable-stopword=0 --ft-min-word-len=1 --ft-stopword-file= \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci --query-cache-type=2 \
    --query-cache-size=16M "$@"
}
GALERA_PROVIDER=${CHAT_GALERA_PROVIDER:-/usr/lib/galera/libgalera_smm.so}
# A Galera node (docs/scaling.md): InnoDB only, row events, interleaved auto-increment locks; the
# first node bootstraps the cluster (--wsrep-new-cluster), the others join it and get its data by rsync.
galera_opts() {
  echo --wsrep-on=ON --wsrep-provider="$GALERA_PROVIDER" --wsrep-cluster-name=chat-cluster \
    --wsrep-cluster-address="gcomm://$NET.21,$NET.22,$NET.23" --wsrep-node-address="$NET.${ADDR[$1]}" \
    --wsrep-sst-method=rsync --default-storage-engine=InnoDB --innodb-autoinc-lock-mode=2
}
galera_size() { db "$1" -N -e "SHOW STATUS LIKE 'wsrep_cluster_size'" 2>/dev/null | awk '{print $2}'; }
galera_synced() { db "$1" -N -e "SHOW STATUS LIKE 'wsrep_local_state_comment'" 2>/dev/null | grep -q Synced; }
galera_up() { # every node in one cluster of three, each Synced
  local h
  for _ in $(seq 150); do
    [ "$(galera_size db1)" = 3 ] && galera_synced db1 && galera_synced db2 && galera_synced db3 && return 0
    sleep 0.2
  done
  for h in db1 db2 db3; do echo "$h: size $(galera_size $h)" >&2; done
  return 1
}
wait_db() { for _ in $(seq 150); do db "$1" -e 'SELECT 1' >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }
replicate() {
  db db1 -e "CREATE USER repl@'$NET.22' IDENTIFIED BY 'cluster-repl'; GRANT REPLICATION SLAVE ON *.* TO repl@'$NET.22';" &&
    db db2 -e "CHANGE MASTER TO MASTER_HOST='$NET.21', MASTER_PORT=3306, MASTER_USER='repl',
               MASTER_PASSWORD='cluster-repl', MASTER_USE_GTID=slave_pos; START SLAVE;"
}
replicating() {
  local st
  for _ in $(seq 50); do
    st=$(db db2 -e 'SHOW SLAVE STATUS\G' 2>/dev/null)
    grep -q 'Slave_IO_Running: Yes' <<<"$st" && grep -q 'Slave_SQL_Running: Yes' <<<"$st" && return 0
    sleep 0.2
  done
  echo "$st" | grep -E 'Running|Error' >&2
  return 1
}
# The services' account, made on the primary and replicated: its data, and SLAVE MONITOR so that
# SHOW SLAVE STATUS answers the replica check (docs/scaling.md).
schema() {
  db db1 -e "CREATE DATABASE $DB_NAME; CREATE USER $DB_USER@'$NET.%' IDENTIFIED BY '$DB_PASSWORD';
             GRANT ALL ON $DB_NAME.* TO $DB_USER@'$NET.%'; GRANT SLAVE MONITOR ON *.* TO $DB_USER@'$NET.%';" &&
    CHAT_VAR=$VAR/db1 CHAT_DB_SOCKET=$VAR/db1/run/mariadb.sock CHAT_DB_USER=root CHAT_DB_PASSWORD= CHAT_DB_NAME=$DB_NAME \
      "$BIN/chat-kb" setup >"$LOG/chat-kb.log" 2>&1
}
kb_count() { db "$1" -N -e "SELECT COUNT(*) FROM $DB_NAME.kb_documents" 2>/dev/null; }
same_kb() {
  for _ in $(seq 50); do
    [ -n "$(kb_count db1)" ] && [ "$(kb_count db1)" -gt 0 ] && [ "$(kb_count db1)" = "$(kb_count "${1:-db2}")" ] && return 0
    sleep 0.2
  done
  return 1
}
# Only InnoDB tables are replicated by Galera: none of the schema's may be anything else, but for
# kb_search, the derived Aria copy that a Galera node never searches (sql/README.md).
all_innodb() {
  [ "$(db db1 -N -e "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema='$DB_NAME'
                      AND table_type='BASE TABLE' AND engine <> 'InnoDB' AND table_name <> 'kb_search'")" = 0 ]
}
if [ "$MODE" = replica ]; then
  start_db db1 1 --log-bin="$VAR/db1/data/binlog" && start_db db2 2 --read-only=ON ||
    fail_now "the two MariaDB servers install (see $LOG/db*-install.log)"
  check "the MariaDB primary starts on host db1" wait_db db1
  check "the MariaDB replica starts on host db2" wait_db db2
  [ "$failed" = 0 ] || fail_now "MariaDB starts in a namespace (see $VAR/db*/log/mariadb.err)"
  if [ -z "${CLUSTER_BREAK_NO_REPLICATION:-}" ]; then # the check of the checks: a replica that is not one
    check "the replica replicates from the primary over TCP with GTID" eval 'replicate && replicating'
  fi
  check "chat-kb setup on the primary (schema, knowledge base, the services' account)" schema
  check "the replica has the primary's knowledge base" same_kb
else
  [ -r "$GALERA_PROVIDER" ] || fail_now "the Galera provider $GALERA_PROVIDER is installed (galera-4, make deps)"
  [ "$DB_OS_USER" = mysql ] || fail_now "the mysql system user exists (Galera's rsync state transfer)"
  start_db db1 1 $(galera_opts db1) --wsrep-new-cluster || fail_now "Galera node db1 installs"
  check "Galera node db1 bootstraps the cluster" wait_db db1
  start_db db2 2 $(galera_opts db2) && start_db db3 3 $(galera_opts db3) || fail_now "Galera nodes db2, db3 install"
  check "Galera nodes db2 and db3 join it: one cluster of three, every node Synced" galera_up
  [ "$failed" = 0 ] || fail_now "Galera starts in namespaces (see $VAR/db*/log/mariadb.err)"
  check "chat-kb setup on node db1 (schema, knowledge base, the services' account)" schema
  # the check of the checks: a knowledge base in Aria, which Galera does not replicate
  [ -n "${CLUSTER_BREAK_ARIA_KB:-}" ] && db db1 -e "ALTER TABLE $DB_NAME.kb_documents ENGINE=Aria"
  check "every table of the schema is InnoDB (Galera replicates InnoDB only)" all_innodb
  check "nodes db2 and db3 have db1's knowledge base" eval 'same_kb db2 && same_kb db3'
fi

# ---------------------------------------------------------------- keys
S1_PUB=$("$BIN/chat-keys" "$KEYS/s1.key") || fail_now "chat-keys makes host s1's streamer key pair"
S2_PUB=$("$BIN/chat-keys" "$KEYS/s2.key") || fail_now "chat-keys makes host s2's streamer key pair"
{
  echo "# the worker hosts the streamers admit"
  for i in 1 2; do echo "$("$BIN/chat-keys" "$KEYS/w$i.key")   # host w$i, $NET.1$i"; done
} >"$KEYS/workers" || fail_now "chat-keys makes the workers' key pairs"

# ---------------------------------------------------------------- streamers, front door, workers
# Each streamer host has a key pair of its own (the two streamers of s1 share s1's), and the workers name
# the key of each endpoint (CHAT_CURVE_SERVER_KEY, a list in CHAT_ZMQ_ENDPOINT's order); one list of
# admitted workers.
CURVE_S1=(CHAT_CURVE_SECRET_FILE="$KEYS/s1.key" CHAT_CURVE_ALLOWED="$KEYS/workers")
CURVE_S2=(CHAT_CURVE_SECRET_FILE="$KEYS/s2.key" CHAT_CURVE_ALLOWED="$KEYS/workers")
run_in s1 streamer-s1a "${CURVE_S1[@]}" "${DB_ENV[@]}" CHAT_ZMQ_ENDPOINT="tcp://$NET.1:5555" \
  CHAT_STREAMER_LISTEN="unix:$RUN/s1a.sock" "$BIN/chat-streamer"
run_in s1 streamer-s1b "${CURVE_S1[@]}" "${DB_ENV[@]}" CHAT_ZMQ_ENDPOINT="tcp://$NET.1:5556" \
  CHAT_STREAMER_LISTEN="unix:$RUN/s1b.sock" "$BIN/chat-streamer"
run_in s2 streamer-s2 "${CURVE_S2[@]}" "${DB_ENV[@]}" CHAT_ZMQ_ENDPOINT="tcp://$NET.2:5555" \
  CHAT_STREAMER_LISTEN="$NET.2:$DIRECT_PORT" "$BIN/chat-streamer"
run_in s1 fcgi "${DB_ENV[@]}" CHAT_FCGI_LISTEN="$RUN/fcgi.sock" CHAT_STREAMER_LISTEN="unix:$RUN/s1a.sock" \
  CHAT_LLM_PROVIDER=extractive "$BIN/chat-fcgi"
run_in s1 lighttpd CLUSTER_FRONT_BIND="$NET.1" CLUSTER_FRONT_PORT=$FRONT_PORT CLUSTER_FRONT_DIR="$VAR/s1" \
  CLUSTER_STREAMER_A="$RUN/s1a.sock" CLUSTER_STREAMER_B="$RUN/s1b.sock" CLUSTER_FCGI_SOCKET="$RUN/fcgi.sock" \
  "$LIGHTTPD" -D -f tests/cluster/frontdoor.conf
ENDPOINTS="tcp://$NET.1:5555,tcp://$NET.1:5556,tcp://$NET.2:5555" SERVER_KEYS="$S1_PUB,$S1_PUB,$S2_PUB"
[ -n "${CLUSTER_BREAK_ONE_HOST_POOL:-}" ] && ENDPOINTS="tcp://$NET.1:5555,tcp://$NET.1:5556" SERVER_KEYS="$S1_PUB" # the check of the checks
start_worker() {
  run_in "w$1" "worker-w$1" "${DB_ENV[@]}" CHAT_ZMQ_ENDPOINT="$ENDPOINTS" CHAT_CURVE_SECRET_FILE="$KEYS/w$1.key" \
    CHAT_CURVE_SERVER_KEY="$SERVER_KEYS" CHAT_WORKERS=1 CHAT_WORKER_SLOTS=12 CHAT_LLM_PROVIDER=extractive \
    CHAT_TOKEN_DELAY_MS=20 "$BIN/chat-worker"
}
start_worker 1
start_worker 2

STREAMERS=(s1a s1b s2)
status() { # streamer name
  case $1 in
    s2) ip netns exec "$(ns c)" curl -s -m 2 "http://$NET.2:$DIRECT_PORT/status" ;;
    *) curl -s -m 2 --unix-socket "$RUN/$1.sock" http://streamer/status ;;
  esac
}
worker_count() { status "$1" | grep -o '"pid":' | wc -l; }
# wait_workers N SECONDS STREAMER...: true once each streamer lists N worker processes.
wait_workers() {
  local n=$1 deadline=$((SECONDS + $2)) s
  shift 2
  for s in "$@"; do
    while [ "$(worker_count "$s")" != "$n" ]; do
      [ $SECONDS -ge $deadline ] && return 1
      sleep 0.2
    done
  done
}
admitted() { grep -q "curve: admitted a peer from $NET.1$1 " "$LOG/streamer-s2.log" "$LOG/streamer-s1a.log"; }
marks() { local s; for s in "${STREAMERS[@]}"; do echo $(($(wc -l <"$LOG/streamer-$s.log") + 1)); done; }
# Distinct worker pids that completed jobs on any streamer since the marks "$@".
serving() {
  local i=0 s
  for s in "${STREAMERS[@]}"; do
    tail -n "+${1:-1}" "$LOG/streamer-$s.log"
    shift
  done | sed -n 's/.*completed on worker pid \([0-9]*\).*/\1/p' | sort -u | wc -l
}
ready() { ip netns exec "$(ns c)" curl -s -m 3 "http://$NET.1:$FRONT_PORT/health/ready"; }
# ask LABEL VAR=value...: the protocol check on the client host; its output goes to $LOG/check-LABEL.out.
ask() {
  local label=$1; shift
  ip netns exec "$(ns c)" env CLUSTER_URL="$FRONT_URL,$DIRECT_URL" CLUSTER_CONNS=12 CLUSTER_ROUNDS=2 \
    CLUSTER_TAG="$label-$$" "${DB_ENV[@]:0:5}" "$@" \
    timeout 150 build/tests/cluster/test_cluster >"$LOG/check-$label.out" 2>&1
  local rc=$?
  grep '^# ' "$LOG/check-$label.out" | sed "s/^# /#   $label: /"
  return $rc
}
# sources LABEL QUESTION: one question asked once; prints the sources its answer cites, or FAILED when
# the answer was not whole or not stored once.
sources() {
  ask "$1" CLUSTER_CONNS=1 CLUSTER_ROUNDS=1 CLUSTER_QUESTION="$2" >/dev/null || { echo FAILED; return; }
  sed -n 's/^# sources: //p' "$LOG/check-$1.out"
}

check "all three streamers (two behind the front door on s1, one on s2) list both worker hosts, over CURVE" \
  wait_workers 2 30 "${STREAMERS[@]}"
check "the streamers admitted worker host 1 by its key, from its own address" admitted 1
check "the streamers admitted worker host 2 by its key, from its own address" admitted 2
check "/health/ready through the front door reports $READER usable" \
  eval 'for _ in $(seq 30); do ready | grep -q "\"replica\":{\"ok\":true" && break; sleep 0.3; done; ready | grep -q "\"replica\":{\"ok\":true"'

# ---------------------------------------------------------------- answers through every host
m=($(marks))
check "24 answers whole on 12 connections over both streamer hosts, stored once in $WRITER" ask both
check "both worker hosts served them" test "$(serving "${m[@]}")" = 2

# ---------------------------------------------------------------- retrieval reads the replica
# A document only the replica has (written there outside replication) and one only the primary has
# (sql_log_bin=0; on Galera wsrep_on=OFF for the session): while the replica is usable, retrieval finds
# the first and not the second. (In Galera mode "the replica" is node db2, the read node.)
LOCAL="SET sql_log_bin=0;"
[ "$MODE" = galera ] && LOCAL="SET SESSION wsrep_on=OFF;"
# Each is written into the derived copy kb_search by hand in the same local session, and its change row
# deleted there: left to the copier, the primary's copy would replicate its document after all, and the
# primary's deletes of its change ids would take the replica's local one (the ids are each server's own).
local_doc() { # NODE ID SOURCE TITLE BODY
  db "$1" -e "$LOCAL USE $DB_NAME; INSERT INTO kb_documents (id, source, title, body) VALUES ($2, '$3', '$4', '$5');
    INSERT INTO kb_search (id, source, title, agent, model_id, body)
      SELECT id, source, title, agent, model_id, body FROM kb_documents WHERE id = $2;
    DELETE FROM kb_changes WHERE doc_id = $2;"
}
local_doc db2 900001 cluster/replica-only.md 'Vexlin hose' 'The vexlin hose is replaced every seven seasons.'
local_doc db1 900002 cluster/primary-only.md 'Quorbit bracket' 'The quorbit bracket bolts are torqued to 31 Nm.'
Q_REPLICA="How often is the vexlin hose replaced?"
Q_PRIMARY="What torque do the quorbit bracket bolts take?"
src=$(sources replica-doc "$Q_REPLICA")
echo "#   replica-doc: sources $src"
check "retrieval reads $READER: $READER's own document is found" grep -q 'cluster/replica-only.md' <<<"$src"
src=$(sources primary-doc "$Q_PRIMARY")
echo "#   primary-doc: sources $src"
check "retrieval reads $READER: $WRITER's unreplicated document is not found" \
  eval '[ -n "$src" ] && [ "$src" != FAILED ] && ! grep -q "cluster/primary-only.md" <<<"$src"'

# ---------------------------------------------------------------- an admin's edit, and the lag
# Five edits committed on the primary (the mariadb client returns after the COMMIT); each polled on the
# replica until there (each poll is a client start, about 5 ms: the figures are upper bounds); after
# the first, the next question must find the new document.
edit_lags() {
  local i t0 lag
  for i in 1 2 3 4 5; do
    db db1 -e "INSERT INTO $DB_NAME.kb_documents (source, title, body) VALUES ('cluster/edit-$i.md',
      'Plimsor gauge $i', 'The plimsor gauge $i reads 4 bar when the plimsor pump is healthy.')" || return 1
    t0=$(date +%s%N)
    until [ "$(db db2 -N -e "SELECT COUNT(*) FROM $DB_NAME.kb_documents WHERE source='cluster/edit-$i.md'")" = 1 ]; do
      [ $(($(date +%s%N) - t0)) -gt 10000000000 ] && return 1
    done
    lag=$((($(date +%s%N) - t0) / 1000000))
    echo "$lag" >>"$LOG/lags.txt"
    if [ "$i" = 1 ]; then
      src=$(sources edit "What does the plimsor gauge 1 read when the pump is healthy?")
      echo "#   edit: the next question cites $src"
      grep -q 'cluster/edit-1.md' <<<"$src" || return 1
    fi
  done
}
rm -f "$LOG/lags.txt"
check "an admin's edit on $WRITER reaches $READER and the next question finds it" edit_lags
[ -s "$LOG/lags.txt" ] && echo "#   replica lag of an edit, ms (5 edits, sorted): $(sort -n "$LOG/lags.txt" | tr '\n' ' ')"

# ---------------------------------------------------------------- dropped, resumed on the other host
# (the Galera mode goes from the edit straight to the read node's death: the rest is the database's
# business only in the replica mode's runs)
if [ "$MODE" = replica ]; then
check "24 answers dropped after 3 tokens on one streamer host resume whole on the other, stored once" \
  eval 'ask resume CLUSTER_DROP_TOKENS=3 && grep -q "24 answers whole on 12 connections, 12 resumed" "$LOG/check-resume.out"'

# ---------------------------------------------------------------- a worker host dies
check "24 answers with worker host 1 killed mid-answer: whole (or lost with it, asked again), stored once" \
  ask worker-killed CLUSTER_MAY_LOSE=1 CLUSTER_KILL_CMD="ip netns pids $(ns w1) | xargs -r kill -KILL"
check "the streamers drop worker host 1" wait_workers 1 15 "${STREAMERS[@]}"
m=($(marks))
check "24 answers whole through worker host 2 alone, stored once" ask one-worker
check "only worker host 2 served them" test "$(serving "${m[@]}")" = 1
start_worker 1
check "worker host 1 restarted joins every streamer again" wait_workers 2 30 "${STREAMERS[@]}"

# ---------------------------------------------------------------- a worker host's network dies
# Its processes live on, unreachable: no RST, only the heartbeats tell.
ip -n "$(ns w2)" link set eth0 down
check "with worker host 2's link cut, the streamers drop it" wait_workers 1 20 "${STREAMERS[@]}"
m=($(marks))
check "24 answers whole through worker host 1 alone, stored once" ask link-cut
check "only worker host 1 served them" test "$(serving "${m[@]}")" = 1
ip -n "$(ns w2)" link set eth0 up
check "with the link back, worker host 2 joins every streamer again" wait_workers 2 30 "${STREAMERS[@]}"

# ---------------------------------------------------------------- a streamer host dies
check "24 answers with streamer host 2 killed mid-answer: its clients resume on host 1, whole, stored once" \
  eval 'ask streamer-killed CLUSTER_KILL_CMD="ip netns pids $(ns s2) | xargs -r kill -KILL" &&
        grep -q "resumed on another streamer" "$LOG/check-streamer-killed.out" &&
        ! grep -q " 0 resumed" "$LOG/check-streamer-killed.out"'
fi

# ---------------------------------------------------------------- the replica dies
replica_down() {
  for _ in $(seq 40); do ready | grep -q '"replica":{"ok":false' && return 0; sleep 0.25; done
  ready >&2; echo >&2
  return 1
}
# ---------------------------------------------------------------- the replica stops applying
# A replica whose SQL thread stops falls behind without a bound (Seconds_Behind_Master NULL): reported
# and skipped like a dead one, and used again once it applies again. The workers check their route
# every CHAT_DB_REPLICA_CHECK_MS (2 s), hence the wait before each question.
if [ "$MODE" = replica ]; then
  replica_up() {
    for _ in $(seq 40); do ready | grep -q '"replica":{"ok":true' && return 0; sleep 0.25; done
    return 1
  }
  db db2 -e "STOP SLAVE SQL_THREAD"
  check "a replica that stops applying the primary's changes is reported by /health/ready" replica_down
  sleep 2.5
  src=$(sources primary-doc-stalled "$Q_PRIMARY")
  echo "#   primary-doc-stalled: sources $src"
  check "reads skip a replica that stopped applying: the primary's own document is found" \
    grep -q 'cluster/primary-only.md' <<<"$src"
  db db2 -e "START SLAVE SQL_THREAD"
  check "the replica applying again is reported usable again" replica_up
  sleep 2.5
  src=$(sources replica-doc-again "$Q_REPLICA")
  check "reads go to the replica again: its own document is found" grep -q 'cluster/replica-only.md' <<<"$src"
fi

check "24 answers with $READER killed mid-answer and half of them asked right after: whole, stored once" \
  ask replica-killed CLUSTER_URL="$FRONT_URL" CLUSTER_KILL_STAGGER=1 CLUSTER_KILL_CMD="ip netns pids $(ns db2) | xargs -r kill -KILL"
check "/health/ready reports $READER dead (and stays ready)" eval 'replica_down && ready | grep -q "\"status\":\"ready\""'
if [ "$MODE" = galera ]; then
  rows() { db "$1" -N -e "SELECT COUNT(*) FROM $DB_NAME.chat_messages" 2>/dev/null; }
  check "the two nodes left form the cluster (size 2, quorum kept)" eval '[ "$(galera_size db1)" = 2 ]'
  same_rows() { for _ in $(seq 25); do [ "$(rows db1)" = "$(rows db3)" ] && return 0; sleep 0.2; done; return 1; }
  check "node db3 holds every message stored through db1 ($(rows db1) rows)" same_rows
fi
echo "#   /health/ready: $(ready)"
src=$(sources primary-doc-after "$Q_PRIMARY")
echo "#   primary-doc-after: sources $src"
check "reads fall back to $WRITER: its unreplicated document is found now" grep -q 'cluster/primary-only.md' <<<"$src"

for f in "$LOG"/check-*.out; do grep -h -E '^\[  FAILED|^\[  ERROR|^\[ +FAILED|error|Failure' "$f" | sed "s|^|#   $(basename "$f" .out): |"; done 2>/dev/null | head -40
summary
[ "$failed" = 0 ]
