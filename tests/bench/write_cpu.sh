#!/bin/bash
# write_cpu.sh — CPU per mirrored write of one dualwrited worker behind two nginx origins
# answering 201 {"id":42,...} to any POST (issue 12): the legacy-first mirror path against the
# write cut-over's path (authority "new": the new system first, the reverse mirror to the
# legacy) with the same template the other way round, and with a `request` mapping too.
#
#   tests/bench/write_cpu.sh BIN [ROUNDS]     ROUNDS (default 3) x (A, B, C), wrk -t1 -c16 -d5s
#   MODE=callgrind tests/bench/write_cpu.sh BIN  one round under callgrind (wrk -c4 -d6s):
#                                              instructions per write, start-up included
#                                              (< 1%), not disturbed by other load
#
#   A  legacy-first: mirror = { upstream = new; key = $response.id; base = $request; body = ... }
#   B  authority "new", the same block as `reverse` (to the legacy), client request unchanged
#   C  as B with request = { base = "$request"; body = { tenant_id = "$tenant"; }; } (one more
#      JSON parse, map and dump per write)
# CPU is dualwrited's user+sys from the start of the run until every mirror of it has settled
# (the sum of dualwrite_mirror_total stops moving), divided by the run's requests. Bounded:
# 3 x ROUNDS runs of about 8 s. Everything started here is stopped on exit, by PID.
set -euo pipefail
BIN=$1
ROUNDS=${2:-3}
RUN=$(mktemp -d /tmp/write_cpu.XXXXXX)
D="" NG=""
cleanup() {
	for p in $D $NG; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$RUN"
}
trap cleanup EXIT
read -r P PA PL PN < <(python3 -c 'import socket
ss=[socket.socket() for _ in range(4)]
[s.bind(("127.0.0.1", 0)) for s in ss]
print(*[s.getsockname()[1] for s in ss])')
mkdir -p "$RUN/tmp"
cat >"$RUN/nginx.conf" <<C
worker_processes 1; daemon off; pid $RUN/nginx.pid; error_log $RUN/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  client_body_temp_path $RUN/tmp/b; proxy_temp_path $RUN/tmp/p; fastcgi_temp_path $RUN/tmp/f;
  uwsgi_temp_path $RUN/tmp/u; scgi_temp_path $RUN/tmp/s;
  server { listen 127.0.0.1:$PL; location / { default_type application/json;
           return 201 '{"id":42,"status":"created","total":19.5}'; } }
  server { listen 127.0.0.1:$PN; location / { default_type application/json;
           return 201 '{"id":42,"status":"created","total":19.5}'; } }
}
C
nginx -c "$RUN/nginx.conf" -p "$RUN" 2>/dev/null &
NG=$!
cat >"$RUN/post.lua" <<'L'
wrk.method = "POST"
wrk.body   = '{"customer":"c-17","items":[{"sku":"A-1","qty":2},{"sku":"B-9","qty":1}],"total":19.5}'
wrk.headers["Content-Type"] = "application/json"
L
common="listen = \"127.0.0.1:$P\"; workers = 1; admin = { listen = \"127.0.0.1:$PA\"; };
upstreams = { legacy = { url = \"http://127.0.0.1:$PL\"; timeout_ms = 10000; };
              new = { url = \"http://127.0.0.1:$PN\"; timeout_ms = 10000; }; };
default_upstream = \"legacy\"; queue = { path = \"$RUN/queue\"; max_bytes = 1073741824; };
log_level = \"warn\";"
block='path = "/api/v1/orders"; key = "$response.id"; base = "$request";
  body = { id = "$response.id"; tenant_id = "$tenant"; };'
mirror="mirror = { upstream = \"new\"; $block };"
route='name = "orders-create"; match = "POST /api/v1/orders";'
printf '%s\nroutes = ( { %s %s } );\n' "$common" "$route" "$mirror" >"$RUN/A.conf"
printf '%s\nroutes = ( { %s authority = "new"; %s reverse = { %s }; } );\n' \
	"$common" "$route" "$mirror" "$block" >"$RUN/B.conf"
printf '%s\nroutes = ( { %s authority = "new"; %s reverse = { %s };
  request = { path = "/api/v1/orders"; base = "$request"; body = { tenant_id = "$tenant"; }; }; } );\n' \
	"$common" "$route" "$mirror" "$block" >"$RUN/C.conf"

settled() { # the sum of dualwrite_mirror_total once it stops moving
	local prev=-1 cur
	while :; do
		cur=$(curl -s "127.0.0.1:$PA/metrics" | awk '/^dualwrite_mirror_total/ {s+=$2} END {print s+0}')
		[[ $cur == "$prev" ]] && break
		prev=$cur
		sleep 0.5
	done
	echo "$cur"
}

one() { # config name
	rm -rf "$RUN/queue"
	if [[ ${MODE:-wrk} == callgrind ]]; then
		valgrind --tool=callgrind --callgrind-out-file="$RUN/cg.out" --log-file="$RUN/vg.log" \
			"$BIN" -c "$RUN/$1.conf" 2>"$RUN/$1.log" &
		D=$!
		for _ in $(seq 300); do curl -sf -o /dev/null "127.0.0.1:$PA/ready" && break; sleep 0.1; done
		wrk -t1 -c4 -d6s -s "$RUN/post.lua" "http://127.0.0.1:$P/api/v1/orders" >/dev/null
		local m
		m=$(settled)
		kill "$D"
		wait "$D" || true
		D=""
		awk -v t="$(awk '/Collected/{print $NF}' "$RUN/vg.log")" -v n="$m" -v c="$1" \
			'BEGIN{printf "%s\tmirrored=%d\tinstructions_per_write=%.0f\n", c, n, t/n}'
		return
	fi
	"$BIN" -c "$RUN/$1.conf" 2>"$RUN/$1.log" &
	D=$!
	for _ in $(seq 100); do curl -sf -o /dev/null "127.0.0.1:$PA/ready" && break; sleep 0.1; done
	wrk -t1 -c16 -d1s -s "$RUN/post.lua" "http://127.0.0.1:$P/api/v1/orders" >/dev/null
	local m0 m1 t0 t1 out n bad
	m0=$(settled)
	t0=$(awk '{print $14+$15}' /proc/$D/stat)
	out=$(wrk -t1 -c16 -d5s -s "$RUN/post.lua" "http://127.0.0.1:$P/api/v1/orders")
	m1=$(settled)
	t1=$(awk '{print $14+$15}' /proc/$D/stat)
	n=$(echo "$out" | awk '/requests in/ {print $1}')
	bad=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
	kill "$D"
	wait "$D" || true
	D=""
	printf '%s\trequests=%s\tnon2xx=%s\tmirrored=%s\tcpu_us_per_write=%.2f\n' "$1" "$n" \
		"${bad:-0}" "$((m1 - m0))" "$(echo "($t1 - $t0) * 1000000 / $(getconf CLK_TCK) / $n" | bc -l)"
}

[[ ${MODE:-wrk} == callgrind ]] && ROUNDS=1
for _ in $(seq "$ROUNDS"); do
	for c in A B C; do one $c; done
done
