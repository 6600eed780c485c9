"""test_dns — upstream host names are resolved off the event loops, again and again.

SPEC/issue 15 "DNS on the loop". Names that must not depend on the network:
`localhost` (/etc/hosts through nsswitch) and `nonexistent.invalid` (RFC 6761:
never resolves) go through the real getaddrinfo; names under `.dw.invalid`
are answered by the LD_PRELOAD seam build/tests/libgaishim.so
(tests/shim/gai_shim.c) from a hosts file the test rewrites
(DW_TEST_HOSTS_FILE), optionally slowly (DW_TEST_RESOLVE_DELAY_MS) — so
/etc/hosts is never touched, and an old daemon build runs under the same seam.

1. a slow lookup never holds a worker's loop: pass-through requests on the same
   (single) worker are answered at once while a mirror target's name takes 3 s;
2. a name that failed at start becomes reachable without a restart (and
   /status shows its addresses, or why it does not resolve);
3. a reload looks names up again (and retires idle connections to the old
   address); 4. so does the resolve_interval_s timer;
5. the real resolver: localhost works, nonexistent.invalid fails fast with a
   502 "upstream unreachable" and the log line "cannot resolve HOST: ...";
6. a refused connect looks the name up again (no reload, no timer), and
   7. goes on with the next address of the name for the same request.
"""

import os
import sys
import time

sys.dont_write_bytecode = True

import helpers  # noqa: E402
import mirrorlib as ml  # noqa: E402
from backends import Backend  # noqa: E402


def shim_env(hosts_file, delay_ms=0):
    shim = os.path.join(helpers.build_dir(), "tests", "libgaishim.so")
    assert os.path.exists(shim), "%s is missing (make all?)" % shim
    env = {"LD_PRELOAD": shim, "DW_TEST_HOSTS_FILE": hosts_file,
           # the shim comes before the sanitizer runtime in an ASan build
           "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:verify_asan_link_order=0"}
    if delay_ms:
        env["DW_TEST_RESOLVE_DELAY_MS"] = str(delay_ms)
    return env


def write_hosts(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def wait_log(d, needle, timeout):
    return helpers.wait_for(lambda: needle in d.log_text(), timeout * helpers.SLOW,
                            "%r in the log of %s" % (needle, d.name))


def get(d, target, timeout=10.0):
    return helpers.request(d.port, "GET", target, [("Connection", "close")], timeout=timeout)


ROUTES = """
routes = (
  { name = "things-create"; match = "POST /things";
    mirror = { upstream = "new"; method = "POST"; path = "/things"; }; }
);
"""


def test_slow_lookup_does_not_hold_the_loop(dw, make_backend, tmp_path):
    legacy = make_backend(name="legacy")
    target = make_backend(name="new")
    hosts = str(tmp_path / "hosts")
    write_hosts(hosts, "127.0.0.1 slow.dw.invalid\n")
    d = dw({"legacy": legacy.url}, extra={"workers": 1}, start=False,
           env=shim_env(hosts, delay_ms=3000))
    d.start()
    assert get(d, "/warm").status == 200
    # The reload brings a mirror target whose lookup takes 3 s.
    d.upstreams["new"] = {"url": "http://slow.dw.invalid:%d" % target.port}
    d.reload(d.config_text() + ROUTES)
    t0 = time.monotonic()
    r = helpers.request(d.port, "POST", "/things", [("Connection", "close")], b'{"a":1}')
    assert r.status == 200
    for i in range(5):
        assert get(d, "/pass/%d" % i).status == 200
    took = time.monotonic() - t0
    assert took < 1.0 * helpers.SLOW, (
        "a write and 5 pass-through requests took %.2f s while a name was being "
        "looked up (the worker's loop waited for it?)" % took)
    # The write arrived while the name had no address: queued, not lost.
    helpers.wait_for(lambda: ml.mirror_total(d, result="queued") == 1, 5.0 * helpers.SLOW,
                     "the mirror queued")
    assert "cannot resolve slow.dw.invalid: lookup in progress" in d.log_text()
    # Once the answer is in, mirrors go out.
    wait_log(d, "resolved slow.dw.invalid: 127.0.0.1", 10.0)
    r = helpers.request(d.port, "POST", "/things", [("Connection", "close")], b'{"a":2}')
    assert r.status == 200
    helpers.wait_for(lambda: ml.mirror_total(d, result="delivered") == 1, 5.0 * helpers.SLOW,
                     "the second mirror delivered")
    assert [q.target for q in target.wait_requests(1)] == ["/things"]


def test_name_failing_at_start_recovers_without_restart(dw, make_backend, tmp_path):
    legacy = make_backend(name="legacy")
    hosts = str(tmp_path / "hosts")
    write_hosts(hosts, "# nothing yet\n")
    d = dw({"legacy": "http://legacy.dw.invalid:%d" % legacy.port}, start=False,
           env=shim_env(hosts))
    d.start()
    r = get(d, "/early")
    helpers.assert_json_error(r, 502)
    assert r.json()["error"] == "upstream unreachable"
    assert "legacy.dw.invalid" not in r.body.decode()  # topology stays in the log
    log = d.log_text()
    assert "cannot resolve legacy.dw.invalid: Name or service not known" in log, log
    assert legacy.accepts == 0
    # /status says it too (the operator's view)
    up = d.admin("/status").json()["upstreams"]["legacy"]
    assert up["addresses"] == "" and up["resolve_error"] == "Name or service not known", up
    write_hosts(hosts, "127.0.0.1 legacy.dw.invalid\n")
    wait_log(d, "resolves again legacy.dw.invalid: 127.0.0.1", 15.0)
    r = get(d, "/later")
    assert r.status == 200, r
    up = d.admin("/status").json()["upstreams"]["legacy"]
    assert up["addresses"] == "127.0.0.1" and "resolve_error" not in up, up
    assert legacy.targets() == ["/later"]
    # the resolver's line, once for all its retries
    assert d.log_text().count("cannot resolve legacy.dw.invalid: Name or service not known "
                              "(connections to it fail until it resolves; retrying)") == 1


def two_addresses(tmp_path):
    """Backends on 127.0.0.1:P and 127.0.0.2:P, the same port."""
    one = Backend(name="one")
    try:
        two = Backend(name="two", host="127.0.0.2", port=one.port)
    except OSError:
        one.stop()
        raise
    return one, two


def test_reload_resolves_again(dw, tmp_path):
    one, two = two_addresses(tmp_path)
    try:
        hosts = str(tmp_path / "hosts")
        write_hosts(hosts, "127.0.0.2 svc.dw.invalid\n")
        d = dw({"legacy": "http://svc.dw.invalid:%d" % one.port}, start=False,
               env=shim_env(hosts))
        d.start()
        assert get(d, "/a").status == 200
        assert two.targets() == ["/a"]
        write_hosts(hosts, "127.0.0.1 svc.dw.invalid\n")
        # No failure, the 60 s interval far away: still the old address
        # (kept alive in the pool).
        assert get(d, "/b").status == 200
        assert two.targets() == ["/a", "/b"] and one.targets() == []
        d.reload(d.config_text())
        wait_log(d, "svc.dw.invalid now resolves to 127.0.0.1 (was 127.0.0.2)", 5.0)
        assert get(d, "/c").status == 200
        assert one.targets() == ["/c"], (one.targets(), two.targets())
        assert two.targets() == ["/a", "/b"]
    finally:
        one.stop()
        two.stop()


def test_resolve_interval_refreshes(dw, tmp_path):
    one, two = two_addresses(tmp_path)
    try:
        hosts = str(tmp_path / "hosts")
        write_hosts(hosts, "127.0.0.2 svc.dw.invalid\n")
        d = dw({"legacy": {"url": "http://svc.dw.invalid:%d" % one.port,
                           "resolve_interval_s": 1}}, start=False, env=shim_env(hosts))
        d.start()
        assert get(d, "/a").status == 200
        assert two.targets() == ["/a"]
        write_hosts(hosts, "127.0.0.1 svc.dw.invalid\n")
        wait_log(d, "svc.dw.invalid now resolves to 127.0.0.1 (was 127.0.0.2)", 5.0)
        assert get(d, "/b").status == 200
        assert one.targets() == ["/b"]
        # A failed refresh keeps the last good address.
        write_hosts(hosts, "# gone\n")
        wait_log(d, "cannot resolve svc.dw.invalid: Name or service not known (keeping "
                    "127.0.0.1; retrying)", 5.0)
        assert get(d, "/c").status == 200
        assert one.targets() == ["/b", "/c"]
    finally:
        one.stop()
        two.stop()


def test_real_resolver_localhost_and_invalid(dw, make_backend):
    legacy = make_backend(name="legacy")
    d = dw({"legacy": "http://localhost:%d" % legacy.port,
            "other": "http://nonexistent.invalid:%d" % legacy.port})
    assert get(d, "/x").status == 200
    assert legacy.targets() == ["/x"]
    assert "resolved localhost: 127.0.0.1" in d.log_text()
    d2 = dw({"legacy": "http://nonexistent.invalid:%d" % legacy.port})
    t0 = time.monotonic()
    r = get(d2, "/y")
    assert time.monotonic() - t0 < 1.0 * helpers.SLOW
    helpers.assert_json_error(r, 502)
    assert r.json()["error"] == "upstream unreachable"
    assert "cannot resolve nonexistent.invalid: " in d2.log_text()
    assert legacy.targets() == ["/x"]


def test_connect_failure_resolves_again(dw, make_backend, tmp_path):
    legacy = make_backend(name="legacy")
    hosts = str(tmp_path / "hosts")
    # First the name points where nothing listens (127.0.0.2, the backend's port).
    write_hosts(hosts, "127.0.0.2 moved.dw.invalid\n")
    d = dw({"legacy": "http://moved.dw.invalid:%d" % legacy.port}, start=False,
           env=shim_env(hosts))
    d.start()
    r = get(d, "/refused")
    helpers.assert_json_error(r, 502)
    assert legacy.accepts == 0
    write_hosts(hosts, "127.0.0.1 moved.dw.invalid\n")
    # No reload, the 60 s interval far away: refused connects ask for a new
    # answer (at most one lookup a second), so requests soon get through.
    helpers.wait_for(lambda: get(d, "/probe").status == 200, 5.0 * helpers.SLOW,
                     "a request through after the name moved")
    assert "moved.dw.invalid now resolves to 127.0.0.1 (was 127.0.0.2)" in d.log_text()
    assert legacy.targets() == ["/probe"]


def test_refused_address_falls_through_to_the_next(dw, make_backend, tmp_path):
    """A name with two addresses, the first refusing (as localhost's ::1 when the
    upstream listens on 127.0.0.1 only): the same request goes on with the next."""
    legacy = make_backend(name="legacy")
    hosts = str(tmp_path / "hosts")
    write_hosts(hosts, "127.0.0.2 both.dw.invalid\n127.0.0.1 both.dw.invalid\n")
    d = dw({"legacy": "http://both.dw.invalid:%d" % legacy.port}, start=False,
           env=shim_env(hosts))
    d.start()
    assert "resolved both.dw.invalid: 127.0.0.2, 127.0.0.1" in d.log_text()
    for i in range(3):
        r = get(d, "/n%d" % i)
        assert r.status == 200, r
    assert legacy.targets() == ["/n0", "/n1", "/n2"]
