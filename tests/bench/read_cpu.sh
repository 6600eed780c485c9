#!/bin/bash
# read_cpu.sh — CPU per request of one dualwrited worker behind two nginx JSON
# origins (../shared/bench/conf/origin.nginx.conf.tmpl: "legacy" and "gear"),
# for pass-through and for read routes (issue 11). Bounded: one wrk run.
#
#   tests/bench/read_cpu.sh BIN [ROUTES_FILE]           wrk -t1 -c50 -d5s; CPU s from /proc
#   MODE=callgrind tests/bench/read_cpu.sh BIN [ROUTES] wrk -t1 -c10 -d8s under callgrind;
#                                                       instructions per request (start-up
#                                                       included, < 1%): not disturbed by
#                                                       other load on the machine
# ROUTES_FILE holds a `routes = (...);` section using upstreams "legacy" and "gear", e.g.
#   routes = ( { name = "r"; match = "GET /x"; read = { upstream = "gear"; weight = 100;
#     response = { body = { id = "$response.id"; from = "$response.source"; }; }; }; } );
set -euo pipefail
BIN=$1
EXTRA=${2:-}
MODE=${MODE:-wrk}
URLPATH=${URLPATH:-/x}
SHARED_BENCH=${SHARED_BENCH:-$(cd "$(dirname "$0")/../.." && pwd)/../shared/bench}
TMPL=$SHARED_BENCH/conf/origin.nginx.conf.tmpl
RUN=$(mktemp -d /tmp/read_cpu.XXXXXX)
D="" N1="" N2=""
cleanup() {
	for p in $D $N1 $N2; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$RUN"
}
trap cleanup EXIT
read -r P PN PL PA P4 P5 < <(python3 -c 'import socket
ss=[socket.socket() for _ in range(6)]
[s.bind(("127.0.0.1", 0)) for s in ss]
print(*[s.getsockname()[1] for s in ss])')
origin() { # name port status_port
	sed -e "s|@RUN@|$RUN|g" -e "s|@NAME@|$1|g" -e "s|@PORT@|$2|g" -e "s|@STATUS_PORT@|$3|g" \
		-e "s|@WORKERS@|1|g" -e "s|@TAG@|$1|g" "$TMPL" >"$RUN/$1.conf"
	nginx -c "$RUN/$1.conf" -p "$RUN" 2>/dev/null &
}
origin legacy "$PL" "$P4"; N1=$!
origin gear "$PN" "$P5"; N2=$!
cat >"$RUN/dw.conf" <<C
listen = "127.0.0.1:$P"; workers = 1; admin = { listen = "127.0.0.1:$PA"; };
upstreams = { legacy = { url = "http://127.0.0.1:$PL"; timeout_ms = 10000; };
              gear = { url = "http://127.0.0.1:$PN"; timeout_ms = 10000; }; };
default_upstream = "legacy"; queue = { path = "$RUN/queue"; }; log_level = "warn";
C
[[ -n $EXTRA ]] && cat "$EXTRA" >>"$RUN/dw.conf"
if [[ $MODE == callgrind ]]; then
	valgrind --tool=callgrind --callgrind-out-file="$RUN/cg.out" --log-file="$RUN/vg.log" \
		"$BIN" -c "$RUN/dw.conf" &
	D=$! C=10 SECS=8
else
	"$BIN" -c "$RUN/dw.conf" &
	D=$! C=50 SECS=5
fi
for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:$P$URLPATH" && break; sleep 0.1; done
echo "answer: $(curl -s "http://127.0.0.1:$P$URLPATH")"
wrk -t1 -c$C -d1s "http://127.0.0.1:$P$URLPATH" >/dev/null
t0=$(awk '{print $14+$15}' /proc/$D/stat)
out=$(wrk -t1 -c$C -d${SECS}s "http://127.0.0.1:$P$URLPATH")
t1=$(awk '{print $14+$15}' /proc/$D/stat)
echo "$out" | grep -E 'requests in|Requests/sec|Non-2xx' | tr -s ' '
if [[ $MODE == callgrind ]]; then
	n=$(curl -s "http://127.0.0.1:$PA/metrics" | awk '/^dualwrite_requests_total/{s+=$NF} END{print s}')
	kill "$D"; wait "$D" || true; D=""
	awk -v t="$(awk '/Collected/{print $NF}' "$RUN/vg.log")" -v n="$n" \
		'BEGIN{printf "callgrind: %d requests, %.0f instructions/request\n", n, t/n}'
else
	req=$(echo "$out" | awk '/requests in/{print $1}')
	awk -v r="$req" -v a="$t0" -v b="$t1" -v tk="$(getconf CLK_TCK)" \
		'BEGIN{printf "cpu %.2f s for %d requests: %.2f us/request\n", (b-a)/tk, r, (b-a)/tk/r*1e6}'
fi
