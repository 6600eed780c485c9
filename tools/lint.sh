#!/bin/sh
# Static analysis of our own C code: cppcheck and clang-tidy, both quiet
# when the code is clean; any finding fails. CI runs this; so can you.
set -eu
cd "$(dirname "$0")/.."
CFLAGS_PKG=$(pkg-config --cflags libevent jansson libconfig libpq openssl)
SRC=$(ls lib/*.c daemon/*.c tools/cli/*.c tools/demo/*.c)
echo "lint: cppcheck"
# shellcheck disable=SC2086
cppcheck --quiet --error-exitcode=1 --std=c11 --enable=warning,portability,performance \
	--inline-suppr --suppress=missingIncludeSystem -D_GNU_SOURCE -Ilib \
	--include=/usr/include/x86_64-linux-gnu/sys/queue.h $SRC
echo "lint: clang-tidy"
# shellcheck disable=SC2086
clang-tidy --quiet --warnings-as-errors='*' \
	--checks='-*,bugprone-*,-bugprone-easily-swappable-parameters,-bugprone-reserved-identifier,-bugprone-narrowing-conversions,-bugprone-branch-clone,-bugprone-assignment-in-if-condition,clang-analyzer-*,-clang-analyzer-security.insecureAPI.DeprecatedOrUnsafeBufferHandling,-clang-analyzer-valist.Uninitialized' \
	$SRC -- -std=gnu11 -D_GNU_SOURCE -Ilib $CFLAGS_PKG 2>&1 | grep -v "warnings generated" || true
# clang-tidy's exit status is what counts; rerun quietly for it
# shellcheck disable=SC2086
clang-tidy --quiet --warnings-as-errors='*' \
	--checks='-*,bugprone-*,-bugprone-easily-swappable-parameters,-bugprone-reserved-identifier,-bugprone-narrowing-conversions,-bugprone-branch-clone,-bugprone-assignment-in-if-condition,clang-analyzer-*,-clang-analyzer-security.insecureAPI.DeprecatedOrUnsafeBufferHandling,-clang-analyzer-valist.Uninitialized' \
	$SRC -- -std=gnu11 -D_GNU_SOURCE -Ilib $CFLAGS_PKG >/dev/null 2>&1
echo "lint: clean"
