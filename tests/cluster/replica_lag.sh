#!/usr/bin/env bash
# Measures how long an edit on a MariaDB primary takes to be visible on a replica: two throw-away
# servers under $D (default /tmp/chat-repl) on 127.0.0.1:18561/18562, GTID replication, 20 INSERTs each
# polled on the replica. Prints the sorted milliseconds (docs/scaling.md) and stops both servers.
set -eu
D=${D:-/tmp/chat-repl}; mkdir -p "$D"; B=/usr/sbin/mariadbd; I=$(command -v mariadb-install-db || command -v mysql_install_db)
ME=$(id -un); U=(); [ "$(id -u)" -eq 0 ] && U=(--user=root)
for n in 1 2; do
  rm -rf $D/d$n; mkdir -p $D/d$n
  $I --no-defaults --datadir=$D/d$n "${U[@]}" --auth-root-authentication-method=socket --skip-test-db >$D/install$n.log 2>&1
  $B --no-defaults --datadir=$D/d$n --socket=$D/s$n --pid-file=$D/p$n "${U[@]}" --port=1856$n --bind-address=127.0.0.1 \
     --server-id=$n --log-bin=$D/d$n/bin --log-error=$D/err$n.log --innodb-buffer-pool-size=32M --skip-name-resolve &
done
for _ in $(seq 100); do mariadb --no-defaults -uroot -S $D/s1 -e 'select 1' >/dev/null 2>&1 && mariadb --no-defaults -uroot -S $D/s2 -e 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
m1() { mariadb --no-defaults -uroot -S $D/s1 "$@"; }; m2() { mariadb --no-defaults -uroot -S $D/s2 "$@"; }
m1 -e "CREATE USER repl@'127.0.0.1' IDENTIFIED BY 'r'; GRANT REPLICATION SLAVE ON *.* TO repl@'127.0.0.1';"
m2 -e "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=18561, MASTER_USER='repl', MASTER_PASSWORD='r', MASTER_USE_GTID=slave_pos; START SLAVE;"
m1 -e "CREATE DATABASE kb; CREATE TABLE kb.d (id INT PRIMARY KEY, body TEXT) ENGINE=InnoDB;"
sleep 1
m2 -e "SHOW SLAVE STATUS\G" | grep -E "Running|Seconds_Behind"
for i in $(seq 1 20); do
  t0=$(date +%s%N); m1 -e "INSERT INTO kb.d VALUES ($i, 'edit $i')"
  until [ "$(m2 -N -e "SELECT COUNT(*) FROM kb.d WHERE id=$i")" = 1 ]; do :; done
  echo $(( ($(date +%s%N)-t0)/1000000 ))
done > $D/lags.txt
sort -n $D/lags.txt | tr '\n' ' '; echo
for n in 1 2; do kill "$(cat $D/p$n)"; done
