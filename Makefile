# Build, test and run the chat backend. One plain Makefile, pkg-config for every library.
#   make deps    install the Debian packages the project uses (idempotent)
#   make         build the library, programs and tests
#   make test    lint, unit tests against a private MariaDB, end-to-end tests against the real stack
#   make run     the whole stack in the foreground (make start / make stop: in the background)

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
PROGS := $(TOOLS) $(BENCH) \
         $(if $(FCGI_SRC),$(B)/bin/chat-fcgi) \
         $(if $(STREAMER_SRC),$(B)/bin/chat-streamer) \
         $(if $(WORKER_SRC),$(B)/bin/chat-worker) \
         $(if $(wildcard tests/fake_llm.c),$(B)/bin/fake-llm)

# Tests: tests/unit/test_X.c and tests/e2e/test_X.c -> build/tests/..., each a cmocka program.
TEST_COMMON := $(wildcard tests/unit/testutil*.c)
UNIT_TESTS  := $(patsubst tests/unit/%.c,$(B)/tests/unit/%,$(wildcard tests/unit/test_*.c))
E2E_COMMON  := $(filter-out tests/e2e/test_%,$(wildcard tests/e2e/*.c))
E2E_TESTS   := $(patsubst tests/e2e/%.c,$(B)/tests/e2e/%,$(wildcard tests/e2e/test_*.c))

.SECONDARY:
.PHONY: all deps test unit e2e lint run start stop token kb-import bench clean format
all: $(LIB) $(PROGS) $(UNIT_TESTS) $(E2E_TESTS)

deps:
	@bash deploy/deps.sh

# Include paths per folder: the library sees only shared/; each program sees its own folder besides.
$(B)/tools/%.o $(B)/bench/%.o: INC := -Itools -Ibench
$(B)/streamer/%.o: INC := $(LWS_CFLAGS)
$(B)/tests/unit/%.o: INC := -Itests/unit -Itools
$(B)/tests/e2e/%.o: INC := -Itests/unit -Itests/e2e -Itools
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

$(TOOLS): $(B)/bin/chat-%: $(B)/tools/%_cli.o $(CLIENT_LIB) $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LINK  $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS_LIB)

$(BENCH): $(B)/bin/chat-%: $(B)/bench/%_cli.o $(CLIENT_LIB) $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LINK  $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS_LIB)

$(B)/bin/chat-fcgi: $(FCGI_SRC:%.c=$(B)/%.o) $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LINK  $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(FCGI_LIBS) $(LDLIBS_LIB)

$(B)/bin/chat-streamer: $(STREAMER_SRC:%.c=$(B)/%.o) $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LINK  $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LWS_LIBS) $(LDLIBS_LIB)

$(B)/bin/chat-worker: $(WORKER_SRC:%.c=$(B)/%.o) $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LINK  $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS_LIB)

$(B)/bin/fake-llm: $(B)/tests/fake_llm.o $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LINK  $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS_LIB)

# Test helpers go in an archive so each test links only the helpers it uses.
$(B)/libtestutil.a: $(TEST_COMMON:%.c=$(B)/%.o)
	@mkdir -p $(dir $@)
	$(Q)$(AR) rcs $@ $^

$(B)/tests/unit/%: $(B)/tests/unit/%.o $(B)/libtestutil.a $(CLIENT_LIB) $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LINK  $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $(filter %.o,$^) $(filter %.a,$^) $(CMOCKA_LIBS) $(LDLIBS_LIB)

$(B)/tests/e2e/%: $(B)/tests/e2e/%.o $(E2E_COMMON:%.c=$(B)/%.o) $(B)/libtestutil.a $(CLIENT_LIB) $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LINK  $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(CMOCKA_LIBS) $(LDLIBS_LIB)

# A streamer module without lws in it has a unit test of its own, linked with its object (objects go
# before the archives on the link line).
$(B)/tests/unit/test_streamer_rx.o: INC := -Itests/unit -Itools -Istreamer
$(B)/tests/unit/test_streamer_rx: $(B)/streamer/streamer_rx.o

# Tests that start the fake LLM server need it built first.
$(B)/tests/unit/test_openai $(B)/tests/unit/test_pipeline $(B)/tests/e2e/test_streamer: | $(B)/bin/fake-llm

# The suite: lint, then tests/run.sh starts private services on test ports and runs every test program.
test: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory lint
	@bash tests/run.sh

unit: all
	@bash tests/run.sh unit

e2e: all
	@bash tests/run.sh e2e

lint:
	@cppcheck --quiet --error-exitcode=1 --inline-suppr --std=c11 --enable=warning,portability,performance \
	  --suppress=missingIncludeSystem -Ishared -Itools -Ibench $(wildcard shared fcgi streamer worker tools bench tests)
	@echo "lint: cppcheck clean"

format:
	clang-format -i $(wildcard shared/*.[ch] fcgi/*.[ch] streamer/*.[ch] worker/*.[ch] tools/*.[ch] bench/*.[ch] tests/*.c tests/*/*.[ch])

run: deps all
	@bash deploy/stack.sh run

start: all
	@bash deploy/stack.sh start

stop:
	@bash deploy/stack.sh stop

# make token SUB=alice EMAIL=alice@example.com NAME="Alice" TTL=3600
token: all
	@bash deploy/stack.sh token "$(SUB)" "$(EMAIL)" "$(NAME)" "$(TTL)"

# make kb-import DIR=path/to/markdown
kb-import: all
	@bash deploy/stack.sh kb-import "$(DIR)"

bench: all
	@bash bench/bench.sh

clean:
	rm -rf $(B)

-include $(shell find $(B) -name '*.d' 2>/dev/null)
