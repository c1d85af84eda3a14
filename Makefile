# Build, test and run the chat backend. One plain Makefile, pkg-config for every library.
#   make deps    install the Debian packages the project uses (idempotent)
#   make         build the library, programs and tests
#   make test    lint, unit tests against a private MariaDB, end-to-end tests against the real stack
#   make run     the whole stack in the foreground (make start / make stop: in the background)

CC      ?= cc
PKG_LIB := json-c libjwt libcurl libmariadb libzmq openssl
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter -fno-strict-aliasing \
           -pthread -Ishared -Itools -Itests/unit $(shell pkg-config --cflags $(PKG_LIB))
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

# Admin tools: tools/NAME_cli.c -> build/bin/chat-NAME; tools/*.c without _cli are shared by them (the ws client).
TOOL_MAINS  := $(wildcard tools/*_cli.c)
TOOL_COMMON := $(filter-out %_cli.c,$(wildcard tools/*.c))
TOOLS       := $(patsubst tools/%_cli.c,$(B)/bin/chat-%,$(TOOL_MAINS))

FCGI_SRC     := $(wildcard fcgi/*.c)
STREAMER_SRC := $(wildcard streamer/streamer*.c)
WORKER_SRC   := $(wildcard streamer/worker*.c)
PROGS := $(TOOLS) \
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

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC    $<"
	$(Q)$(CC) $(CFLAGS) $(if $(filter streamer/%,$<),$(LWS_CFLAGS)) -MMD -MP -c $< -o $@

$(LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(Q)$(AR) rcs $@ $^

$(B)/bin/chat-%: $(B)/tools/%_cli.o $(TOOL_COMMON:%.c=$(B)/%.o) $(LIB)
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

$(B)/tests/unit/%: $(B)/tests/unit/%.o $(B)/libtestutil.a $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LINK  $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(CMOCKA_LIBS) $(LDLIBS_LIB)

$(B)/tests/e2e/%: $(B)/tests/e2e/%.o $(E2E_COMMON:%.c=$(B)/%.o) $(TOOL_COMMON:%.c=$(B)/%.o) $(B)/libtestutil.a $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LINK  $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(CMOCKA_LIBS) $(LDLIBS_LIB)

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
	  --suppress=missingIncludeSystem -Ishared -Itools $(wildcard shared fcgi streamer tools tests)
	@echo "lint: cppcheck clean"

format:
	clang-format -i $(wildcard shared/*.[ch] fcgi/*.[ch] streamer/*.[ch] tools/*.[ch] tests/*.c tests/*/*.[ch])

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

bench: all
	@bash tests/bench.sh

clean:
	rm -rf $(B)

-include $(shell find $(B) -name '*.d' 2>/dev/null)
