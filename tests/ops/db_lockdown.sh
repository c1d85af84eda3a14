#!/usr/bin/env bash
# The private MariaDB (deploy/mariadb.sh) is reachable only by the user who started it, and the running
# services use its least-privilege account. Runs against the test stack's database (tests/run.sh, e2e).
source "$(dirname "$0")/lib.sh"
SOCK=$RUN/mariadb.sock
CLIENT=(mariadb --no-defaults --socket="$SOCK")
ME=$(id -un)
admin() { "${CLIENT[@]}" -u"$ME" -N -B "$@" 2>/dev/null; }
PW=$(cat "$VAR/db-password" 2>/dev/null)
service() { "${CLIENT[@]}" -uchat -p"$PW" -N -B "$@" 2>/dev/null; }
DB=${CHAT_DB_NAME:-chat_test}
NOBODY=(setpriv --reuid=65534 --regid=65534 --clear-groups)

check_not "another OS user cannot log in as root over the socket" quiet "${NOBODY[@]}" "${CLIENT[@]}" -uroot -e 'SELECT 1'
check_not "another OS user cannot log in as the services' account" \
  quiet "${NOBODY[@]}" "${CLIENT[@]}" -uchat -p"$PW" -e 'SELECT 1'
dir=$(dirname "$(readlink -f "$SOCK")")
check "the socket's directory is mode 0700" test "$(stat -c %a "$dir")" = 700
nopw=$(admin -e "SELECT CONCAT(user, '@', host) FROM mysql.global_priv WHERE
  IFNULL(JSON_VALUE(priv, '$.plugin'), '') IN ('mysql_native_password', 'mysql_old_password', '')
  AND IFNULL(JSON_VALUE(priv, '$.authentication_string'), '') = '' AND IFNULL(JSON_EXTRACT(priv, '$.account_locked'), 'false') <> 'true'")
check "no account without a password outside unix_socket (found: ${nopw:-none})" test -z "$nopw"
check "root authenticates with unix_socket only" test "$(admin -e "SELECT JSON_VALUE(priv, '$.plugin')
  FROM mysql.global_priv WHERE user = 'root' AND host = 'localhost'")" = unix_socket
check "root has no other host" test "$(admin -e "SELECT COUNT(*) FROM mysql.global_priv WHERE user = 'root'")" = 1
fp=$(admin -e 'SELECT @@secure_file_priv')
check "secure_file_priv is set (${fp:-empty})" test -n "$fp" -a "$fp" != NULL
out=/tmp/chat-db-lockdown.$$
check_not "root cannot write a file outside secure_file_priv" admin -e "SELECT 1 INTO OUTFILE '$out'"
rm -f "$out"
srv=$(cat "$RUN/mariadb/mariadb.pid" 2>/dev/null)
if [ "$(id -u)" -eq 0 ]; then
  check "mariadbd does not run as root (it runs as $(ps -o user= -p "$srv" 2>/dev/null))" \
    test "$(ps -o uid= -p "$srv" 2>/dev/null | tr -d ' ')" != 0
fi

check "the services' account reads the chat tables" quiet service -e "SELECT COUNT(*) FROM \`$DB\`.chat_sessions"
check_not "the services' account cannot CREATE a table" service -e "CREATE TABLE \`$DB\`.lockdown_probe (a INT)"
check_not "the services' account cannot DROP a table" service -e "DROP TABLE \`$DB\`.kb_documents"
check_not "the services' account cannot create a database" service -e "CREATE DATABASE lockdown_probe"
check_not "the services' account cannot write files" service -e "SELECT 1 INTO OUTFILE '$fp/lockdown-probe'"
check_not "the services' account cannot read other databases" service -e "SELECT COUNT(*) FROM mysql.global_priv"

# The running services: every connection they hold is the services' account.
users=$(admin -e "SELECT DISTINCT user FROM information_schema.processlist WHERE user NOT IN ('$ME', 'system user', 'event_scheduler') AND command <> 'Daemon'" | tr '\n' ' ')
check "the running services connect as chat (connections: ${users:-none})" test "${users% }" = chat
for p in chat-streamer chat-worker; do
  pid=$(stack_pid "$p")
  check "$p's environment names the services' account" grep -qz '^CHAT_DB_USER=chat$' "/proc/$pid/environ"
done
finish
