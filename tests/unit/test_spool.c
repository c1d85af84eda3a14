/* The spool of turns the database could not take (chat_spool.h), against the real private MariaDB:
 * append and replay (existing and new sessions, in order), an idempotent replay (a turn spooled twice,
 * one stored already, a spool replayed again after a crash), the spool of a dead process taken over
 * with its torn last line skipped, a live process's spool left alone, the database away (nothing lost,
 * replayed later), turns the database refuses (dropped, the rest stored), the size bound and the spool
 * turned off, and the replayer thread. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_memory.h"
#include "chat_spool.h"
#include "chat_util.h"
#include "testutil.h"

static chat_db *db;
static char err[512];

static int setup(void **state)
{
    db = testutil_db_fresh("spool", TESTUTIL_SCHEMA);
    return 0;
}

static int teardown(void **state)
{
    chat_db_free(db);
    return 0;
}

/* The configuration of chat_t_spool with its spool in a fresh directory of its own. */
static chat_config spool_config(const char *dir_name)
{
    chat_config cfg = testutil_config("spool");
    snprintf(cfg.spool_dir, sizeof cfg.spool_dir, "%s", testutil_fresh_dir(dir_name));
    return cfg;
}

static chat_spool *open_spool(const chat_config *cfg)
{
    chat_spool *s = NULL;
    if (chat_spool_open(cfg, "test", false, &s, err, sizeof err)) fail_msg("open: %s", err);
    assert_non_null(s);
    return s;
}

static void append(chat_spool *s, const chat_spool_turn *t)
{
    if (chat_spool_append(s, t, err, sizeof err)) fail_msg("append: %s", err);
}

static void open_session(const char *user, const char *sid)
{
    chat_session_info info;
    if (chat_memory_open_session(db, user, sid, NULL, false, 0, NULL, &info, err, sizeof err))
        fail_msg("session %s: %s", sid, err);
}

static long long count_messages(const char *sid)
{
    return testutil_count(db, "SELECT COUNT(*) FROM chat_messages WHERE session_id = ?", sid);
}

static chat_spool_turn turn(const char *sid, const char *rid, const char *question)
{
    return (chat_spool_turn){.session_id = sid, .request_id = rid, .user_id = "user-alice", .user_text = question,
                             .assistant_text = "An answer.", .metadata_json = "{\"finish_reason\":\"stop\"}"};
}

/* The files in dir whose names end with suffix: their count, the size of the last one in *size. */
static int spool_files(const char *dir, const char *suffix, off_t *size)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name), m = strlen(suffix);
        if (l < m || strcmp(de->d_name + l - m, suffix)) continue;
        char path[1200];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        if (size) *size = st.st_size;
        n++;
    }
    closedir(d);
    return n;
}

/* The path of the one *.spool file in dir. */
static void spool_path(const char *dir, char *out, size_t cap)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    out[0] = '\0';
    for (struct dirent *de; (de = readdir(d));)
        if (strstr(de->d_name, ".spool")) snprintf(out, cap, "%s/%s", dir, de->d_name);
    closedir(d);
    assert_true(out[0]);
}

/* The session's history holds the n questions, in order, each with its answer. */
static void assert_questions(const char *sid, const char *const *questions, size_t n)
{
    chat_history h;
    assert_int_equal(testutil_history(db, sid, 10, &h, err, sizeof err), 0);
    assert_int_equal(h.n, 2 * n);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(h.items[2 * i].content, questions[i]);
        assert_string_equal(h.items[2 * i + 1].content, "An answer.");
    }
    chat_history_clear(&h);
}

static size_t replay(chat_spool *s, chat_db *d, int want_rc)
{
    size_t stored = 0;
    int rc = chat_spool_replay(s, d, &stored, err, sizeof err);
    if (rc != want_rc) fail_msg("replay: %s, expected %s (%s)", chat_strerror(rc), chat_strerror(want_rc), err);
    return stored;
}

/* Appended turns wait (pending), durably in one file; a replay stores them in order, a new session's row
 * first with its owner, and empties the file. */
static void test_append_and_replay(void **state)
{
    chat_config cfg = spool_config("spool-replay");
    open_session("user-alice", "sp-existing");
    chat_spool *s = open_spool(&cfg);
    assert_false(chat_spool_pending(s));
    chat_spool_turn a = turn("sp-existing", "req-a", "First question\nwith a newline");
    chat_spool_turn b = turn("sp-new", "req-b", "A new conversation");
    b.new_session = true, b.customer_id = "cust-9", b.touch_session = true;
    chat_spool_turn c = turn("sp-existing", "req-c", "Second question");
    append(s, &a);
    append(s, &b);
    append(s, &c);
    assert_true(chat_spool_pending(s));
    assert_int_equal(chat_spool_waiting(s), 3);
    off_t size = 0;
    assert_int_equal(spool_files(cfg.spool_dir, ".spool", &size), 1);
    assert_true(size > 0);
    assert_int_equal(count_messages("sp-existing"), 0);

    assert_int_equal(replay(s, db, 0), 3);
    assert_false(chat_spool_pending(s));
    assert_int_equal(chat_spool_waiting(s), 0);
    assert_int_equal(spool_files(cfg.spool_dir, ".spool", &size), 1);
    assert_int_equal(size, 0); /* emptied */
    static const char *const asked[] = {"First question\nwith a newline", "Second question"};
    assert_questions("sp-existing", asked, 2);
    assert_int_equal(count_messages("sp-new"), 2);
    assert_int_equal(testutil_count(db, "SELECT COUNT(*) FROM chat_sessions WHERE id = 'sp-new' AND user_id = ?"
                                        " AND customer_id = 'cust-9'",
                                    "user-alice"),
                     1);
    assert_int_equal(replay(s, db, 0), 0); /* nothing left */
    chat_spool_free(s);
    assert_int_equal(spool_files(cfg.spool_dir, ".spool", NULL), 0); /* an empty spool goes at free */
}

/* A turn spooled twice, and one the database has already: each is stored once. A process that stored
 * its spool and died before emptying it leaves the turns to the next process, which stores them again:
 * still once. */
static void test_replay_idempotent(void **state)
{
    chat_config cfg = spool_config("spool-idempotent");
    open_session("user-alice", "sp-twice");
    assert_int_equal(
        chat_memory_store_turn(db, "user-alice", "sp-twice", "req-1", "Q1", "A1", NULL, false, err, sizeof err), 0);
    chat_spool *s = open_spool(&cfg);
    chat_spool_turn t1 = turn("sp-twice", "req-1", "Q1");
    chat_spool_turn t2 = turn("sp-twice", "req-2", "Q2");
    chat_spool_turn t3 = turn("sp-twice-new", "req-3", "Q3");
    t3.new_session = true;
    append(s, &t1);
    append(s, &t2);
    append(s, &t2);
    append(s, &t3);
    append(s, &t3);
    /* the crash: a copy of the file as it was before the replay, left by a process that is gone */
    char path[1200], copy[1200];
    spool_path(cfg.spool_dir, path, sizeof path);
    snprintf(copy, sizeof copy, "%s/chat_t_spool-test-1-1.spool", cfg.spool_dir);
    size_t len;
    char *bytes = testutil_read_file(path, &len);
    assert_non_null(bytes);
    int fd = open(copy, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, bytes, len), (ssize_t)len);
    close(fd);
    free(bytes);

    assert_int_equal(replay(s, db, 0), 5);
    assert_int_equal(count_messages("sp-twice"), 4);
    assert_int_equal(count_messages("sp-twice-new"), 2);
    chat_spool_free(s);

    s = open_spool(&cfg); /* takes the copy over */
    assert_int_equal(chat_spool_waiting(s), 5);
    assert_int_equal(replay(s, db, 0), 5);
    assert_int_equal(count_messages("sp-twice"), 4);
    assert_int_equal(count_messages("sp-twice-new"), 2);
    assert_int_equal(spool_files(cfg.spool_dir, ".spool", NULL), 1); /* the copy is gone, ours is left */
    chat_spool_free(s);
}

/* The spool of a process that died mid-write: its whole lines are taken over, its torn last line is
 * skipped, and what this process appends after them is a turn of its own (not glued to the torn one). */
static void test_torn_last_line(void **state)
{
    chat_config cfg = spool_config("spool-torn");
    open_session("user-alice", "sp-torn");
    chat_spool *dead = open_spool(&cfg);
    chat_spool_turn t1 = turn("sp-torn", "req-1", "Q1"), t2 = turn("sp-torn", "req-2", "Q2");
    append(dead, &t1);
    append(dead, &t2);
    chat_spool_free(dead); /* turns waiting: the file stays for the next process */
    off_t size = 0;
    assert_int_equal(spool_files(cfg.spool_dir, ".spool", &size), 1);
    char path[1200];
    spool_path(cfg.spool_dir, path, sizeof path);
    static const char torn[] = "{\"v\":1,\"session_id\":\"sp-torn\",\"request_id\":\"req-torn\",\"user_id\":\"user-al";
    int fd = open(path, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, torn, sizeof torn - 1), (ssize_t)(sizeof torn - 1));
    close(fd);

    chat_spool *s = open_spool(&cfg);
    assert_int_equal(chat_spool_waiting(s), 2);
    assert_int_equal(spool_files(cfg.spool_dir, ".spool", NULL), 1); /* the dead one's is gone */
    chat_spool_turn t3 = turn("sp-torn", "req-3", "Q3");
    append(s, &t3);
    assert_int_equal(replay(s, db, 0), 3);
    static const char *const asked[] = {"Q1", "Q2", "Q3"};
    assert_questions("sp-torn", asked, 3);
    assert_int_equal(testutil_count(db, "SELECT COUNT(*) FROM chat_messages WHERE request_id = ?", "req-torn"), 0);
    chat_spool_free(s);
}

/* A spool its process still holds is never taken over; one of another database is never touched. */
static void test_live_spool_left_alone(void **state)
{
    chat_config cfg = spool_config("spool-live");
    chat_spool *live = open_spool(&cfg);
    chat_spool_turn t = turn("sp-live", "req-1", "Q1");
    append(live, &t);
    chat_config other_db = cfg;
    snprintf(other_db.db_name, sizeof other_db.db_name, "chat_t_other");
    chat_spool *foreign = open_spool(&other_db);
    chat_spool_turn f = turn("sp-foreign", "req-f", "Qf");
    append(foreign, &f);
    chat_spool_free(foreign); /* its turn stays in its file */

    chat_spool *s = open_spool(&cfg);
    assert_int_equal(chat_spool_waiting(s), 0);
    assert_int_equal(chat_spool_waiting(live), 1);
    assert_int_equal(spool_files(cfg.spool_dir, ".spool", NULL), 3);
    chat_spool_free(s);
    chat_spool_free(live);
    assert_int_equal(spool_files(cfg.spool_dir, ".spool", NULL), 2); /* live's turn and the foreign one */
}

/* The database away: the replay stops with CHAT_EDB and keeps everything; once it answers, all is stored. */
static void test_database_away(void **state)
{
    chat_config cfg = spool_config("spool-away");
    open_session("user-alice", "sp-away");
    chat_config down = cfg;
    snprintf(down.db_socket, sizeof down.db_socket, "/nonexistent/mariadb.sock");
    chat_db *away = chat_db_new(&down);
    chat_spool *s = open_spool(&cfg);
    chat_spool_turn t1 = turn("sp-away", "req-1", "Q1"), t2 = turn("sp-away", "req-2", "Q2");
    append(s, &t1);
    append(s, &t2);
    assert_int_equal(replay(s, away, CHAT_EDB), 0);
    assert_true(chat_spool_pending(s));
    assert_int_equal(chat_spool_waiting(s), 2);
    assert_int_equal(replay(s, away, CHAT_EDB), 0);
    assert_int_equal(replay(s, db, 0), 2);
    assert_int_equal(count_messages("sp-away"), 4);
    chat_db_free(away);
    chat_spool_free(s);
}

/* Turns the database refuses for what they are (a session that is gone, an invalid text) are dropped;
 * the turns around them are stored. A new session of alice's whose id bob uses too is alice's own: its
 * turn is stored there, and bob's session of that id stays as it was. */
static void test_refused_turns_dropped(void **state)
{
    chat_config cfg = spool_config("spool-refused");
    open_session("user-bob", "sp-bobs");
    open_session("user-alice", "sp-ok");
    chat_spool *s = open_spool(&cfg);
    chat_spool_turn same_id = turn("sp-bobs", "req-1", "Q1");
    same_id.new_session = true; /* alice's new conversation, of an id bob has too */
    chat_spool_turn gone = turn("sp-never-created", "req-2", "Q2");
    chat_spool_turn bad = turn("sp-ok", "req-3", "\xff\xfe not UTF-8");
    chat_spool_turn ok = turn("sp-ok", "req-4", "Q4");
    append(s, &same_id);
    append(s, &gone);
    append(s, &bad);
    append(s, &ok);
    assert_int_equal(replay(s, db, 0), 2);
    assert_false(chat_spool_pending(s));
    assert_int_equal(testutil_count(db,
                                    "SELECT COUNT(*) FROM chat_messages WHERE user_id = 'user-bob' AND session_id = ?",
                                    "sp-bobs"),
                     0);
    assert_int_equal(
        testutil_count(db, "SELECT COUNT(*) FROM chat_messages WHERE user_id = 'user-alice' AND session_id = ?",
                       "sp-bobs"),
        2);
    assert_int_equal(count_messages("sp-never-created"), 0);
    assert_int_equal(count_messages("sp-ok"), 2);
    assert_true(chat_spool_refused(CHAT_EFORBIDDEN, db));
    assert_false(chat_spool_refused(CHAT_EDB, NULL));
    chat_spool_free(s);
}

/* CHAT_SPOOL_MAX_MB bounds the file (a turn that does not fit is refused and leaves nothing behind);
 * 0 turns the spool off. */
static void test_bound_and_off(void **state)
{
    chat_config cfg = spool_config("spool-bound");
    cfg.spool_max_mb = 1;
    chat_spool *s = open_spool(&cfg);
    size_t big = 600 * 1024;
    char *answer = malloc(big + 1);
    assert_non_null(answer);
    memset(answer, 'a', big);
    answer[big] = '\0';
    chat_spool_turn t = turn("sp-big", "req-1", "Q");
    t.assistant_text = answer;
    append(s, &t);
    off_t before = 0, after = 0;
    spool_files(cfg.spool_dir, ".spool", &before);
    t.request_id = "req-2";
    assert_int_not_equal(chat_spool_append(s, &t, err, sizeof err), 0);
    assert_non_null(strstr(err, "full"));
    spool_files(cfg.spool_dir, ".spool", &after);
    assert_int_equal(before, after);
    assert_int_equal(chat_spool_waiting(s), 1);
    free(answer);
    chat_spool_free(s);

    cfg.spool_max_mb = 0;
    chat_spool *off = (chat_spool *)&cfg; /* must become NULL */
    assert_int_equal(chat_spool_open(&cfg, "test", false, &off, err, sizeof err), 0);
    assert_null(off);
}

/* The replayer thread stores what is appended, and takes over a dead process's spool at once. */
static void test_replayer_thread(void **state)
{
    chat_config cfg = spool_config("spool-thread");
    cfg.spool_retry_ms = 100;
    open_session("user-alice", "sp-thread");
    chat_spool *dead = open_spool(&cfg);
    chat_spool_turn t1 = turn("sp-thread", "req-1", "Q1");
    append(dead, &t1);
    chat_spool_free(dead);

    chat_spool *s = NULL;
    assert_int_equal(chat_spool_open(&cfg, "test", true, &s, err, sizeof err), 0);
    assert_non_null(s);
    chat_spool_turn t2 = turn("sp-thread", "req-2", "Q2");
    append(s, &t2);
    int64_t deadline = chat_now_ms() + 5000;
    while (count_messages("sp-thread") < 4 && chat_now_ms() < deadline)
        usleep(20 * 1000);
    assert_int_equal(count_messages("sp-thread"), 4);
    while (chat_spool_pending(s) && chat_now_ms() < deadline)
        usleep(20 * 1000);
    assert_false(chat_spool_pending(s));
    chat_spool_free(s);
    assert_int_equal(spool_files(cfg.spool_dir, ".spool", NULL), 0);
}

TESTUTIL_MAIN(setup, teardown,
              cmocka_unit_test(test_append_and_replay),   cmocka_unit_test(test_replay_idempotent),
              cmocka_unit_test(test_torn_last_line),      cmocka_unit_test(test_live_spool_left_alone),
              cmocka_unit_test(test_database_away),       cmocka_unit_test(test_refused_turns_dropped),
              cmocka_unit_test(test_bound_and_off),       cmocka_unit_test(test_replayer_thread))
