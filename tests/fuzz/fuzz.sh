#!/bin/bash
# fuzz.sh — run libFuzzer targets for a bounded time each and print a report
# (called by `make fuzz`, which builds $FZ/fuzz_<name> first).
#
#   FZ=build-fuzz FUZZ_SECONDS=60 tests/fuzz/fuzz.sh config http ...
#
# Each target starts from its committed seeds (tests/fuzz/corpus/<name>, read
# only) and the build-local corpus $FZ/corpus/<name>. What a run finds goes to
# $FZ/new/<name> first and is then merged (-merge=1: only inputs that add
# coverage) into the build-local corpus; with FUZZ_MERGE_COMMITTED=1 also into
# the committed one. Crashes, leaks, timeouts and OOMs are kept under
# $FZ/artifacts/<name>/; a target that finds one stops (libFuzzer stops at the
# first) and the others still run. Ends with one table: CPU seconds (user +
# sys of the fuzzer process), executions, edge coverage (cov), features (ft),
# corpus size, inputs added to the build-local corpus, and findings; exits 1
# if anything was found. Runs on 2 shared cores: call it under nice.
# tests/fuzz/<name>.options holds more libFuzzer flags for a target (one per
# line, # comments); with -detect_leaks=0 there, what the run found is run
# once more with leak detection on afterwards (a leak there is a finding).
set -u
FZ=${FZ:-build-fuzz}
SECONDS_EACH=${FUZZ_SECONDS:-60}
MERGE_COMMITTED=${FUZZ_MERGE_COMMITTED:-}
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$PWD/tests/fuzz/lsan.supp}"
# A smaller quarantine than ASan's 256 MB keeps a minute's RSS near 100 MB.
export ASAN_OPTIONS="${ASAN_OPTIONS:-quarantine_size_mb=32}"
[ $# -gt 0 ] || { echo "usage: tests/fuzz/fuzz.sh TARGET..." >&2; exit 2; }

report=()
found_total=0
cpu_total=0
for t in "$@"; do
	bin=$FZ/fuzz_$t
	seeds=tests/fuzz/corpus/$t
	local_corpus=$FZ/corpus/$t
	new=$FZ/new/$t
	art=$FZ/artifacts/$t
	log=$FZ/logs/$t.log
	if [ ! -x "$bin" ] || [ ! -d "$seeds" ]; then
		echo "fuzz.sh: $bin or $seeds is missing" >&2
		exit 2
	fi
	rm -rf "$new"
	mkdir -p "$local_corpus" "$new" "$art" "$FZ/logs"
	touch "$FZ/logs/$t.start"
	dict=()
	[ -f "tests/fuzz/$t.dict" ] && dict=("-dict=tests/fuzz/$t.dict")
	opts=()
	[ -f "tests/fuzz/$t.options" ] && mapfile -t opts < <(grep -v '^[[:space:]]*\(#\|$\)' "tests/fuzz/$t.options")
	echo "fuzz  $t: ${SECONDS_EACH}s (log $log)"
	/usr/bin/time -f '%U %S' -o "$FZ/logs/$t.cpu" \
		"$bin" -max_total_time="$SECONDS_EACH" -print_final_stats=1 -timeout=10 \
		-rss_limit_mb=2048 -artifact_prefix="$art/" "${dict[@]}" "${opts[@]}" \
		"$new" "$local_corpus" "$seeds" >"$log" 2>&1
	rc=$?
	found=$(find "$art" -type f -newer "$FZ/logs/$t.start" | wc -l)
	# A non-zero exit without an artifact is still a finding (e.g. a deadly signal).
	[ "$rc" -ne 0 ] && [ "$found" -eq 0 ] && found=1
	found_total=$((found_total + found))
	# time(1) puts "Command exited with non-zero status N" first when the fuzzer failed
	cpu=$(awk 'NF == 2 && $1 ~ /^[0-9.]+$/ { printf "%.1f", $1 + $2 }' "$FZ/logs/$t.cpu")
	cpu=${cpu:-?}
	[ "$cpu" != "?" ] && cpu_total=$(awk -v a="$cpu_total" -v b="$cpu" 'BEGIN { printf "%.1f", a + b }')
	execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -1)
	last=$(grep -E '^#[0-9]+' "$log" | grep ' cov: ' | tail -1)
	[ -n "$execs" ] || execs=$(echo "$last" | sed -n 's/^#\([0-9]*\).*/\1/p')
	cov=$(echo "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
	ft=$(echo "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
	newn=$(find "$new" -type f | wc -l)
	leak_note=
	if [ "$newn" -gt 0 ] && printf '%s\n' "${opts[@]}" | grep -qx -- '-detect_leaks=0'; then
		# one process per 200 inputs; LeakSanitizer checks at each exit
		if ! find "$new" -type f -print0 | xargs -0 -n 200 "$bin" -detect_leaks=1 \
			>"$FZ/logs/$t.leaks.log" 2>&1; then
			found=$((found + 1))
			found_total=$((found_total + 1))
			leak_note=" (leak pass failed: $FZ/logs/$t.leaks.log)"
		fi
	fi
	merged=0
	if [ "$newn" -gt 0 ]; then
		n0=$(find "$local_corpus" -type f | wc -l)
		"$bin" -merge=1 -artifact_prefix="$art/merge-" "$local_corpus" "$new" >>"$log" 2>&1 ||
			echo "fuzz  $t: merge into $local_corpus failed (see $log)" >&2
		merged=$(($(find "$local_corpus" -type f | wc -l) - n0))
		if [ -n "$MERGE_COMMITTED" ]; then
			"$bin" -merge=1 -artifact_prefix="$art/merge-" "$seeds" "$new" >>"$log" 2>&1 ||
				echo "fuzz  $t: merge into $seeds failed (see $log)" >&2
		fi
	fi
	corp=$(($(find "$seeds" -type f | wc -l) + $(find "$local_corpus" -type f | wc -l)))
	report+=("$(printf '%-12s %7s %10s %7s %7s %7s %6s %8s' "$t" "$cpu" "${execs:-?}" \
		"${cov:-?}" "${ft:-?}" "$corp" "+$merged" "$found")$leak_note")
	if [ "$found" -ne 0 ]; then
		echo "fuzz  $t: FOUND something (exit $rc); artifacts in $art/:" >&2
		find "$art" -type f -newer "$FZ/logs/$t.start" | sed 's|^|  |' >&2
		grep -E 'ERROR|SUMMARY|deadly|==[0-9]+==' "$log" | head -20 >&2
	fi
done

echo
echo "fuzz report (${SECONDS_EACH}s per target; cov = edges, ft = features; corpus = seeds + $FZ/corpus)"
printf '%-12s %7s %10s %7s %7s %7s %6s %8s\n' target cpu_s execs cov ft corpus added findings
printf '%s\n' "${report[@]}"
echo "total CPU seconds: $cpu_total; findings: $found_total"
[ "$found_total" -eq 0 ]
