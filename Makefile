# dualwrite — one Makefile for the daemon, the CLI, the demo backends and the tests.
#
#   make               build everything into $(B)/
#   make check         install missing Debian packages, then unit, fuzz-corpus and end-to-end tests
#   make demo          the Gear Operations migration, end to end, on a throwaway PostgreSQL
#   make bench         self-contained benchmarks (and, when present, the peer harness)
#   make chaos         a whole Gear Ops migration under faults (tests/e2e/test_chaos.py, full size,
#                      <= 10 min): SIGKILLs, reloads, outages; verify finds only writes recorded as unknown, then finds
#                      exactly the damage it injects; prints a summary (build/chaos-summary.txt)
#   make fuzz          every libFuzzer target FUZZ_SECONDS (60) each, then a report (tests/fuzz/fuzz.sh)
#   make SANITIZE=address,undefined check    the same under ASan/UBSan (build dir build-san/)
#   make install PREFIX=/usr/local DESTDIR=
#   make deb           a Debian package (tools/debian/), checked by lintian when installed
#   make lint | format | clean

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
SHIMS := $(B)/tests/libgaishim.so

.PHONY: all deps check unit e2e fuzz-replay demo bench install deb clean lint format fuzz fuzz-build chaos
all: $(BINS) $(UNIT_BIN) $(FUZZ_REPLAY) $(BENCH_BIN) $(SHIMS)

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

# LD_PRELOAD test seam of tests/e2e/test_dns.py (tests/shim/gai_shim.c): built
# without sanitizers, it only forwards to the real getaddrinfo.
$(B)/tests/libgaishim.so: tests/shim/gai_shim.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 $(CFLAGS) $(WARN) -D_GNU_SOURCE -fPIC -shared -o $@ $< -ldl

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

# libFuzzer builds (clang only), in build-fuzz/: every target runs FUZZ_SECONDS
# (default 60) from its committed seeds plus the build-local corpus
# build-fuzz/corpus/<name>, which keeps what it finds; a report ends the run
# (tests/fuzz/fuzz.sh).  make fuzz [FUZZ_SECONDS=60] [FUZZ_TARGETS="http config"]
#   [FUZZ_MERGE_COMMITTED=1: also merge new inputs into tests/fuzz/corpus/<name>]
FZ           := build-fuzz
FUZZ_SECONDS ?= $(or $(FUZZ_TIME),60)
FUZZ_TARGETS ?= $(FUZZ_SRC:tests/fuzz/fuzz_%.c=%)
FUZZ_CFLAGS  := -std=gnu11 -g -O1 -D_GNU_SOURCE -Ilib $(PKG_CFLAGS) \
                -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_LIB_OBJ := $(LIB_SRC:%.c=$(FZ)/%.o)
FUZZ_BIN     := $(FUZZ_TARGETS:%=$(FZ)/fuzz_%)

$(FZ)/lib/%.o: lib/%.c
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c -o $@ $<

$(FZ)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIB_OBJ)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_LIB_OBJ) $(PKG_LIBS) -lpthread -lm

.SECONDARY: $(FUZZ_LIB_OBJ)
fuzz-build: $(FUZZ_BIN)

fuzz:
	@$(MAKE) --no-print-directory fuzz-build
	@FZ=$(FZ) FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_MERGE_COMMITTED=$(FUZZ_MERGE_COMMITTED) \
	  tests/fuzz/fuzz.sh $(FUZZ_TARGETS)

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

# The short variant of the same test runs in `make check`; DW_CHAOS_* override the sizes.
chaos: deps
	@$(MAKE) --no-print-directory all
	@DW_BUILD=$(B) DW_CHAOS=full $${PYTHON:-/usr/bin/python3} -m pytest -q -s -p no:cacheprovider \
	  tests/e2e/test_chaos.py

bench: deps
	@$(MAKE) --no-print-directory all
	@B=$(B) tests/bench/bench.sh

# Installed layout. The units, sysusers.d and tmpfiles.d files go under
# $(PREFIX)/lib, which systemd searches for /usr and /usr/local alike; the
# units' /usr/local paths are rewritten to $(PREFIX). The configuration in
# $(SYSCONFDIR)/dualwrite is installed only when there is none: an upgrade
# never overwrites an operator's file.
BINDIR      ?= $(PREFIX)/bin
SBINDIR     ?= $(PREFIX)/sbin
MANDIR      ?= $(PREFIX)/share/man
DOCDIR      ?= $(PREFIX)/share/doc/dualwrite
SYSTEMDDIR  ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
SYSCONFDIR  ?= /etc
UNITS       := systemd/dualwrited.service systemd/dualwrite-replay.service \
               systemd/dualwrite-replay.timer
MANS        := daemon/dualwrited.8 tools/cli/dualwrite.1 conf/dualwrite.conf.5
EXAMPLES    := $(wildcard conf/*.conf) conf/dualwrite-alerts.yml conf/dualwrite-dashboard.json

install: $(B)/dualwrited $(B)/dualwrite
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man1 \
	           $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(DOCDIR)/examples \
	           $(DESTDIR)$(SYSTEMDDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR)
	install -m 0755 $(B)/dualwrited $(DESTDIR)$(SBINDIR)/dualwrited
	install -m 0755 $(B)/dualwrite $(DESTDIR)$(BINDIR)/dualwrite
	install -m 0644 tools/cli/dualwrite.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 conf/dualwrite.conf.5 $(DESTDIR)$(MANDIR)/man5/
	install -m 0644 daemon/dualwrited.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 $(EXAMPLES) $(DESTDIR)$(DOCDIR)/examples/
	install -m 0644 README conf/MAPPING.md conf/MIGRATION.md conf/CUTOVER.md $(DESTDIR)$(DOCDIR)/
	for u in $(UNITS); do \
	  sed -e 's|/usr/local/|$(PREFIX)/|g' -e 's|/etc/dualwrite/|$(SYSCONFDIR)/dualwrite/|g' $$u \
	    >$(DESTDIR)$(SYSTEMDDIR)/$$(basename $$u) && \
	  chmod 0644 $(DESTDIR)$(SYSTEMDDIR)/$$(basename $$u) || exit 1; \
	done
	install -m 0644 systemd/dualwrite.sysusers $(DESTDIR)$(SYSUSERSDIR)/dualwrite.conf
	install -m 0644 systemd/dualwrite.tmpfiles $(DESTDIR)$(TMPFILESDIR)/dualwrite.conf
	install -d -m 0750 $(DESTDIR)$(SYSCONFDIR)/dualwrite
	[ -e $(DESTDIR)$(SYSCONFDIR)/dualwrite/dualwrited.conf ] || \
	  install -m 0640 conf/dualwrited.conf $(DESTDIR)$(SYSCONFDIR)/dualwrite/dualwrited.conf

# A Debian package built with dpkg-deb (tools/debian/): make deb DEB_OUT=dir
DEB_OUT ?= build-deb
deb:
	@tools/debian/build.sh $(DEB_OUT)

lint:
	@tools/lint.sh

format:
	clang-format -i lib/*.[ch] daemon/*.[ch] tools/cli/*.[ch] tools/demo/*.c tests/unit/*.c tests/fuzz/*.c

clean:
	rm -rf build build-san build-fuzz build-deb

-include $(shell find $(B) -name '*.d' 2>/dev/null)
-include $(wildcard $(FZ)/lib/*.d)
