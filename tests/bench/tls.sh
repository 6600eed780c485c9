#!/usr/bin/env bash
# tls.sh — TLS termination at the listener: dualwrited vs nginx and HAProxy terminating TLS
# in the same run (the shared peer harness has no TLS scenario; this keeps its conventions).
#
# Each proxy terminates TLS 1.2/1.3 (Mozilla intermediate, the same ECDSA P-256 certificate
# made here with the openssl CLI) on 127.0.0.1 and forwards plain HTTP with upstream
# keep-alive to one JSON origin (nginx answering 201 {"id": ...}). wrk drives it with POSTs of
# a ~300-byte JSON body over CONNS keep-alive TLS connections (the handshakes happen once, in
# the warm-up). Every proxy runs one worker pinned to CPU 0; wrk and the origin share the
# other CPU(s). Repetitions are interleaved (nginx, haproxy, dualwrited; then again), each
# measured run preceded by a WARMUP-second run of its own; the summary gives medians and the
# per-repetition ratio against nginx (req/s, and proxy CPU microseconds per request from
# /proc utime+stime of the proxy's processes over the measured run).
#
# usage: B=build tests/bench/tls.sh        (bench.sh runs it as the "tls" part)
# env:   DURATION=8 REPS=3 WARMUP=2 CONNS=50 BASE_PORT=18600 OUT_DIR=bench-results/tls-<stamp>
# Needs nginx, haproxy, wrk, openssl, taskset. Every process started here is stopped on exit,
# by PID. All load is on 127.0.0.1 and bounded by DURATION.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
B=${B:-build}
[[ $B == /* ]] || B=$ROOT/$B
DURATION=${DURATION:-8}
REPS=${REPS:-3}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-50}
BASE_PORT=${BASE_PORT:-18600}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT_DIR=${OUT_DIR:-$ROOT/bench-results/tls-$STAMP}
(( DURATION >= 1 && DURATION <= 60 )) || { echo "DURATION must be 1..60 s" >&2; exit 2; }
(( REPS >= 1 && REPS <= 10 )) || { echo "REPS must be 1..10" >&2; exit 2; }

P_ORIGIN=$((BASE_PORT + 1))
P_NGINX=$((BASE_PORT + 10))
P_HAPROXY=$((BASE_PORT + 20))
P_DW=$((BASE_PORT + 40))
P_DW_ADMIN=$((BASE_PORT + 41))
NCPU=$(nproc)
LOAD_CPUS=$([[ $NCPU -gt 1 ]] && echo "1-$((NCPU - 1))" || echo 0)
CLK_TCK=$(getconf CLK_TCK)
RUN=$(mktemp -d /tmp/tls-bench.XXXXXX)
declare -a PIDS=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

cleanup() {
	local rc=$? i
	trap - EXIT INT TERM
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		kill -TERM "${PIDS[i]}" 2>/dev/null || true
	done
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		wait "${PIDS[i]}" 2>/dev/null || true
	done
	if [[ ${KEEP_RUN:-0} == 1 ]]; then log "run dir kept: $RUN"; else rm -rf "$RUN"; fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for c in nginx haproxy wrk openssl taskset; do
	command -v $c >/dev/null || PATH=$PATH:/usr/sbin command -v $c >/dev/null || die "$c not available"
done
export PATH=$PATH:/usr/sbin
[[ -x $B/dualwrited ]] || die "build first: make all (B=$B)"
mkdir -p "$OUT_DIR"

# start NAME CPUS CMD...: in the background, pinned; its PID in STARTED
start() {
	local name=$1 cpus=$2
	shift 2
	taskset -c "$cpus" "$@" >"$RUN/$name.log" 2>&1 &
	STARTED=$!
	PIDS+=("$STARTED")
}

wait_port() {
	local i
	for ((i = 0; i < 200; i++)); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.05
	done
	die "nothing listens on port $1 (logs in $RUN)"
}

# cpu_ticks PID: utime+stime of PID and its children (nginx's workers), in clock ticks
cpu_ticks() {
	local sum=0 p s
	local -a f
	for p in $1 $(ps -o pid= --ppid "$1" 2>/dev/null); do
		s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
		s=${s##*) }
		read -r -a f <<<"$s"
		sum=$((sum + f[11] + f[12]))
	done
	echo $sum
}

# ---------------------------------------------------------------- certificate
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
	-keyout "$RUN/key.pem" -out "$RUN/cert.pem" -subj /CN=localhost \
	-addext subjectAltName=IP:127.0.0.1,DNS:localhost 2>"$RUN/openssl.log"
cat "$RUN/cert.pem" "$RUN/key.pem" >"$RUN/haproxy.pem"
CIPHERS='ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305'

# ---------------------------------------------------------------- configurations
nginx_common() {
	cat <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $RUN/$1.pid;
error_log $RUN/$1.err crit;
events { worker_connections 19000; }
EOF
}
{
	nginx_common origin
	cat <<EOF
http {
    access_log off;
    client_body_temp_path $RUN/tmp-origin;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_buffer_size 16k;
    default_type application/json;
    server {
        listen 127.0.0.1:$P_ORIGIN backlog=4096;
        location / { return 201 '{"id":"\$request_id","status":"created"}\n'; }
    }
}
EOF
} >"$RUN/origin.conf"
{
	nginx_common nginx
	cat <<EOF
http {
    access_log off;
    client_body_temp_path $RUN/tmp-nginx;
    proxy_temp_path $RUN/tmp-nginx-proxy;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_buffer_size 16k;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers $CIPHERS;
    ssl_prefer_server_ciphers off;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    upstream legacy {
        server 127.0.0.1:$P_ORIGIN;
        keepalive 128;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$P_NGINX ssl backlog=4096;
        ssl_certificate $RUN/cert.pem;
        ssl_certificate_key $RUN/key.pem;
        location / {
            proxy_pass http://legacy;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-Proto https;
        }
    }
}
EOF
} >"$RUN/nginx.conf"
cat >"$RUN/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8000
    tune.bufsize 16384
    ssl-default-bind-ciphers $CIPHERS
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    option http-keep-alive
    timeout connect 1s
    timeout client 120s
    timeout server 10s
    timeout http-request 10s
    timeout http-keep-alive 120s
frontend fe
    bind 127.0.0.1:$P_HAPROXY ssl crt $RUN/haproxy.pem alpn http/1.1
    http-request set-header X-Forwarded-Proto https
    default_backend legacy
backend legacy
    http-reuse safe
    server s1 127.0.0.1:$P_ORIGIN
EOF
cat >"$RUN/dualwrited.conf" <<EOF
listen  = ( { addr = "127.0.0.1:$P_DW"; tls = { cert = "$RUN/cert.pem"; key = "$RUN/key.pem"; }; } );
workers = 1;
admin   = { listen = "127.0.0.1:$P_DW_ADMIN"; };
upstreams = { legacy = { url = "http://127.0.0.1:$P_ORIGIN"; timeout_ms = 10000; }; };
default_upstream = "legacy";
queue = { path = "$RUN/queue"; };
EOF
cat >"$RUN/post.lua" <<'EOF'
wrk.method = "POST"
wrk.path = "/api/v1/orders"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"order_id":"ord-7f3c9a12-5b7e-4c1d-9e8a-2f6b0c4d8e11",' ..
           '"customer":{"id":48213,"email":"jane.doe@example.com","tier":"gold"},' ..
           '"items":[{"sku":"SKU-10023","qty":2,"price":19.99},' ..
           '{"sku":"SKU-20077","qty":1,"price":149.50}],' ..
           '"currency":"EUR","note":"leave at the door, ring twice",' ..
           '"created_at":"2024-05-01T12:34:56Z","idempotency_key":"b9e1f0aa77"}'
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKRESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
EOF

# ---------------------------------------------------------------- processes
mkdir -p "$RUN/queue"
start origin "$LOAD_CPUS" nginx -c "$RUN/origin.conf" -p "$RUN"
wait_port $P_ORIGIN
declare -A PID_OF PORT_OF
start nginx 0 nginx -c "$RUN/nginx.conf" -p "$RUN"
PID_OF[nginx]=$STARTED PORT_OF[nginx]=$P_NGINX
start haproxy 0 haproxy -db -f "$RUN/haproxy.cfg"
PID_OF[haproxy]=$STARTED PORT_OF[haproxy]=$P_HAPROXY
start dualwrited 0 "$B/dualwrited" -c "$RUN/dualwrited.conf"
PID_OF[dualwrited]=$STARTED PORT_OF[dualwrited]=$P_DW
for n in nginx haproxy dualwrited; do
	wait_port "${PORT_OF[$n]}"
	out=$(curl -sk -X POST -d '{}' "https://127.0.0.1:${PORT_OF[$n]}/check" -w ' %{http_code}') ||
		die "$n: no HTTPS answer"
	[[ $out == *" 201" ]] || die "$n: answered '$out'"
done

# ---------------------------------------------------------------- runs
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$line"; }
TSV=$OUT_DIR/tls-runs.tsv
printf 'rep\tproxy\treq_s\tcpu_us_per_req\tp50_us\tp99_us\terrors\tforeign_load\n' >"$TSV"
{
	echo "# B=$B DURATION=$DURATION REPS=$REPS WARMUP=$WARMUP CONNS=$CONNS tests/bench/tls.sh"
	echo "# proxies on CPU 0; load on CPU $LOAD_CPUS; per run:"
	echo "taskset -c $LOAD_CPUS wrk -t1 -c$CONNS -d${DURATION}s --latency -s post.lua https://127.0.0.1:PORT/"
} >"$OUT_DIR/commands.txt"
for ((rep = 1; rep <= REPS; rep++)); do
	for n in nginx haproxy dualwrited; do
		url=https://127.0.0.1:${PORT_OF[$n]}/
		taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "$RUN/post.lua" "$url" >/dev/null 2>&1 || true
		t0=$(cpu_ticks "${PID_OF[$n]}")
		load0=$(cut -d' ' -f1 /proc/loadavg)
		taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$RUN/post.lua" "$url" \
			>"$OUT_DIR/wrk-$n-$rep.txt" 2>&1 || log "wrk for $n exited non-zero"
		t1=$(cpu_ticks "${PID_OF[$n]}")
		line=$(grep WRKRESULT "$OUT_DIR/wrk-$n-$rep.txt" || true)
		[[ -n $line ]] || die "$n: no wrk result (see $OUT_DIR/wrk-$n-$rep.txt)"
		awk -v rep="$rep" -v n="$n" -v r="$(field requests)" -v d="$(field duration_us)" \
			-v ticks=$((t1 - t0)) -v hz="$CLK_TCK" -v p50="$(field p50_us)" -v p99="$(field p99_us)" \
			-v e="$(field errors)" -v l="$load0" \
			'BEGIN{printf "%d\t%s\t%.0f\t%.1f\t%d\t%d\t%d\t%s\n", rep, n, r / (d / 1e6),
			       ticks * 1e6 / hz / r, p50, p99, e, l}' >>"$TSV"
		log "rep $rep $n: $(tail -1 "$TSV" | cut -f3-7)"
	done
done

# ---------------------------------------------------------------- summary
python3 - "$TSV" <<'EOF' | tee "$OUT_DIR/summary.txt"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
by = {}
for r in rows:
    by.setdefault(r["proxy"], []).append(r)
ref = {r["rep"]: r for r in by["nginx"]}
med = statistics.median
print("TLS termination (keep-alive, 1 worker pinned, POST ~300 B, %d reps)" % len(ref))
print("%-11s %9s %9s %11s %9s %9s %7s %7s" % ("proxy", "req/s", "vs nginx", "cpu us/req",
      "vs nginx", "p99 us", "errors", "reps"))
for n in ("nginx", "haproxy", "dualwrited"):
    rs = by.get(n, [])
    if not rs:
        continue
    rps = med(float(r["req_s"]) for r in rs)
    cpu = med(float(r["cpu_us_per_req"]) for r in rs)
    ratio = med(float(r["req_s"]) / float(ref[r["rep"]]["req_s"]) for r in rs)
    cratio = med(float(r["cpu_us_per_req"]) / float(ref[r["rep"]]["cpu_us_per_req"]) for r in rs)
    print("%-11s %9.0f %8.2fx %11.1f %8.2fx %9.0f %7d %7d" % (
        n, rps, ratio, cpu, cratio, med(float(r["p99_us"]) for r in rs),
        sum(int(r["errors"]) for r in rs), len(rs)))
EOF
log "results: $OUT_DIR"
