"""test_lifecycle — running dualwrited as an operator does (SPEC §2, §6).

`-t` on good and broken configurations (exit 0 / exit 2 with file:line),
`--help`, the admin endpoint (/health /ready /metrics /status), SIGHUP with
a valid change (new default upstream, new listen port, under load with zero
failed requests, in-flight requests finishing on the old configuration), a
rejected reload (old configuration keeps serving, failure counted and
logged), and SIGTERM draining a slow in-flight request while refusing new
connections, then exiting 0.
"""

import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from backends import Reply
from helpers import (SLOW, Conn, connect_refused, daemon_binary, free_port,
                     metric_sum, parse_metrics, request, wait_for)

CMD_TIMEOUT = 20 * SLOW


def run(*args):
    return subprocess.run([daemon_binary()] + list(args), stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=CMD_TIMEOUT, text=True)


def write(tmp_path, name, text):
    p = os.path.join(str(tmp_path), name)
    with open(p, "w") as f:
        f.write(text)
    return p


def good_config(tmp_path):
    return """listen = "127.0.0.1:%d";
admin = { listen = "127.0.0.1:%d"; };
limits = { max_body_bytes = 65536; header_timeout_ms = 5000; };
upstreams = {
  legacy   = { url = "http://127.0.0.1:8000"; timeout_ms = 5000; };
  gear_ops = { url = "http://127.0.0.1:8002"; timeout_ms = 2000; };
};
default_upstream = "legacy";
queue = { path = "%s"; };
routes = (
  {
    name  = "equipment-create";
    match = "POST /equipment";
    mirror = {
      upstream = "gear_ops";
      path     = "/gear-items";
      key      = "$response.id";
      body = { id = "$response.id"; name = "$request.name"; status = "active"; };
    };
  }
);
""" % (free_port(), free_port(), os.path.join(str(tmp_path), "q"))


# ---------------------------------------------------------------- command line


def test_check_good_config(tmp_path):
    p = write(tmp_path, "good.conf", good_config(tmp_path))
    r = run("-t", "-c", p)
    assert r.returncode == 0, r
    assert "configuration ok" in (r.stdout + r.stderr), r


def test_check_good_config_option_order(tmp_path):
    p = write(tmp_path, "good.conf", good_config(tmp_path))
    r = run("-c", p, "-t")
    assert r.returncode == 0, r
    assert "configuration ok" in (r.stdout + r.stderr), r


def _broken(tmp_path, kind):
    text = good_config(tmp_path)
    lines = text.splitlines()
    if kind == "syntax":
        i = next(n for n, ln in enumerate(lines) if ln.startswith("default_upstream"))
        lines[i] = 'default_upstream = = "legacy";'
        return "\n".join(lines) + "\n", {i + 1}
    if kind == "unknown-upstream":
        i = next(n for n, ln in enumerate(lines) if 'upstream = "gear_ops"' in ln)
        lines[i] = lines[i].replace("gear_ops", "nope")
        start = next(n for n, ln in enumerate(lines) if ln.startswith("routes"))
        return "\n".join(lines) + "\n", set(range(start + 1, len(lines) + 1))
    if kind == "bad-expression":
        i = next(n for n, ln in enumerate(lines) if "key      =" in ln)
        lines[i] = '      key      = "$bogus.id";'
        start = next(n for n, ln in enumerate(lines) if ln.startswith("routes"))
        return "\n".join(lines) + "\n", set(range(start + 1, len(lines) + 1))
    if kind == "bad-type":
        i = next(n for n, ln in enumerate(lines) if ln.startswith("limits"))
        lines[i] = 'limits = { max_body_bytes = "big"; };'
        return "\n".join(lines) + "\n", {i + 1}
    if kind == "unknown-default":
        i = next(n for n, ln in enumerate(lines) if ln.startswith("default_upstream"))
        lines[i] = 'default_upstream = "missing";'
        return "\n".join(lines) + "\n", {i + 1}
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["syntax", "unknown-upstream", "bad-expression", "bad-type",
                                  "unknown-default"])
def test_check_broken_config_exits_2_naming_file_and_line(tmp_path, kind):
    text, lines = _broken(tmp_path, kind)
    p = write(tmp_path, "broken.conf", text)
    r = run("-t", "-c", p)
    assert r.returncode == 2, r
    assert "configuration ok" not in r.stdout + r.stderr
    found = [int(m.group(1)) for m in re.finditer(r"broken\.conf:(\d+)", r.stderr)]
    assert found, "stderr does not name broken.conf:LINE: %r" % r.stderr
    assert set(found) & lines, "stderr names line(s) %r, expected one of %r: %r" % (
        found, sorted(lines), r.stderr)
    if kind == "unknown-upstream":
        assert "nope" in r.stderr, r.stderr


def test_check_missing_file_exits_2(tmp_path):
    p = os.path.join(str(tmp_path), "absent.conf")
    r = run("-t", "-c", p)
    assert r.returncode == 2, r
    assert "absent.conf" in r.stderr, r.stderr


def test_help_exits_0():
    r = run("--help")
    assert r.returncode == 0, r
    assert "-c" in r.stdout + r.stderr


def test_unknown_option_exits_2():
    r = run("--no-such-option")
    assert r.returncode == 2, r
    assert r.stderr.strip(), "a usage error must say something on stderr"


def test_run_with_broken_config_exits_2(tmp_path):
    text, _ = _broken(tmp_path, "syntax")
    p = write(tmp_path, "broken.conf", text)
    r = run("-c", p)
    assert r.returncode == 2, r
    assert re.search(r"broken\.conf:\d+", r.stderr), r.stderr


def test_listen_address_in_use_exits_1(dw, backend):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        d = dw({"legacy": backend.url}, start=False)
        d.port = taken.getsockname()[1]
        d.write_config()
        d.start(wait=False)
        rc = d.wait_exit(10)
        assert rc is not None, "daemon kept running with its listen address taken"
        d.stopped_by_test = True
        assert rc == 1, "exit %r, want 1 (runtime failure); log:\n%s" % (rc, d.log_text())
        assert str(d.port) in d.log_text(), d.log_text()
    finally:
        taken.close()


# ---------------------------------------------------------------- admin


def test_admin_endpoints(daemon, backend):
    assert daemon.admin("/health").status == 200
    assert daemon.admin("/ready").status == 200
    for i in range(3):
        assert request(daemon.port, "GET", "/m%d" % i).status == 200
    m = daemon.admin("/metrics")
    assert m.status == 200
    assert (m.header("Content-Type") or "").startswith("text/plain"), m.headers
    text = m.body.decode()
    series = parse_metrics(text)  # strict: every line well-formed
    names = {n for n, _, _ in series}
    assert "dualwrite_requests_total" in names, text
    assert "dualwrite_request_duration_seconds_bucket" in names, text
    assert "dualwrite_request_duration_seconds_count" in names, text
    assert "dualwrite_request_duration_seconds_sum" in names, text
    assert "dualwrite_config_reloads_total" in text, text
    assert "# TYPE dualwrite_request_duration_seconds histogram" in text
    assert metric_sum(text, "dualwrite_requests_total") >= 3
    assert metric_sum(text, "dualwrite_request_duration_seconds_bucket", le="+Inf") >= 3
    s = daemon.admin("/status")
    assert s.status == 200
    assert (s.header("Content-Type") or "").startswith("application/json")
    assert isinstance(s.json(), dict)
    assert daemon.admin("/no-such-thing").status == 404


def test_requests_total_counts_each_request(daemon, backend):
    before = daemon.metric("dualwrite_requests_total")
    with Conn(daemon.port) as c:
        for i in range(5):
            assert c.request("GET", "/count/%d" % i).status == 200
    after = wait_for(lambda: (daemon.metric("dualwrite_requests_total") >= before + 5
                              and daemon.metric("dualwrite_requests_total")),
                     3, "requests_total to count 5 requests")
    assert after == before + 5


# ---------------------------------------------------------------- reload


def two_backend_daemon(dw, a, b, default="legacy"):
    return dw({"legacy": {"url": a.url, "timeout_ms": 5000},
               "legacy2": {"url": b.url, "timeout_ms": 5000}}, default_upstream=default)


def test_reload_switches_default_upstream(dw, make_backend):
    a = make_backend(name="A")
    b = make_backend(name="B")
    a.reply(200, b"from A")
    b.reply(200, b"from B")
    d = two_backend_daemon(dw, a, b)
    assert request(d.port, "GET", "/x").body == b"from A"
    ok_before = d.metric("dualwrite_config_reloads_total", result="ok")
    ok_after = d.reload(d.config_text(default_upstream="legacy2"))
    assert ok_after == ok_before + 1
    for i in range(3):
        assert request(d.port, "GET", "/y%d" % i).body == b"from B"
    assert a.targets() == ["/x"]
    assert b.targets() == ["/y0", "/y1", "/y2"]
    assert d.admin("/ready").status == 200


def test_reload_keeps_keep_alive_connections(dw, make_backend):
    a = make_backend(name="A")
    b = make_backend(name="B")
    a.reply(200, b"from A")
    b.reply(200, b"from B")
    d = two_backend_daemon(dw, a, b)
    with Conn(d.port) as c:
        assert c.request("GET", "/1").body == b"from A"
        d.reload(d.config_text(default_upstream="legacy2"))
        r = c.request("GET", "/2")  # same client connection, not dropped
        assert r.status == 200
        assert r.body == b"from B"


def test_reload_lets_in_flight_request_finish_on_old_config(dw, make_backend):
    a = make_backend(name="A")
    b = make_backend(name="B")
    a.handler = lambda req: Reply(200, b"slow A", delay=1.0)
    b.reply(200, b"from B")
    d = two_backend_daemon(dw, a, b)
    result = {}

    def slow():
        try:
            result["r"] = request(d.port, "POST", "/slow", body=b"w")
        except Exception as e:  # reported below
            result["e"] = e

    t = threading.Thread(target=slow)
    t.start()
    a.wait_requests(1)
    d.reload(d.config_text(default_upstream="legacy2"))
    assert request(d.port, "GET", "/new").body == b"from B"
    t.join(timeout=10 * SLOW)
    assert not t.is_alive()
    assert "e" not in result, result
    assert result["r"].status == 200 and result["r"].body == b"slow A"


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_under_load_drops_nothing(dw, make_backend, workers):
    a = make_backend(name="A")
    b = make_backend(name="B")
    d = dw({"legacy": {"url": a.url, "timeout_ms": 5000},
            "legacy2": {"url": b.url, "timeout_ms": 5000}}, extra={"workers": workers})
    stop = threading.Event()
    lock = threading.Lock()
    stats = {"ok": 0, "failed": []}

    def client(n):
        c = None
        i = 0
        while not stop.is_set() and i < 5000:
            i += 1
            try:
                if c is None:
                    c = Conn(d.port, timeout=5)
                r = c.request("POST", "/load/%d/%d" % (n, i), body=b"n=%d" % i, timeout=5)
                if r.status != 200 or not r.body.startswith(b"POST /load/"):
                    raise AssertionError("bad answer %r" % r)
                with lock:
                    stats["ok"] += 1
                if r.has_token("Connection", "close"):
                    c.close()
                    c = None
            except Exception as e:  # counted as a failed request
                with lock:
                    stats["failed"].append("%s: %r" % (type(e).__name__, e))
                if c is not None:
                    c.close()
                    c = None
        if c is not None:
            c.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    try:
        for k in range(10):
            d.reload(d.config_text(default_upstream="legacy2" if k % 2 == 0 else "legacy"))
            time.sleep(0.25)
        while time.monotonic() - t0 < 3:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    assert stats["failed"] == [], "%d failed requests under reload: %r" % (
        len(stats["failed"]), stats["failed"][:5])
    assert stats["ok"] >= 40, "only %d requests completed in 3 s" % stats["ok"]
    assert len(a.requests) + len(b.requests) == stats["ok"]
    assert a.requests and b.requests, "traffic did not follow the reloads"


def test_bad_reload_keeps_old_config(daemon, backend):
    good = daemon.config_text()
    failed_before = daemon.metric("dualwrite_config_reloads_total", result="failed")
    ok_before = daemon.metric("dualwrite_config_reloads_total", result="ok")
    lines = good.splitlines()
    lines.insert(2, "this is not = libconfig ;;")
    daemon.reload("\n".join(lines) + "\n", expect="failed")
    assert daemon.metric("dualwrite_config_reloads_total", result="failed") == failed_before + 1
    assert daemon.metric("dualwrite_config_reloads_total", result="ok") == ok_before
    assert daemon.alive()
    r = request(daemon.port, "GET", "/still-serving")
    assert r.status == 200 and r.body == b"GET /still-serving"
    assert daemon.admin("/ready").status == 200
    conf = os.path.basename(daemon.conf_path)
    assert re.search(re.escape(conf) + r":3\b", daemon.log_text()), \
        "the log does not say where the bad reload failed (%s:3):\n%s" % (
            conf, daemon.log_text())
    # and a good config afterwards is taken again
    daemon.reload(good)
    assert request(daemon.port, "GET", "/after-fix").status == 200


def test_reload_with_semantic_error_keeps_old_config(dw, make_backend):
    a = make_backend(name="A")
    d = dw({"legacy": {"url": a.url, "timeout_ms": 5000}})
    d.reload(d.config_text(default_upstream="missing"), expect="failed")
    r = request(d.port, "GET", "/still")
    assert r.status == 200 and r.body == b"GET /still"
    assert "missing" in d.log_text()


def test_reload_moves_listen_port(dw, backend):
    d = dw({"legacy": {"url": backend.url, "timeout_ms": 5000}})
    old = d.port
    assert request(old, "GET", "/old-port").status == 200
    d.port = free_port()
    d.reload(d.config_text())
    r = wait_for(lambda: _try_get(d.port, "/new-port"), 3, "the new listen port to serve")
    assert r.status == 200 and r.body == b"GET /new-port"
    wait_for(lambda: connect_refused(old), 3, "the old listen port to stop accepting")


def _try_get(port, target):
    try:
        return request(port, "GET", target, timeout=2)
    except (OSError, AssertionError, TimeoutError):
        return None


# ---------------------------------------------------------------- stop


def test_sigterm_drains_in_flight_request(dw, backend):
    backend.handler = lambda req: Reply(200, b"slow but served", delay=1.5)
    d = dw({"legacy": {"url": backend.url, "timeout_ms": 5000}})
    result = {}

    def slow():
        try:
            result["r"] = request(d.port, "POST", "/slow", body=b'{"a":1}', timeout=15)
        except Exception as e:  # reported below
            result["e"] = e

    t = threading.Thread(target=slow)
    t.start()
    backend.wait_requests(1)
    t_term = time.monotonic()
    d.signal(signal.SIGTERM)
    wait_for(lambda: connect_refused(d.port, timeout=0.5), 1.0,
             "new connections to be refused after SIGTERM")
    t.join(timeout=15 * SLOW)
    assert not t.is_alive()
    assert "e" not in result, "in-flight request failed during drain: %r" % result.get("e")
    assert result["r"].status == 200
    assert result["r"].body == b"slow but served"
    rc = d.wait_exit(12)
    assert rc is not None, "daemon still running 12 s after SIGTERM"
    assert rc == 0, "exit %r after SIGTERM; log:\n%s" % (rc, d.log_text())
    assert time.monotonic() - t_term < 12 * SLOW


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_exits_0(daemon, backend, sig):
    assert request(daemon.port, "GET", "/one").status == 200
    t0 = time.monotonic()
    rc = daemon.stop(sig, timeout=10)
    assert rc == 0, "exit %r; log:\n%s" % (rc, daemon.log_text())
    assert time.monotonic() - t0 < 5 * SLOW, "an idle daemon took %.1fs to stop" % (
        time.monotonic() - t0)


def test_sigterm_closes_idle_keep_alive_connections(daemon, backend):
    with Conn(daemon.port) as c:
        assert c.request("GET", "/ka").status == 200
        daemon.signal(signal.SIGTERM)
        closed, extra = c.closed_within(10 * SLOW)
        assert closed, "idle keep-alive connection kept the daemon from stopping"
    rc = daemon.wait_exit(10)
    assert rc == 0, "exit %r; log:\n%s" % (rc, daemon.log_text())


def test_listen_accepts_a_list_of_addresses(dw, backend):
    d = dw({"legacy": backend.url}, start=False)
    second = free_port()
    d.write_config(d.config_text(listen=["127.0.0.1:%d" % d.port, "127.0.0.1:%d" % second]))
    d.start()
    assert request(d.port, "GET", "/first-addr").body == b"GET /first-addr"
    assert request(second, "GET", "/second-addr").body == b"GET /second-addr"


def test_metrics_include_queue_depth(daemon):
    text = daemon.metrics()
    names = {n for n, _, _ in parse_metrics(text)}
    assert "dualwrite_queue_depth" in names, text


MIRROR_ROUTE = [{
    "name": "equipment-create",
    "match": "POST /equipment",
    "mirror": {"upstream": "gear", "path": "/gear-items", "key": "$response.id",
               "body": {"id": "$response.id", "name": "$request.name"}},
}]


def mirrored_daemon(dw, make_backend):
    legacy = make_backend(name="legacy")
    gear = make_backend(name="gear")
    legacy.reply(201, b'{"id": 42}', [("Content-Type", "application/json")])
    gear.reply(201, b'{}', [("Content-Type", "application/json")])
    d = dw({"legacy": {"url": legacy.url, "timeout_ms": 5000},
            "gear": {"url": gear.url, "timeout_ms": 2000}}, extra={"routes": MIRROR_ROUTE})
    return d, legacy, gear


def test_mirror_total_series_exist_before_traffic(dw, make_backend):
    # An alert on rate(dualwrite_mirror_total{result="..."}) needs the series
    # to exist (at 0) from the start, not only after the first mirror.
    d, _, _ = mirrored_daemon(dw, make_backend)
    text = d.metrics()
    names = {n for n, _, _ in parse_metrics(text)}
    assert "dualwrite_mirror_total" in names, text


def test_mirror_total_counts_a_mirrored_write(dw, make_backend):
    d, legacy, gear = mirrored_daemon(dw, make_backend)
    r = request(d.port, "POST", "/equipment", [("Content-Type", "application/json")],
                b'{"name": "rope"}')
    assert r.status == 201 and r.body == b'{"id": 42}'
    gear.wait_requests(1)
    wait_for(lambda: d.metric("dualwrite_mirror_total") >= 1, 5,
             "dualwrite_mirror_total to count the mirror")
    series = [lb for n, lb, v in parse_metrics(d.metrics()) if n == "dualwrite_mirror_total"]
    assert all("result" in lb for lb in series), series


def test_drain_is_bounded(dw, backend):
    backend.reply(action="hang")
    d = dw({"legacy": {"url": backend.url, "timeout_ms": 30000}},
           limits={"drain_timeout_ms": 1000})
    c = Conn(d.port, timeout=15)
    try:
        c.send(b"GET /forever HTTP/1.1\r\nHost: a\r\n\r\n")
        backend.wait_requests(1)
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        rc = d.wait_exit(8)
        took = time.monotonic() - t0
        assert rc is not None, "a hung upstream kept the daemon from exiting (drain_timeout_ms=1000)"
        assert rc == 0, "exit %r; log:\n%s" % (rc, d.log_text())
        assert took < 5 * SLOW, "drain took %.1fs with drain_timeout_ms = 1000" % took
        closed, _ = c.closed_within(2)
        assert closed, "client connection left open by an exited daemon"
    finally:
        c.close()


# ---------------------------------------------------------------- keys that need a restart

def test_reload_cannot_switch_off_fsync_or_move_the_queue(dw, make_backend, tmp_path):
    # queue.durability and queue.path need a restart: after a reload that
    # changes them the log says so, and the daemon keeps running with the
    # start-up values — it still fdatasyncs before answering mirrored writes,
    # and /status names the spool it really uses.
    legacy = make_backend(name="legacy")
    gear = make_backend(name="gear")
    legacy.reply(201, b'{"id": 42}', [("Content-Type", "application/json")])
    gear.reply(201, b'{}', [("Content-Type", "application/json")])
    ups = {"legacy": {"url": legacy.url, "timeout_ms": 5000},
           "gear": {"url": gear.url, "timeout_ms": 2000}}
    # a mirror that needs nothing of the legacy's answer: only durability
    # "fsync" makes the proxy hold the answer for an fdatasync
    route = [{"name": "equipment-create", "match": "POST /equipment",
              "mirror": {"upstream": "gear", "path": "/gear-items", "key": "$request.name",
                         "body": {"name": "$request.name"}}}]
    d = dw(ups, start=False)
    boot_queue = {"path": d.queue_dir, "durability": "fsync"}
    d.extra = {"routes": route, "queue": boot_queue}
    d.start()

    def write(n):
        r = request(d.port, "POST", "/equipment", [("Content-Type", "application/json")],
                    b'{"name": "rope %d"}' % n)
        assert r.status == 201 and r.body == b'{"id": 42}', r

    syncs0 = d.metric("dualwrite_queue_syncs_total")
    write(1)
    syncs1 = d.metric("dualwrite_queue_syncs_total")
    assert syncs1 > syncs0, "durability fsync made no fdatasync before the answer"

    elsewhere = str(tmp_path / "elsewhere-queue")
    os.makedirs(elsewhere)
    d.reload(d.config_text(queue={"path": elsewhere, "durability": "process"}))
    log = d.log_text()
    for key in ("queue.durability", "queue.path"):
        assert re.search(r"'%s' changed; it takes effect only after a restart" % re.escape(key),
                         log), "no restart warning for %s:\n%s" % (key, log)

    for n in range(2, 5):
        write(n)
    assert d.metric("dualwrite_queue_syncs_total") >= syncs1 + 3, \
        "a reload to durability \"process\" stopped the fdatasyncs"
    st = d.admin("/status")
    assert st.status == 200, st
    assert st.json()["queue"]["path"] == d.queue_dir, st.json()["queue"]
    assert os.listdir(elsewhere) == [], "the reloaded queue.path was used"
