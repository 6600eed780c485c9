# dualwrite — one Makefile for the daemon, the CLI, the demo backends and the tests.
#
#   make               build everything into $(B)/
#   make check         install missing Debian packages, then unit, fuzz-corpus and end-to-end tests
#   make demo          the Gear Operations migration, end to end, on a throwaway PostgreSQL
#   make bench         self-contained benchmarks (and, when present, the peer harness)
#   make SANITIZE=address,undefined check    the same under ASan/UBSan (build dir build-san/)
#   make install PREFIX=/usr/local DESTDIR=
#   make lint | format | fuzz | clean

CC       ?= cc
PREFIX   ?= /usr/local
DESTDIR  ?=
SANITIZE ?=
PKGS     := libevent libevent_openssl openssl jansson libconfig libpq

ifeq ($(SANITIZE),)
B        ?= build
OPT      ?= -O2
else
B        ?= build-san
OPT      ?= -O1
SANFLAGS := -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif

WARN     := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wpointer-arith \
            -Wcast-qual -Wundef -Wformat=2 -Werror
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CFLAGS   ?= $(OPT) -g
ALL_CFLAGS := -std=gnu11 $(CFLAGS) $(WARN) $(SANFLAGS) -D_GNU_SOURCE -Ilib $(PKG_CFLAGS) -MMD -MP
LDLIBS   := $(PKG_LIBS) -lpthread -lm
ALL_LDFLAGS := $(LDFLAGS) $(SANFLAGS)

LIB_SRC    := $(sort $(wildcard lib/*.c))
DAEMON_SRC := $(sort $(wildcard daemon/*.c))
CLI_SRC    := $(sort $(wildcard tools/cli/*.c))
DEMO_SRC   := $(sort $(wildcard tools/demo/*.c))
UNIT_SRC   := $(sort $(wildcard tests/unit/test_*.c))
FUZZ_SRC   := $(sort $(wildcard tests/fuzz/fuzz_*.c))
BENCH_SRC  := $(sort $(wildcard tests/bench/bench_*.c))

LIB_OBJ    := $(LIB_SRC:%.c=$(B)/%.o)
DAEMON_OBJ := $(DAEMON_SRC:%.c=$(B)/%.o)
CLI_OBJ    := $(CLI_SRC:%.c=$(B)/%.o)
DEMO_OBJ   := $(DEMO_SRC:%.c=$(B)/%.o)
UNIT_BIN   := $(UNIT_SRC:tests/unit/%.c=$(B)/tests/%)
FUZZ_REPLAY:= $(FUZZ_SRC:tests/fuzz/%.c=$(B)/tests/%-replay)
BENCH_BIN  := $(BENCH_SRC:tests/bench/%.c=$(B)/bench/%)

BINS := $(B)/dualwrited $(B)/dualwrite $(B)/dw-demo-backend

.PHONY: all deps check unit e2e fuzz-replay demo bench install clean lint format fuzz
all: $(BINS) $(UNIT_BIN) $(FUZZ_REPLAY) $(BENCH_BIN)

deps:
	@tools/deps.sh

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(B)/libdw.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(B)/dualwrited: $(DAEMON_OBJ) $(B)/libdw.a
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/dualwrite: $(CLI_OBJ) $(B)/libdw.a
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/dw-demo-backend: $(DEMO_OBJ) $(B)/libdw.a
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/tests/test_%: tests/unit/test_%.c $(B)/libdw.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $< $(B)/libdw.a $(LDLIBS) -lcmocka

$(B)/bench/bench_%: tests/bench/bench_%.c $(B)/libdw.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $< $(B)/libdw.a $(LDLIBS)

# Each fuzz target also links against a small main() that replays a corpus, so
# `make check` runs every seed and every crash ever found as a regression test.
$(B)/tests/fuzz_%-replay: tests/fuzz/fuzz_%.c tests/fuzz/replay_main.c $(B)/libdw.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $< tests/fuzz/replay_main.c $(B)/libdw.a $(LDLIBS)

# libFuzzer builds (clang only): make fuzz FUZZ_TIME=60 [FUZZ_TARGETS="http config"]
FUZZ_TIME ?= 30
FUZZ_TARGETS ?= $(FUZZ_SRC:tests/fuzz/fuzz_%.c=%)
fuzz:
	@mkdir -p build-fuzz
	@for t in $(FUZZ_TARGETS); do f=tests/fuzz/fuzz_$$t.c; n=fuzz_$$t; \
	  clang -std=gnu11 -g -O1 -D_GNU_SOURCE -Ilib $(PKG_CFLAGS) -fsanitize=fuzzer,address,undefined \
	    -fno-sanitize-recover=undefined -o build-fuzz/$$n $$f $(LIB_SRC) $(PKG_LIBS) -lpthread -lm || exit 1; \
	  mkdir -p build-fuzz/$$n-corpus; \
	  d=; [ -f tests/fuzz/$$t.dict ] && d=-dict=tests/fuzz/$$t.dict; \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/fuzz/lsan.supp \
	  build-fuzz/$$n -max_total_time=$(FUZZ_TIME) -artifact_prefix=build-fuzz/$$n- $$d \
	    build-fuzz/$$n-corpus tests/fuzz/corpus/$$t || exit 1; \
	done

check: deps
	@$(MAKE) --no-print-directory all
	@B=$(B) tests/run.sh

unit: all
	@B=$(B) tests/run.sh unit

e2e: all
	@B=$(B) tests/run.sh e2e

demo: deps
	@$(MAKE) --no-print-directory all
	@B=$(B) tools/demo/demo.sh

bench: deps
	@$(MAKE) --no-print-directory all
	@B=$(B) tests/bench/bench.sh

install: $(B)/dualwrited $(B)/dualwrite
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/dualwrite/conf \
	           $(DESTDIR)$(PREFIX)/lib/systemd/system
	install -m 0755 $(B)/dualwrited $(B)/dualwrite $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 conf/*.conf $(DESTDIR)$(PREFIX)/share/dualwrite/conf/
	install -m 0644 systemd/* $(DESTDIR)$(PREFIX)/lib/systemd/system/

lint:
	@tools/lint.sh

format:
	clang-format -i lib/*.[ch] daemon/*.[ch] tools/cli/*.[ch] tools/demo/*.c tests/unit/*.c tests/fuzz/*.c

clean:
	rm -rf build build-san build-fuzz

-include $(shell find $(B) -name '*.d' 2>/dev/null)
