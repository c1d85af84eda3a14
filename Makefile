# Build, test and run the chat backend. One plain Makefile, pkg-config for every library.
#   make deps    install the Debian packages the project uses (idempotent)
#   make         build the library, programs and tests
#   make test    lint, unit tests against a private MariaDB, end-to-end tests against the real stack
#   make test-cluster  hosts in network namespaces: streamers, workers over CurveZMQ, MariaDB replication (root)
#   make run     the whole stack in the foreground (make start / make stop: in the background)
#   make keys    a CurveZMQ key pair for a streamer or worker on another host (KEY=name)

CC      ?= cc
PKG_LIB := json-c libjwt libcurl libmariadb libzmq openssl
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter -fno-strict-aliasing \
           -pthread -Ishared $(shell pkg-config --cflags $(PKG_LIB))
LDLIBS_LIB := $(shell pkg-config --libs $(PKG_LIB)) -pthread -lm
LWS_CFLAGS := $(shell pkg-config --cflags libwebsockets 2>/dev/null)
LWS_LIBS   := $(shell pkg-config --libs libwebsockets 2>/dev/null)
FCGI_LIBS  := $(shell pkg-config --libs fcgi 2>/dev/null)
CMOCKA_LIBS := $(shell pkg-config --libs cmocka 2>/dev/null)

B := build
Q ?= @
LIB_SRC  := $(wildcard shared/*.c)
LIB_OBJ  := $(LIB_SRC:%.c=$(B)/%.o)
LIB      := $(B)/libchat.a

# Admin tools: tools/NAME_cli.c -> build/bin/chat-NAME. The WebSocket client (tools/wsclient.c), its
# framing (tools/ws_frame.c, shared with the load generator) and the programs' option table (tools/cli.c)
# form the client archive.
TOOL_MAINS  := $(wildcard tools/*_cli.c)
TOOLS       := $(patsubst tools/%_cli.c,$(B)/bin/chat-%,$(TOOL_MAINS))
CLIENT_SRC  := $(filter-out %_cli.c,$(wildcard tools/*.c))
CLIENT_LIB  := $(B)/libchatclient.a
# Benchmarks: bench/NAME_cli.c -> build/bin/chat-NAME (the load generator and the knowledge-base generator).
BENCH_MAINS := $(wildcard bench/*_cli.c)
BENCH       := $(patsubst bench/%_cli.c,$(B)/bin/chat-%,$(BENCH_MAINS))

FCGI_SRC     := $(wildcard fcgi/*.c)
STREAMER_SRC := $(wildcard streamer/*.c)
WORKER_SRC   := $(wildcard worker/*.c)
GUARD_SRC    := $(wildcard guard/*.c)
PROGS := $(TOOLS) $(BENCH) \
         $(if $(FCGI_SRC),$(B)/bin/chat-fcgi) \
         $(if $(STREAMER_SRC),$(B)/bin/chat-streamer) \
         $(if $(WORKER_SRC),$(B)/bin/chat-worker) \
         $(if $(GUARD_SRC),$(B)/bin/chat-guard) \
         $(if $(wildcard tests/fake_llm.c),$(B)/bin/fake-llm)

# Tests: tests/unit/test_X.c and tests/e2e/test_X.c -> build/tests/..., each a cmocka program.
TEST_COMMON := $(wildcard tests/unit/testutil*.c)
UNIT_TESTS  := $(patsubst tests/unit/%.c,$(B)/tests/unit/%,$(wildcard tests/unit/test_*.c))
E2E_COMMON  := $(filter-out tests/e2e/test_%,$(wildcard tests/e2e/*.c))
E2E_TESTS   := $(patsubst tests/e2e/%.c,$(B)/tests/e2e/%,$(wildcard tests/e2e/test_*.c))
# The cluster test's programs (tests/cluster/cluster.sh runs them in network namespaces; not in make test).
CLUSTER_TESTS := $(patsubst tests/cluster/%.c,$(B)/tests/cluster/%,$(wildcard tests/cluster/test_*.c))

.SECONDARY:
.PHONY: all deps test test-cluster unit e2e lint run start stop token kb-import keys bench clean format
all: $(LIB) $(PROGS) $(UNIT_TESTS) $(E2E_TESTS) $(CLUSTER_TESTS)

deps:
	@bash deploy/deps.sh

# Include paths per folder: the library sees only shared/; each program sees its own folder besides.
$(B)/tools/%.o $(B)/bench/%.o: INC := -Itools -Ibench
$(B)/streamer/%.o: INC := $(LWS_CFLAGS)
$(B)/tests/unit/%.o: INC := -Itests/unit -Itools -Istreamer -Iworker -Iguard
$(B)/tests/e2e/%.o $(B)/tests/cluster/%.o: INC := -Itests/unit -Itests/e2e -Itools
$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC    $<"
	$(Q)$(CC) $(CFLAGS) $(INC) -MMD -MP -c $< -o $@

$(LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(Q)$(AR) rcs $@ $^

$(CLIENT_LIB): $(CLIENT_SRC:%.c=$(B)/%.o)
	@mkdir -p $(dir $@)
	$(Q)$(AR) rcs $@ $^

# Every program links the same way (the recipe under $(PROGS)): its objects and archives, the
# libraries of its own (PROG_LIBS), then libchat's.
$(TOOLS): $(B)/bin/chat-%: $(B)/tools/%_cli.o $(CLIENT_LIB) $(LIB)
$(BENCH): $(B)/bin/chat-%: $(B)/bench/%_cli.o $(CLIENT_LIB) $(LIB)
$(B)/bin/chat-fcgi: $(FCGI_SRC:%.c=$(B)/%.o) $(LIB)
$(B)/bin/chat-fcgi: PROG_LIBS := $(FCGI_LIBS)
$(B)/bin/chat-streamer: $(STREAMER_SRC:%.c=$(B)/%.o) $(LIB)
$(B)/bin/chat-streamer: PROG_LIBS := $(LWS_LIBS)
$(B)/bin/chat-worker: $(WORKER_SRC:%.c=$(B)/%.o) $(LIB)
$(B)/bin/chat-guard: $(GUARD_SRC:%.c=$(B)/%.o) $(LIB)
$(B)/bin/fake-llm: $(B)/tests/fake_llm.o $(LIB)
$(PROGS):
	@mkdir -p $(dir $@)
	@echo "  LINK  $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(PROG_LIBS) $(LDLIBS_LIB)

# Test helpers go in an archive so each test links only the helpers it uses.
$(B)/libtestutil.a: $(TEST_COMMON:%.c=$(B)/%.o)
	@mkdir -p $(dir $@)
	$(Q)$(AR) rcs $@ $^

$(B)/tests/unit/%: $(B)/tests/unit/%.o $(B)/libtestutil.a $(CLIENT_LIB) $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LINK  $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $(filter %.o,$^) $(filter %.a,$^) $(CMOCKA_LIBS) $(LDLIBS_LIB)

$(E2E_TESTS) $(CLUSTER_TESTS): $(B)/tests/%: $(B)/tests/%.o $(E2E_COMMON:%.c=$(B)/%.o) $(B)/libtestutil.a $(CLIENT_LIB) $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LINK  $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(CMOCKA_LIBS) $(LDLIBS_LIB)

# Unit tests of a program's own modules (those without lws in them) link those objects too (objects go
# before the archives on the link line).
$(B)/tests/unit/test_worker_answers: $(B)/worker/worker_answers.o
$(B)/tests/unit/test_streamer_sessions: $(B)/streamer/streamer_sessions.o
$(B)/tests/unit/test_streamer_rx: $(B)/streamer/streamer_rx.o
$(B)/tests/unit/test_guard: $(B)/guard/guard_track.o $(B)/guard/guard_diag.o $(B)/guard/guard_fd.o
# (and the one with lws: it needs the library on its link line)
$(B)/tests/unit/test_streamer_listen: $(B)/streamer/streamer_listen.o
$(B)/tests/unit/test_streamer_listen: LDLIBS_LIB += $(LWS_LIBS)

# Tests that start the fake LLM server need it built first.
$(B)/tests/unit/test_openai $(B)/tests/unit/test_pipeline $(B)/tests/unit/test_answers $(B)/tests/unit/test_llm \
  $(B)/tests/e2e/test_streamer: | $(B)/bin/fake-llm
$(B)/tests/e2e/test_curve: | $(B)/bin/chat-keys

# The suite: lint, then tests/run.sh starts private services on test ports and runs every test program.
test: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory lint
	@bash tests/run.sh

# Hosts built with network namespaces on this machine (root, iproute2): two streamer hosts, two worker
# hosts over CurveZMQ, a MariaDB primary and replica; then the same stack on a three-node Galera cluster
# (tests/cluster/cluster.sh replica|galera, docs/scaling.md). About 100 s; not part of make test.
test-cluster: all
	@rc=0; bash tests/cluster/cluster.sh replica || rc=1; bash tests/cluster/cluster.sh galera || rc=1; exit $$rc

unit: all
	@bash tests/run.sh unit

e2e: all
	@bash tests/run.sh e2e

lint:
	@cppcheck --quiet --error-exitcode=1 --inline-suppr --std=c11 --enable=warning,portability,performance \
	  --suppress=missingIncludeSystem -Ishared -Itools -Ibench $(wildcard shared fcgi streamer worker guard tools bench tests)
	@echo "lint: cppcheck clean"

format:
	clang-format -i $(wildcard shared/*.[ch] fcgi/*.[ch] streamer/*.[ch] worker/*.[ch] guard/*.[ch] tools/*.[ch] bench/*.[ch] tests/*.c tests/*/*.[ch])

# make run / make start build and install only what running needs: the library and the programs, not
# the test programs, the fake LLM server or the browser test's packages.
run:
	@bash deploy/deps.sh run
	@$(MAKE) --no-print-directory $(LIB) $(filter-out $(B)/bin/fake-llm,$(PROGS))
	@bash deploy/stack.sh run

start:
	@$(MAKE) --no-print-directory $(LIB) $(filter-out $(B)/bin/fake-llm,$(PROGS))
	@bash deploy/stack.sh start

stop:
	@bash deploy/stack.sh stop

# make token SUB=alice EMAIL=alice@example.com NAME="Alice" TTL=3600
token: all
	@bash deploy/stack.sh token "$(SUB)" "$(EMAIL)" "$(NAME)" "$(TTL)"

# make kb-import DIR=path/to/markdown
kb-import: all
	@bash deploy/stack.sh kb-import "$(DIR)"

# make keys KEY=worker-a: a CurveZMQ key pair in var/keys/worker-a.key (mode 0600; KEY defaults to the
# host name), its public key printed for the other side's CHAT_CURVE_ALLOWED (deploy/README.md).
KEYS_DIR ?= var/keys
keys: $(B)/bin/chat-keys
	@mkdir -p $(KEYS_DIR) && chmod 700 $(KEYS_DIR)
	@$(B)/bin/chat-keys $(KEYS_DIR)/$(or $(KEY),$(shell hostname -s)).key

bench: all
	@bash bench/bench.sh

clean:
	rm -rf $(B)

-include $(shell find $(B) -name '*.d' 2>/dev/null)
