#!/bin/sh
# Run the test suites and end with one line: "N passed, N failed".
#   tests/run.sh [unit|fuzz|e2e|all]     (B=build dir, default build)
# unit: every cmocka binary; fuzz: every fuzz target over its seed corpus and
# every crash ever found (tests/fuzz/corpus/<target>); e2e: pytest over real
# processes on loopback (and throwaway PostgreSQL clusters).
set -u
B=${B:-build}
what=${1:-all}
passed=0
failed=0
failures=""
log=$(mktemp -d "${TMPDIR:-/tmp}/dw-tests.XXXXXX")
trap 'rm -rf "$log"' EXIT
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1}"
# libconfig's own parse-error leak (see the file); ours are still reported
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$PWD/tests/fuzz/lsan.supp}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

run_unit() {
	for t in "$B"/tests/test_*; do
		[ -x "$t" ] || continue
		name=$(basename "$t")
		if "$t" >"$log/$name.out" 2>&1; then rc=0; else rc=$?; fi
		p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log/$name.out" | tail -1)
		f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log/$name.out" | tail -1)
		p=${p:-0}
		f=${f:-0}
		if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi # crashed or sanitizer report
		passed=$((passed + p))
		failed=$((failed + f))
		if [ "$f" -ne 0 ]; then
			failures="$failures $name"
			cat "$log/$name.out"
		fi
		echo "unit  $name: $p passed, $f failed"
	done
}

run_fuzz() {
	for r in "$B"/tests/fuzz_*-replay; do
		[ -x "$r" ] || continue
		name=$(basename "$r" -replay)
		corpus=tests/fuzz/corpus/${name#fuzz_}
		if "$r" "$corpus" >"$log/$name.out" 2>&1; then
			passed=$((passed + 1))
			echo "fuzz  $name: $(tail -1 "$log/$name.out")"
		else
			failed=$((failed + 1))
			failures="$failures $name"
			cat "$log/$name.out"
		fi
	done
}

run_e2e() {
	DW_BUILD=$B "${PYTHON:-/usr/bin/python3}" -m pytest -q -p no:cacheprovider tests/e2e >"$log/e2e.out" 2>&1
	rc=$?
	cat "$log/e2e.out"
	summary=$(tail -1 "$log/e2e.out")
	p=$(echo "$summary" | sed -n 's/.* \([0-9][0-9]*\) passed.*/\1/p; s/^\([0-9][0-9]*\) passed.*/\1/p' | head -1)
	f=$(echo "$summary" | sed -n 's/.* \([0-9][0-9]*\) failed.*/\1/p; s/^\([0-9][0-9]*\) failed.*/\1/p' | head -1)
	e=$(echo "$summary" | sed -n 's/.* \([0-9][0-9]*\) errors\{0,1\}.*/\1/p' | head -1)
	p=${p:-0}
	f=$((${f:-0} + ${e:-0}))
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
	passed=$((passed + p))
	failed=$((failed + f))
	[ "$f" -ne 0 ] && failures="$failures e2e"
}

case $what in
unit) run_unit ;;
fuzz) run_fuzz ;;
e2e) run_e2e ;;
all) run_unit; run_fuzz; run_e2e ;;
*) echo "usage: tests/run.sh [unit|fuzz|e2e|all]" >&2; exit 2 ;;
esac
[ -n "$failures" ] && echo "failing:$failures"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
