#!/usr/bin/env bash
# bench.sh — the project's benchmarks (`make bench`), self-contained and bounded in time.
#
# Three parts, each measured against a reference from the same run on the same machine,
# because on a shared 2-core box only ratios mean anything:
#   peers  dualwrited vs nginx / HAProxy / h2o through ../shared/bench/peers.sh (skipped, and
#          said so, when that harness is absent): pass-through throughput and idle keep-alive
#          memory, and the mirror scenarios fast / slow / down / hang against nginx `mirror`.
#   read   the read route of Phase 3 (tests/bench/dualwrited-read.conf.tmpl: half of the GETs
#          served by the new system with the answer mapped back, 5 % shadowed) vs dualwrited's own
#          pass-through GET (CPU per request) and vs nginx-get (req/s, p99), through peers.sh:
#          READ_REPS pairs of runs, pass-through then read, interleaved, each paired with the
#          nginx-get measured in the same run.
#   tls    TLS termination at the listener vs nginx and HAProxy terminating TLS in the same
#          run (tests/bench/tls.sh: keep-alive, one worker pinned; req/s and proxy CPU per
#          request, paired against nginx); skipped, and said so, without nginx or haproxy.
#   spool  replay-queue append rate (build/bench/bench_spool) in durability "process" and
#          "fsync" with group commit of K = 1, 8, 50 writers, against PostgreSQL's commit rate
#          (synchronous_commit = on, pgbench, one ~300-byte INSERT per transaction, -c K) on a
#          throwaway cluster (tests/pg.sh) on the same disk; and the mapping's JSON reader and
#          writer (build/bench/bench_json) against jansson on the same documents.
#   data   `dualwrite backfill` rows/s vs a `psql \copy` pipe of the same columns (Gear:
#          old_equipment -> gear_items), peak RSS of backfill, and `dualwrite verify` of N equal
#          rows vs plain full scans of both tables (count(*) and SELECT * to /dev/null).
#   telemetry  the same for the IoT seed's telemetry (device_data -> telemetry, the demo
#          schemas, conf/iot-v2.conf's table map: composite key (device_id, timestamp), jsonb
#          metrics, the tenant injected): backfill rows/s and peak RSS vs a `psql \copy` pipe.
#   replay `dualwrite replay --once` of 200 queued writes to a new system answering in 20 ms,
#          at --concurrency 1, 4 and 16 (tests/bench/replay.py): wall time and the speed-up.
#
# usage: B=build tests/bench/bench.sh            (from anywhere; `make bench` does this)
# env:   QUICK=1                 short runs (about 3 min in all) instead of the default (~15 min)
#        PARTS=peers,read,tls,spool,data,telemetry,replay  which parts to run
#        READ_REPS=3             read part: pairs (pass-through run, read run)
#        SHARED_BENCH=DIR        the peer harness directory (default ../shared/bench beside the repo)
#        BASE_PORT=18000         loopback ports BASE_PORT+10..+95 for the peer harness
#        DURATION REPS PASS_REPS WARMUP NOISY_RETRIES QUIET_WAIT MEM_CONNS MEM_HOLD  peer harness knobs
#        SPOOL_SECONDS  SPOOL_K="1 8 50"  PG_SECONDS           spool part
#        BACKFILL_ROWS="100000 1000000"  VERIFY_ROWS=1000000   data part
#        TELEMETRY_ROWS=1000000                                telemetry part
# Output: a table on stdout at the end; every raw file, log and the exact commands under
# bench-results/bench-<stamp>/ (gitignored): commands.txt, summary.txt, summary.json.
# All load is on 127.0.0.1 (the database on a unix socket); every process started here is
# stopped on exit, by PID.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
B=${B:-build}
[[ $B == /* ]] || B=$ROOT/$B
QUICK=${QUICK:-0}
PARTS=${PARTS:-peers,read,tls,spool,data,telemetry,replay}
SHARED_BENCH=${SHARED_BENCH:-$ROOT/../shared/bench}
HERE=$ROOT/tests/bench

if [[ $QUICK == 1 ]]; then
	: "${DURATION:=3}" "${REPS:=1}" "${PASS_REPS:=1}" "${WARMUP:=1}" "${NOISY_RETRIES:=0}" "${QUIET_WAIT:=2}"
	: "${MEM_CONNS:=1000}" "${MEM_HOLD:=3}"
	: "${SPOOL_SECONDS:=2}" "${PG_SECONDS:=3}"
	: "${BACKFILL_ROWS:=100000}" "${VERIFY_ROWS:=100000}" "${TELEMETRY_ROWS:=100000}"
	: "${READ_REPS:=1}"
	PEERS_TIMEOUT=${PEERS_TIMEOUT:-240}
else
	# pass-through differs from nginx by a few percent, within one repetition's noise: more reps
	: "${DURATION:=8}" "${REPS:=2}" "${PASS_REPS:=4}" "${WARMUP:=2}" "${NOISY_RETRIES:=1}" "${QUIET_WAIT:=5}"
	: "${MEM_CONNS:=1000 10000}" "${MEM_HOLD:=5}"
	: "${SPOOL_SECONDS:=5}" "${PG_SECONDS:=10}"
	: "${BACKFILL_ROWS:=100000 1000000}" "${VERIFY_ROWS:=1000000}" "${TELEMETRY_ROWS:=1000000}"
	: "${READ_REPS:=3}"
	PEERS_TIMEOUT=${PEERS_TIMEOUT:-600}
fi
: "${SPOOL_K:=1 8 50}" "${BASE_PORT:=18000}"

STAMP=$(date -u +%Y%m%dT%H%M%SZ)$([[ $QUICK == 1 ]] && echo -quick || true)
RES=$ROOT/bench-results/bench-$STAMP
mkdir -p "$RES"
CMDS=$RES/commands.txt
: >"$CMDS"
PGDIR=""
SPOOLDIR=""

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
note() { log "$*"; printf '%s\n' "$*" >>"$RES/notes.txt"; }

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [[ -n $PGDIR ]]; then
		tests/pg.sh stop "$PGDIR" >/dev/null 2>&1 || true
		rm -rf "$PGDIR"
	fi
	[[ -n $SPOOLDIR ]] && rm -rf "$SPOOLDIR"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# record CMD...: the exact command line, for the report (shell-quoted, one per line).
record() {
	local q
	q=$(printf '%q ' "$@")
	printf '%s\n' "${q% }" >>"$CMDS"
}

# timed VAR CMD...: run CMD, put its wall time in seconds in VAR; returns CMD's status.
timed() {
	local __var=$1 t0 rc=0
	shift
	record "$@"
	t0=$EPOCHREALTIME
	"$@" || rc=$?
	printf -v "$__var" '%.3f' "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{print b-a}')"
	return $rc
}

# kv KEY VALUE: one result line for report.py.
kv() { printf '%s\t%s\n' "$1" "$2" >>"$RES/data.tsv"; }

part() { [[ ",$PARTS," == *",$1,"* ]]; }

machine_note() {
	{
		echo "stamp $STAMP quick=$QUICK parts=$PARTS"
		echo "cpu $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
		echo "kernel $(uname -r)"
		echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
		echo "dualwrited $(ls -l --time-style=+%FT%T "$B/dualwrited" | awk '{print $6}') built"
	} >"$RES/machine.txt"
}

# ---------------------------------------------------------------- peers
# keep_daemon_logs HARNESS_LOG DEST: save dualwrited's logs and configs from the harness's run
# directory (kept with KEEP_RUN=1 so that a misbehaving daemon can be diagnosed), then remove it.
keep_daemon_logs() {
	local run
	run=$(sed -n 's/.*run dir kept: \(\/tmp\/peers-bench\.[A-Za-z0-9]*\)$/\1/p' "$1" | tail -1)
	[[ -n $run && -d $run ]] || return 0
	mkdir -p "$2"
	cp "$run"/candidate-*.conf "$run"/candidate-*.cmd "$2"/ 2>/dev/null || true
	# the daemon logs a line per mirrored write: keep the head, the tail and the volume
	local f b
	for f in "$run"/peer-candidate-*.log "$run"/peer-mem-candidate-*.log; do
		[[ -f $f ]] || continue
		b=$(basename "$f" .log)
		{ head -n 20 "$f"; echo "..."; tail -n 200 "$f"; } >"$2/$b.log"
		printf '%s\t%s\t%s\n' "$b" "$(wc -l <"$f")" "$(stat -c %s "$f")" >>"$2/log-volume.tsv"
	done
	rm -rf "$run"
}

run_peers() {
	local harness=$SHARED_BENCH/peers.sh
	if [[ ! -x $harness ]]; then
		note "peers: $harness not found; the proxy-vs-peers part is skipped"
		return 0
	fi
	local cand="$HERE/fresh-queue.sh $B/dualwrited -c {conf}"
	local -a common=(env DURATION="$DURATION" REPS="$REPS" WARMUP="$WARMUP"
		NOISY_RETRIES="$NOISY_RETRIES" QUIET_WAIT="$QUIET_WAIT" MEM_CONNS="$MEM_CONNS"
		MEM_HOLD="$MEM_HOLD" BASE_PORT="$BASE_PORT" CANDIDATE="$cand" CANDIDATE_NAME=candidate
		KEEP_RUN=1)
	local -a runs=(
		"pass bench $SHARED_BENCH/conf/dualwrited-passthrough.conf.tmpl nginx,haproxy,h2o,candidate-fast"
		"mem mem $SHARED_BENCH/conf/dualwrited-passthrough.conf.tmpl -"
		"mirror bench $HERE/dualwrited-mirror.conf.tmpl nginx-mirror-fast,candidate-fast,nginx-mirror-slow,candidate-slow,nginx-mirror-down,candidate-down,nginx-mirror-hang,candidate-hang"
	)
	local r name mode tmpl scen rc
	for r in "${runs[@]}"; do
		read -r name mode tmpl scen <<<"$r"
		mkdir -p "$RES/peers-$name"
		local -a cmd=("${common[@]}" CANDIDATE_CONF="$tmpl" OUT_DIR="$RES/peers-$name" TAG="$name")
		[[ $name == pass ]] && cmd+=(REPS="$PASS_REPS")
		[[ $scen != - ]] && cmd+=(SCENARIOS="$scen")
		cmd+=(timeout "$PEERS_TIMEOUT" "$harness" "$mode")
		log "peers: $name ($mode) ..."
		rc=0
		timed t "${cmd[@]}" >"$RES/peers-$name.log" 2>&1 || rc=$?
		kv "peers_${name}_seconds" "$t"
		keep_daemon_logs "$RES/peers-$name.log" "$RES/peers-$name/daemon"
		if ((rc != 0)); then
			note "peers: $name exited $rc after ${t}s (log: $RES/peers-$name.log)"
			tail -5 "$RES/peers-$name.log" >&2 || true
		fi
	done
}

# ---------------------------------------------------------------- read route
# READ_REPS pairs of harness runs, interleaved so that drift hits both alike: the pass-through
# template (dualwrited as a plain proxy) then the read template, each with SCENARIOS
# nginx-get,candidate-get and REPS=1. Run i of peers-getpass/ pairs with run i of peers-read/
# (report.py: CPU per request read / pass-through); within a run, candidate-get pairs with the
# nginx-get before it (req/s, p99).
run_read() {
	local harness=$SHARED_BENCH/peers.sh
	if [[ ! -x $harness ]]; then
		note "read: $harness not found; the read-route part is skipped"
		return 0
	fi
	local cand="$HERE/fresh-queue.sh $B/dualwrited -c {conf}"
	local rep kind tmpl rc t
	for ((rep = 1; rep <= READ_REPS; rep++)); do
		for kind in getpass read; do
			tmpl=$SHARED_BENCH/conf/dualwrited-passthrough.conf.tmpl
			[[ $kind == read ]] && tmpl=$HERE/dualwrited-read.conf.tmpl
			mkdir -p "$RES/peers-$kind"
			log "read: $kind run $rep of $READ_REPS (nginx-get, candidate-get) ..."
			rc=0
			timed t env DURATION="$DURATION" REPS=1 WARMUP="$WARMUP" \
				NOISY_RETRIES="$NOISY_RETRIES" QUIET_WAIT="$QUIET_WAIT" BASE_PORT="$BASE_PORT" \
				CANDIDATE="$cand" CANDIDATE_NAME=candidate KEEP_RUN=1 CANDIDATE_CONF="$tmpl" \
				OUT_DIR="$RES/peers-$kind" TAG="$kind-$rep" SCENARIOS=nginx-get,candidate-get \
				timeout "$PEERS_TIMEOUT" "$harness" bench >"$RES/peers-$kind-$rep.log" 2>&1 || rc=$?
			kv "peers_${kind}_${rep}_seconds" "$t"
			keep_daemon_logs "$RES/peers-$kind-$rep.log" "$RES/peers-$kind/daemon-$rep"
			if ((rc != 0)); then
				note "read: $kind run $rep exited $rc after ${t}s (log: $RES/peers-$kind-$rep.log)"
				tail -5 "$RES/peers-$kind-$rep.log" >&2 || true
			fi
		done
	done
}

# ---------------------------------------------------------------- PostgreSQL
pg_up() {
	[[ -n $PGDIR ]] && return 0
	PGDIR=$(mktemp -d /tmp/dwb-pg.XXXXXX)
	chmod 0755 "$PGDIR"
	log "postgres: starting a throwaway cluster in $PGDIR"
	record env PG_DATABASES="dw_src dw_tgt dw_bench" tests/pg.sh start "$PGDIR"
	eval "$(PG_DATABASES="dw_src dw_tgt dw_bench" tests/pg.sh start "$PGDIR")"
	export PGHOST PGPORT PGUSER PGDATABASE
	export PGOPTIONS="-c client_min_messages=warning"
	local s
	s=$(psql -X -At -d dw_bench -c "SELECT current_setting('server_version') || ' fsync=' ||
		current_setting('fsync') || ' synchronous_commit=' || current_setting('synchronous_commit') ||
		' wal_sync_method=' || current_setting('wal_sync_method') || ' commit_delay=' ||
		current_setting('commit_delay') || ' shared_buffers=' || current_setting('shared_buffers')")
	echo "postgres $s" >>"$RES/machine.txt"
	kv pg_settings "$s"
	[[ $s == *"fsync=on synchronous_commit=on"* ]] || note "postgres: NOT durable as configured: $s"
}

psqlq() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }

# ---------------------------------------------------------------- spool vs PostgreSQL commits
run_spool() {
	local bin=$B/bench/bench_spool
	[[ -x $bin ]] || { note "spool: $bin not built; skipped"; return 0; }
	pg_up
	SPOOLDIR=$(mktemp -d /tmp/dwb-spool.XXXXXX)
	{
		echo "filesystems (spool, postgres):"
		df -P "$SPOOLDIR" "$PGDIR" | awk 'NR>1{print "  " $1, $6}'
	} >>"$RES/machine.txt"
	local ks
	ks=$(echo "$SPOOL_K" | tr ' ' ',')
	log "spool: append rate, process and fsync (K = $SPOOL_K), ${SPOOL_SECONDS}s each"
	record "$bin" -d "$SPOOLDIR" -t "$SPOOL_SECONDS" -k "$ks"
	if ! "$bin" -d "$SPOOLDIR" -t "$SPOOL_SECONDS" -k "$ks" >"$RES/spool.tsv" 2>"$RES/spool.err"; then
		note "spool: bench_spool failed: $(tail -1 "$RES/spool.err")"
	fi

	# The mapping's JSON reader/writer against jansson's (same values, same bytes).
	if [[ -x $B/bench/bench_json ]]; then
		log "json: jsonfast vs jansson on the benchmark body and a small reply"
		record "$B/bench/bench_json" -n 100000 -r 3
		"$B/bench/bench_json" -n 100000 -r 3 >"$RES/json.tsv" 2>"$RES/json.err" ||
			note "json: bench_json failed: $(tail -1 "$RES/json.err")"
	fi

	# PostgreSQL: one INSERT of a ~300-byte JSON row per transaction, synchronous_commit on.
	psqlq -d dw_bench -c "DROP TABLE IF EXISTS bench_journal;
		CREATE TABLE bench_journal (id bigserial PRIMARY KEY, key bigint NOT NULL,
			body text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
	cat >"$RES/pgbench-insert.sql" <<'EOF'
\set k random(1, 1000000000)
INSERT INTO bench_journal (key, body) VALUES (:k, '{"id":' || :k || ',"user_id":977,"name":"Trail tent 2p ultralight model 4242","category":"tent","brand":"brand7","status":"active","role":"personal","tenant_id":"default_tenant_id","weight_g":1240,"color":"forest green","purchased_at":"2024-03-01T12:34:56Z","notes":"bought for the alps trip; seams sealed twice"}');
EOF
	echo "k	tps	transactions	failed" >"$RES/pg.tsv"
	local k out tps n
	for k in $SPOOL_K; do
		log "postgres: pgbench -c $k -j 1 -T $PG_SECONDS (synchronous_commit=on)"
		psqlq -d dw_bench -c "TRUNCATE bench_journal" -c CHECKPOINT
		out=$RES/pgbench-c$k.txt
		record pgbench -n -c "$k" -j 1 -T "$PG_SECONDS" -f "$RES/pgbench-insert.sql" dw_bench
		if ! timeout $((PG_SECONDS + 60)) pgbench -n -c "$k" -j 1 -T "$PG_SECONDS" \
			-f "$RES/pgbench-insert.sql" dw_bench >"$out" 2>&1; then
			note "postgres: pgbench -c $k failed: $(tail -2 "$out" | tr '\n' ' ')"
			continue
		fi
		tps=$(awk '/^tps = /{print $3; exit}' "$out")
		n=$(awk -F': *' '/number of transactions actually processed/{print $2; exit}' "$out")
		printf '%s\t%s\t%s\t%s\n' "$k" "${tps:-}" "${n:-}" \
			"$(awk -F': *' '/number of failed transactions/{print $2; exit}' "$out")" >>"$RES/pg.tsv"
	done
}

# ---------------------------------------------------------------- backfill / verify
GEAR_SRC="DROP TABLE IF EXISTS old_equipment;
CREATE TABLE old_equipment (id bigserial PRIMARY KEY, user_id bigint, name text, type text,
	brand text, created_at timestamptz);"
GEAR_TGT="DROP TABLE IF EXISTS gear_items, dualwrite_backfill_checkpoint;
CREATE TABLE gear_items (id bigint PRIMARY KEY, user_id bigint NOT NULL, name text NOT NULL,
	category text, brand text, status text NOT NULL DEFAULT 'active',
	role text NOT NULL DEFAULT 'personal', created_at timestamptz, updated_at timestamptz);"

gear_source() {  # gear_source ROWS: the seed table filled like tests/e2e/test_datatools.py
	psqlq -d dw_src -c "$GEAR_SRC" -c "
INSERT INTO old_equipment (user_id, name, type, brand, created_at)
SELECT g % 97, 'item ' || g, (ARRAY['tent','stove','rope'])[g % 3 + 1],
	CASE WHEN g % 7 = 0 THEN NULL ELSE 'brand' || g % 10 END,
	timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute'
FROM generate_series(1, $1) g" -c "VACUUM ANALYZE old_equipment"
}

write_conf() {
	cat >"$RES/gear.conf" <<EOF
# Written by tests/bench/bench.sh: the Gear table map only (the proxy keys are required).
listen = "127.0.0.1:$((BASE_PORT + 99))";
upstreams = { legacy = { url = "http://127.0.0.1:$((BASE_PORT + 98))"; };
	gear_ops = { url = "http://127.0.0.1:$((BASE_PORT + 97))"; }; };
default_upstream = "legacy";
queue = { path = "$RES/queue"; };
tenant = { header = "X-Tenant-ID"; default = "default_tenant_id"; };
tables = (
	{ name = "equipment";
	  source = { dsn = "dbname=dw_src"; table = "old_equipment"; key = "id"; };
	  target = { dsn = "dbname=dw_tgt"; table = "gear_items"; key = "id"; };
	  columns = { id = "\$row.id"; user_id = "\$row.user_id"; name = "\$row.name";
		category = "\$row.type"; brand = "\$row.brand"; status = "active"; role = "personal";
		created_at = "\$row.created_at"; updated_at = "\$row.created_at"; };
	}
);
EOF
}

target_rows() { psql -X -At -d dw_tgt -c "SELECT count(*) FROM gear_items"; }
maxrss_kb() { awk -F': ' '/Maximum resident set size/{print $2}' "$1"; }

copy_pipe() {  # the baseline: the same mapped columns through two psql \copy, one pipe
	psql -X -q -d dw_src -c "\\copy (SELECT id, user_id, name, type, brand, 'active', 'personal', created_at, created_at FROM old_equipment) TO STDOUT" |
		psql -X -q -v ON_ERROR_STOP=1 -d dw_tgt -c "\\copy gear_items (id, user_id, name, category, brand, status, role, created_at, updated_at) FROM STDIN"
}

run_data() {
	local dw=$B/dualwrite
	[[ -x $dw ]] || { note "data: $dw not built; skipped"; return 0; }
	pg_up
	write_conf
	local n t rc got out
	for n in $BACKFILL_ROWS; do
		log "data: $n source rows"
		gear_source "$n"
		psqlq -d dw_tgt -c "$GEAR_TGT" -c CHECKPOINT
		psqlq -d dw_src -c CHECKPOINT

		# baseline first: \copy into the empty table, then empty it again for backfill
		rc=0
		record bash -c "psql -d dw_src -c '\\copy (SELECT id, user_id, name, type, brand, ''active'', ''personal'', created_at, created_at FROM old_equipment) TO STDOUT' | psql -d dw_tgt -c '\\copy gear_items (id, user_id, name, category, brand, status, role, created_at, updated_at) FROM STDIN'"
		t0=$EPOCHREALTIME
		copy_pipe 2>"$RES/copy-$n.err" || rc=$?
		t=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.3f", b-a}')
		got=$(target_rows)
		kv "copy_${n}_seconds" "$t"
		kv "copy_${n}_rows" "$got"
		((rc == 0 && got == n)) || note "data: copy pipe of $n rows: rc $rc, $got rows: $(tail -1 "$RES/copy-$n.err")"
		psqlq -d dw_tgt -c "TRUNCATE gear_items" -c CHECKPOINT

		out=$RES/backfill-$n
		rc=0
		timed t /usr/bin/time -v -o "$out.time" "$dw" backfill -c "$RES/gear.conf" --table equipment \
			>"$out.out" 2>"$out.err" || rc=$?
		got=$(target_rows)
		kv "backfill_${n}_seconds" "$t"
		kv "backfill_${n}_rows" "$got"
		kv "backfill_${n}_maxrss_kb" "$(maxrss_kb "$out.time")"
		kv "backfill_${n}_reported" "$(grep -m1 '^backfill' "$out.out" || true)"
		if ((rc != 0 || got != n)); then
			note "data: backfill of $n rows: exit $rc, $got target rows; stderr tail: $(tail -c 300 "$out.err" | tr '\r\n' '  ')"
			continue
		fi

		[[ $n == "$VERIFY_ROWS" ]] || continue
		psqlq -d dw_tgt -c "VACUUM ANALYZE gear_items" -c CHECKPOINT
		out=$RES/verify-$n
		rc=0
		timed t /usr/bin/time -v -o "$out.time" "$dw" verify -c "$RES/gear.conf" --table equipment \
			>"$out.out" 2>"$out.err" || rc=$?
		kv "verify_${n}_seconds" "$t"
		kv "verify_${n}_exit" "$rc"
		kv "verify_${n}_maxrss_kb" "$(maxrss_kb "$out.time")"
		((rc == 0)) || note "data: verify of $n equal rows exited $rc: $(head -c 300 "$out.out" | tr '\n' ' ') $(tail -c 300 "$out.err" | tr '\n' ' ')"

		# the floor a verify cannot beat: one full scan of each table, back to back
		timed t bash -c 'psql -X -At -d dw_src -c "SELECT count(*) FROM old_equipment" >/dev/null &&
			psql -X -At -d dw_tgt -c "SELECT count(*) FROM gear_items" >/dev/null'
		kv "scan_count_${n}_seconds" "$t"
		timed t bash -c 'psql -X -At -d dw_src -c "SELECT * FROM old_equipment" >/dev/null &&
			psql -X -At -d dw_tgt -c "SELECT * FROM gear_items" >/dev/null'
		kv "scan_select_${n}_seconds" "$t"
	done
	kv verify_rows "$VERIFY_ROWS"
}

# ---------------------------------------------------------------- tls
run_tls() {
	local t rc=0 c
	for c in nginx haproxy wrk; do
		if ! PATH=$PATH:/usr/sbin command -v $c >/dev/null; then
			note "tls: $c not installed; the TLS termination part is skipped"
			return 0
		fi
	done
	log "tls: dualwrited vs nginx and haproxy terminating TLS ..."
	timed t env B="$B" DURATION="$DURATION" REPS="$REPS" WARMUP="$WARMUP" \
		BASE_PORT=$((BASE_PORT + 600)) OUT_DIR="$RES/tls" "$HERE/tls.sh" >"$RES/tls.log" 2>&1 || rc=$?
	kv tls_seconds "$t"
	if ((rc != 0)); then
		note "tls: exited $rc after ${t}s (log: $RES/tls.log)"
		tail -5 "$RES/tls.log" >&2 || true
	fi
}

# ---------------------------------------------------------------- telemetry backfill
# The IoT seed's telemetry: V1 device_data -> V2 telemetry, schemas from the demo services
# (tools/demo/schema/iot-v*.sql), the table map of conf/iot-v2.conf with the DSNs moved.
TEL_COLS="tenant_id, device_id, timestamp, metrics, protocol, source, quality"
TEL_SELECT="SELECT 'default_tenant_id', device_id, timestamp, data, protocol, coalesce(source, 'migrated'), 'GOOD' FROM device_data"

telemetry_tables() {  # telemetry_tables ROWS: fresh schemas, ROWS readings of 1,000 devices
	local demo=$B/dw-demo-backend
	psqlq -d dw_src -c "DROP TABLE IF EXISTS device_data, users, devices CASCADE" \
		-c "DROP SEQUENCE IF EXISTS devices_id_seq, users_id_seq"
	psqlq -d dw_tgt -c "DROP TABLE IF EXISTS telemetry, users, devices, device_templates, tenants, idempotency_keys, dualwrite_backfill_checkpoint CASCADE"
	"$demo" --print-schema iot-v1 | psqlq -d dw_src
	"$demo" --print-schema iot-v2 | psqlq -d dw_tgt
	psqlq -d dw_src -c "
INSERT INTO device_data (device_id, timestamp, data, protocol, source)
SELECT 'dev-' || (g % 1000 + 1), timestamptz '2024-03-01 00:00:00+00' + (g / 1000) * interval '1 second',
	jsonb_build_object('temperature', 15 + (g % 40) / 2.0, 'humidity', g % 100, 'battery', 100 - g % 50),
	CASE WHEN g % 3 = 0 THEN 'http' ELSE 'mqtt' END, CASE WHEN g % 4 = 0 THEN NULL ELSE 'gw-' || g % 10 END
FROM generate_series(0, $1 - 1) g" -c "VACUUM ANALYZE device_data"
}

telemetry_conf() {
	{
		echo "# Written by tests/bench/bench.sh: conf/iot-v2.conf's telemetry table map, DSNs moved."
		echo "listen = \"127.0.0.1:$((BASE_PORT + 99))\";"
		echo "upstreams = { v1 = { url = \"http://127.0.0.1:$((BASE_PORT + 98))\"; };"
		echo "	v2 = { url = \"http://127.0.0.1:$((BASE_PORT + 97))\"; }; };"
		echo "default_upstream = \"v1\";"
		echo "queue = { path = \"$RES/queue\"; };"
		echo "tenant = { header = \"X-Tenant-ID\"; default = \"default_tenant_id\"; };"
		echo "tables = ("
		# the map itself, verbatim from the shipped file
		awk '/^    name   = "telemetry";/ { p = 1; print "  {" } p { print } p && /^  }/ { exit }' \
			conf/iot-v2.conf | sed -e 's/dbname=iot_v1/dbname=dw_src/' -e 's/dbname=iot_v2/dbname=dw_tgt/'
		echo ");"
	} >"$RES/iot.conf"
	"$B/dualwrited" -c "$RES/iot.conf" -t >/dev/null
}

telemetry_rows() { psql -X -At -d dw_tgt -c "SELECT count(*) FROM telemetry"; }

telemetry_copy_pipe() {  # the baseline: the same mapped columns through two psql \copy, one pipe
	psql -X -q -d dw_src -c "\\copy ($TEL_SELECT) TO STDOUT" |
		psql -X -q -v ON_ERROR_STOP=1 -d dw_tgt -c "\\copy telemetry ($TEL_COLS) FROM STDIN"
}

run_telemetry() {
	local dw=$B/dualwrite
	[[ -x $dw && -x $B/dw-demo-backend ]] || { note "telemetry: $dw or dw-demo-backend not built; skipped"; return 0; }
	pg_up
	telemetry_conf || { note "telemetry: the table map of conf/iot-v2.conf does not load"; return 0; }
	local n t rc got out
	for n in $TELEMETRY_ROWS; do
		log "telemetry: $n source rows"
		telemetry_tables "$n"
		psqlq -d dw_tgt -c CHECKPOINT
		psqlq -d dw_src -c CHECKPOINT
		rc=0
		record bash -c "psql -X -q -d dw_src -c $(printf %q "\\copy ($TEL_SELECT) TO STDOUT") | psql -X -q -d dw_tgt -c $(printf %q "\\copy telemetry ($TEL_COLS) FROM STDIN")"
		t0=$EPOCHREALTIME
		telemetry_copy_pipe 2>"$RES/tcopy-$n.err" || rc=$?
		t=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.3f", b-a}')
		got=$(telemetry_rows)
		kv "tcopy_${n}_seconds" "$t"
		kv "tcopy_${n}_rows" "$got"
		((rc == 0 && got == n)) || note "telemetry: copy pipe of $n rows: rc $rc, $got rows: $(tail -1 "$RES/tcopy-$n.err")"
		psqlq -d dw_tgt -c "TRUNCATE telemetry" -c CHECKPOINT

		out=$RES/tbackfill-$n
		rc=0
		timed t /usr/bin/time -v -o "$out.time" "$dw" backfill -c "$RES/iot.conf" --table telemetry \
			>"$out.out" 2>"$out.err" || rc=$?
		got=$(telemetry_rows)
		kv "tbackfill_${n}_seconds" "$t"
		kv "tbackfill_${n}_rows" "$got"
		kv "tbackfill_${n}_maxrss_kb" "$(maxrss_kb "$out.time")"
		kv "tbackfill_${n}_reported" "$(grep -m1 '^backfill' "$out.out" || true)"
		((rc == 0 && got == n)) ||
			note "telemetry: backfill of $n rows: exit $rc, $got target rows; stderr tail: $(tail -c 300 "$out.err" | tr '\r\n' '  ')"
	done
}

# ---------------------------------------------------------------- main
[[ -x $B/dualwrited && -x $B/dualwrite ]] || { log "build first: make all (B=$B)"; exit 2; }
: >"$RES/data.tsv"
: >"$RES/notes.txt"
machine_note
busy=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$busy" 'BEGIN{exit !(l > 0.5)}'; then
	note "machine busy at start (load $busy on $(nproc) cores): figures are noisy; compare ratios, not absolutes"
fi
log "bench: parts $PARTS, quick=$QUICK, results in $RES"
T0=$SECONDS
part peers && run_peers
part read && run_read
part tls && run_tls
part spool && run_spool
part data && run_data
part telemetry && run_telemetry
if part replay; then
	log "replay: tests/bench/replay.py"
	record env B="$B" /usr/bin/python3 "$HERE/replay.py"
	B=$B /usr/bin/python3 "$HERE/replay.py" >"$RES/replay.txt" 2>"$RES/replay.err" ||
		note "replay: tests/bench/replay.py failed: $(tail -c 300 "$RES/replay.err" | tr '\r\n' '  ')"
fi
kv total_seconds $((SECONDS - T0))
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RES/machine.txt"
python3 "$HERE/report.py" "$RES" | tee "$RES/summary.txt"
if [[ -f $RES/tls/summary.txt ]]; then
	{ echo; cat "$RES/tls/summary.txt"; } | tee -a "$RES/summary.txt"
fi
if [[ -s $RES/replay.txt ]]; then
	{ echo; cat "$RES/replay.txt"; } | tee -a "$RES/summary.txt"
fi
log "results: $RES"
