#!/bin/sh
# Static analysis of our own C code: cppcheck and clang-tidy, both quiet
# when the code is clean; any finding fails. CI runs this; so can you.
set -eu
cd "$(dirname "$0")/.."
CFLAGS_PKG=$(pkg-config --cflags libevent jansson libconfig libpq openssl)
SRC=$(ls lib/*.c daemon/*.c tools/cli/*.c tools/demo/*.c)
CHECKS='-*,bugprone-*,clang-analyzer-*,-bugprone-easily-swappable-parameters,-bugprone-reserved-identifier,-bugprone-narrowing-conversions,-bugprone-branch-clone,-bugprone-assignment-in-if-condition,-clang-analyzer-security.insecureAPI.DeprecatedOrUnsafeBufferHandling,-clang-analyzer-valist.Uninitialized'

echo "lint: cppcheck"
# shellcheck disable=SC2086
cppcheck --quiet --error-exitcode=1 --std=c11 --enable=warning,portability,performance \
	--inline-suppr --suppress=missingIncludeSystem -D_GNU_SOURCE -Ilib \
	--include=/usr/include/x86_64-linux-gnu/sys/queue.h $SRC

echo "lint: clang-tidy"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# shellcheck disable=SC2086
if ! clang-tidy --quiet --warnings-as-errors='*' --checks="$CHECKS" $SRC -- \
	-std=gnu11 -D_GNU_SOURCE -Ilib $CFLAGS_PKG >"$out" 2>&1; then
	grep -E -A3 'warning:|error:' "$out" || cat "$out"
	echo "lint: clang-tidy found problems" >&2
	exit 1
fi
echo "lint: clean"
