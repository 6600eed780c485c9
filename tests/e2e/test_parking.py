"""test_parking — idle keep-alive connections park and come back.

A keep-alive connection idle for a second (PARK_AFTER_MS in daemon/proxy.c)
gives up its bufferevent and waits on a bare read event. Seen from outside
nothing changes: a parked connection's next request (or pipelined requests)
is served, bytes that arrive right while it parks are not lost, the idle
timeout still closes it quietly, a client closing it frees it, and SIGTERM
still closes it at once.
"""

import signal
import time

import pytest

from helpers import SLOW, Conn, build_request, wait_for

PARK_S = 1.0  # PARK_AFTER_MS
LIMITS = {"idle_timeout_ms": 3000, "header_timeout_ms": 2000}


@pytest.fixture
def parking(dw, backend):
    return dw({"legacy": {"url": backend.url, "timeout_ms": 5000}}, limits=LIMITS)


def test_parked_connection_serves_its_next_requests(parking, backend):
    with Conn(parking.port) as c:
        assert c.request("POST", "/before", body=b"a=1").body == b"POST /before"
        for i in range(2):  # parks, comes back, parks again
            time.sleep(PARK_S + 0.5)
            r = c.request("POST", "/after/%d" % i, body=b"x" * 300)
            assert r.status == 200 and r.body == b"POST /after/%d" % i
        time.sleep(PARK_S + 0.5)
        # Pipelined requests waking a parked connection: answered in order.
        c.send(build_request("GET", "/p1") + build_request("GET", "/p2") +
               build_request("POST", "/p3", body=b"z" * 10))
        assert c.read_response().body == b"GET /p1"
        assert c.read_response().body == b"GET /p2"
        assert c.read_response("POST").body == b"POST /p3"
    assert backend.targets() == ["/before", "/after/0", "/after/1", "/p1", "/p2", "/p3"]


def test_bytes_arriving_as_the_connection_parks_are_not_lost(parking, backend):
    # Connections whose next request arrives between 0.85 s and 1.25 s of
    # idleness: some before, some while, some after parking. Half of them
    # send the head in two pieces straddling the moment.
    n = 16
    conns = [Conn(parking.port) for _ in range(n)]
    try:
        ready = []
        for i, c in enumerate(conns):
            assert c.request("GET", "/first/%d" % i).status == 200
            ready.append(time.monotonic())
        plan = []  # (when, conn index, bytes)
        for i in range(n):
            at = ready[i] + 0.85 + 0.4 * i / (n - 1)
            req = build_request("POST", "/second/%d" % i, body=b"b" * 100)
            if i % 2:
                plan += [(at - 0.05, i, req[:20]), (at + 0.05, i, req[20:])]
            else:
                plan.append((at, i, req))
        for at, i, data in sorted(plan, key=lambda p: p[0]):
            delay = at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            conns[i].send(data)
        for i, c in enumerate(conns):
            r = c.read_response("POST")
            assert r.status == 200 and r.body == b"POST /second/%d" % i, (i, r)
    finally:
        for c in conns:
            c.close()


def test_parked_connection_is_closed_quietly_by_the_idle_timeout(parking, backend):
    with Conn(parking.port) as c:
        assert c.request("GET", "/before-idle").status == 200
        t0 = time.monotonic()
        closed, extra = c.closed_within(8 * SLOW)
        took = time.monotonic() - t0
        assert closed, "parked connection still open after 8 s (idle_timeout_ms = 3000)"
        assert 2.7 <= took <= 5 * SLOW, "idle close after %.2fs, want about 3 s" % took
        assert extra == b"", "an idle close must not send anything: %r" % extra


def test_a_client_closing_a_parked_connection_frees_it(parking, backend):
    def active():
        return parking.metric("dualwrite_connections_active")

    base = active()
    c = Conn(parking.port)
    assert c.request("GET", "/x").status == 200
    wait_for(lambda: active() == base + 1, 2, "the connection to be counted")
    time.sleep(PARK_S + 0.5)
    c.close()
    wait_for(lambda: active() == base, 2, "the parked connection to be released")


def test_sigterm_closes_parked_connections(parking, backend):
    with Conn(parking.port) as c:
        assert c.request("GET", "/ka").status == 200
        time.sleep(PARK_S + 0.5)
        parking.signal(signal.SIGTERM)
        closed, extra = c.closed_within(5 * SLOW)
        assert closed, "a parked connection kept the daemon from stopping"
        assert extra == b""
    rc = parking.wait_exit(10)
    assert rc == 0, "exit %r; log:\n%s" % (rc, parking.log_text())
