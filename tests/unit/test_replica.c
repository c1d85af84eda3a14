/* Read-replica routing (chat_db_new_read, chat_db_read_route, chat_db_replica_check) against the private
 * MariaDB: no replica configured, a "replica" that is a plain server (no SHOW SLAVE STATUS row: usable,
 * lag 0, as a Galera node is), and a replica that is down (skipped: reads go to the primary, the lag
 * gauge says -1), and a read that failed on a usable replica (retried on the primary). A second server
 * replicating from the test one is not started here: make test-cluster runs real replication (MariaDB's
 * GTID replication and Galera, docs/scaling.md). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_db.h"
#include "chat_metrics.h"
#include "testutil.h"

static char err[512];

static void test_none_configured(void **state)
{
    (void)state;
    chat_config cfg = testutil_config("replica");
    cfg.db_read_host[0] = cfg.db_read_socket[0] = '\0';
    assert_null(chat_db_new_read(&cfg));
    chat_db *primary = chat_db_new(&cfg);
    assert_ptr_equal(chat_db_read_route(NULL, primary), primary);
    chat_db_free(primary);
}

/* The test server as its own "replica" (a server that is no replica counts as one with no lag). */
static void open_self_replica(chat_db **primary, chat_db **replica)
{
    chat_config cfg = testutil_config("replica");
    snprintf(cfg.db_read_host, sizeof cfg.db_read_host, "%s", cfg.db_host);
    snprintf(cfg.db_read_socket, sizeof cfg.db_read_socket, "%s", cfg.db_socket);
    cfg.db_read_port = cfg.db_port;
    snprintf(cfg.db_read_user, sizeof cfg.db_read_user, "%s", cfg.db_user);
    snprintf(cfg.db_read_password, sizeof cfg.db_read_password, "%s", cfg.db_password);
    *primary = chat_db_new(&cfg);
    *replica = chat_db_new_read(&cfg);
    assert_non_null(*replica);
}

static void test_plain_server_is_usable(void **state)
{
    (void)state;
    chat_db *primary, *replica;
    open_self_replica(&primary, &replica);
    long long lag = -5;
    assert_int_equal(chat_db_replica_check(replica, &lag, err, sizeof err), 0);
    assert_int_equal(lag, 0);
    assert_ptr_equal(chat_db_read_route(replica, primary), replica);
    chat_db_free(replica);
    chat_db_free(primary);
}

static void test_down_replica_is_skipped(void **state)
{
    (void)state;
    chat_config cfg = testutil_config("replica");
    snprintf(cfg.db_read_host, sizeof cfg.db_read_host, "127.0.0.1");
    cfg.db_read_socket[0] = '\0';
    cfg.db_read_port = 1; /* nothing listens there */
    chat_db *primary = chat_db_new(&cfg), *replica = chat_db_new_read(&cfg);
    assert_non_null(replica);
    long long lag = 0;
    assert_int_equal(chat_db_replica_check(replica, &lag, err, sizeof err), CHAT_EDB);
    assert_int_equal(lag, -1);
    assert_ptr_equal(chat_db_read_route(replica, primary), primary);
    /* Checked at most every CHAT_DB_REPLICA_CHECK_MS: the second call answers from the cached state. */
    assert_ptr_equal(chat_db_read_route(replica, primary), primary);
    chat_db_free(replica);
    chat_db_free(primary);
}

/* A read that fails on a replica the last check found usable (it died since): chat_db_read_failed hands
 * the primary back for the retry and the route skips the replica until its next check; a failure on the
 * primary itself has nothing to retry. */
static void test_failed_read_falls_back(void **state)
{
    (void)state;
    chat_db *primary, *replica;
    open_self_replica(&primary, &replica);
    assert_ptr_equal(chat_db_read_route(replica, primary), replica);
    assert_null(chat_db_read_failed(replica, primary, primary));
    assert_null(chat_db_read_failed(NULL, primary, primary));
    assert_ptr_equal(chat_db_read_failed(replica, replica, primary), primary);
    assert_ptr_equal(chat_db_read_route(replica, primary), primary); /* until the next check */
    chat_db_free(replica);
    chat_db_free(primary);
}

/* The routed handles select database chat_t_replica: it must exist. */
static int setup(void **state)
{
    *state = testutil_db_fresh("replica", 0);
    return *state ? 0 : -1;
}

TESTUTIL_MAIN(setup, testutil_db_teardown,
              cmocka_unit_test(test_none_configured),
              cmocka_unit_test(test_plain_server_is_usable),
              cmocka_unit_test(test_down_replica_is_skipped),
              cmocka_unit_test(test_failed_read_falls_back))
