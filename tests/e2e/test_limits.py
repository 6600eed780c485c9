"""test_limits — the configured limits of SPEC §3/§4, seen from both sides.

Head too large -> 431, body too large -> 413 (by Content-Length, by chunks,
and before a 100 Continue), slow head and slow body -> 408 on a *deadline*
(a client trickling a byte every 200 ms is cut off too), idle keep-alive
connections closed quietly, max_connections enforced while the admitted
connections keep working. Whenever the proxy refuses a request, the legacy
backend received nothing — not even a TCP connection.
"""

import hashlib
import select
import time

import pytest

from backends import Reply, stream_sha256

from helpers import (SLOW, Conn, PeerClosed, assert_forwarded_exactly, assert_json_error,
                     build_request, request)

LIMITS = {
    "max_header_bytes": 4096,
    "max_body_bytes": 65536,
    "header_timeout_ms": 1000,
    "body_timeout_ms": 1000,
    "idle_timeout_ms": 1000,
}


@pytest.fixture
def limited(dw, backend):
    return dw({"legacy": {"url": backend.url, "timeout_ms": 5000}}, limits=LIMITS)


def assert_backend_untouched(proxy, backend):
    # a marker sent afterwards must arrive, alone, on the one connection opened for it
    assert_forwarded_exactly(proxy.port, backend, [], accepts=1)


def send_tolerant(conn, data):
    """Send; False when the proxy already closed (it may refuse early)."""
    try:
        conn.send(data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


# ---------------------------------------------------------------- sizes


def test_head_over_max_header_bytes_gives_431(limited, backend):
    with Conn(limited.port) as c:
        send_tolerant(c, b"GET /big-head HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 6000 +
                      b"\r\n\r\n")
        r = c.read_response()
        assert_json_error(r, 431)
        c.assert_closed()
    assert_backend_untouched(limited, backend)


def test_request_line_counts_towards_max_header_bytes(limited, backend):
    with Conn(limited.port) as c:
        send_tolerant(c, b"GET /" + b"u" * 6000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.read_response()
        assert_json_error(r, 431)
        c.assert_closed()
    assert_backend_untouched(limited, backend)


def test_head_just_under_the_limit_passes(limited, backend):
    r = request(limited.port, "GET", "/fits", [("X-Pad", "p" * 3500)])
    assert r.status == 200
    [got] = backend.wait_requests(1)
    assert got.header("X-Pad") == "p" * 3500


def test_content_length_over_max_body_gives_413(limited, backend):
    with Conn(limited.port) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n")
        send_tolerant(c, b"z" * 1000)
        r = c.read_response()
        assert_json_error(r, 413)
        c.assert_closed()
    assert_backend_untouched(limited, backend)


def test_body_exactly_at_the_limit_passes(limited, backend):
    body = bytes(range(256)) * 256  # 65536 bytes
    r = request(limited.port, "POST", "/upload", body=body)
    assert r.status == 200
    [got] = backend.wait_requests(1)
    assert got.body == body


def test_expect_continue_with_oversized_length_gets_413_not_100(limited, backend):
    with Conn(limited.port) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n"
               b"Expect: 100-continue\r\n\r\n")
        r = c.read_response()
        assert r.status != 100, "100 Continue invited a body that is over the limit"
        assert_json_error(r, 413)
    assert_backend_untouched(limited, backend)


def test_chunked_body_over_limit_gives_413(limited, backend):
    with Conn(limited.port) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (8192, b"c" * 8192)
        for _ in range(10):  # 80 KiB > 64 KiB
            if not send_tolerant(c, chunk):
                break
            r, _, _ = select.select([c.sock], [], [], 0.01)
            if r:
                break  # the proxy answered early
        else:
            send_tolerant(c, b"0\r\n\r\n")
        r = c.read_response()
        assert_json_error(r, 413)
        c.assert_closed()
    assert_backend_untouched(limited, backend)


# ---------------------------------------------------------------- deadlines


def trickle(conn, data, interval, give_up_s):
    """Send data a byte at a time every interval until the proxy answers or
    closes. Returns seconds from the first byte to that moment, or None."""
    t0 = time.monotonic()
    for i in range(len(data)):
        if time.monotonic() - t0 > give_up_s:
            return None
        if not send_tolerant(conn, data[i:i + 1]):
            return time.monotonic() - t0
        r, _, _ = select.select([conn.sock], [], [], interval)
        if r:
            return time.monotonic() - t0
    return None


def test_slowloris_head_is_cut_off_by_deadline(limited, backend):
    head = b"GET /slowloris HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"a" * 60 + b"\r\n\r\n"
    with Conn(limited.port) as c:
        took = trickle(c, head, 0.2, give_up_s=5 * SLOW)
        assert took is not None, "no answer to a 1-byte-per-200ms head within 5 s " \
                                 "(header_timeout_ms = 1000 must be a deadline)"
        assert 0.8 <= took <= 2.5 * SLOW, "cut off after %.2fs, want about 1 s" % took
        r = c.read_response()
        assert_json_error(r, 408)
        c.assert_closed()
    assert_backend_untouched(limited, backend)


def test_slow_body_is_cut_off_by_deadline(limited, backend):
    with Conn(limited.port) as c:
        c.send(b"POST /slow-body HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
        took = trickle(c, b"b" * 100, 0.2, give_up_s=5 * SLOW)
        assert took is not None, "no answer to a 1-byte-per-200ms body within 5 s " \
                                 "(body_timeout_ms = 1000 must be a deadline)"
        assert 0.8 <= took <= 2.5 * SLOW, "cut off after %.2fs, want about 1 s" % took
        r = c.read_response()
        assert_json_error(r, 408)
        c.assert_closed()
    assert_backend_untouched(limited, backend)


def test_idle_keep_alive_connection_closed_quietly(limited, backend):
    with Conn(limited.port) as c:
        assert c.request("GET", "/before-idle").status == 200
        t0 = time.monotonic()
        closed, extra = c.closed_within(4 * SLOW)
        took = time.monotonic() - t0
        assert closed, "idle connection still open after 4 s (idle_timeout_ms = 1000)"
        assert 0.8 <= took <= 3 * SLOW, "idle close after %.2fs, want about 1 s" % took
        assert extra == b"", "an idle close must not send anything: %r" % extra


def test_busy_keep_alive_connection_outlives_the_timeouts(limited, backend):
    # Requests every 300 ms for 2.4 s on one connection: the head, body and
    # idle timers (1 s each) restart per request; none is a connection lifetime.
    with Conn(limited.port) as c:
        for i in range(8):
            r = c.request("POST", "/busy/%d" % i, body=b"n=%d" % i)
            assert r.status == 200 and r.body == b"POST /busy/%d" % i
            time.sleep(0.3)
    assert len(backend.requests) == 8


def test_a_new_connection_with_no_bytes_does_not_reach_upstream(limited, backend):
    with Conn(limited.port) as c:
        closed, extra = c.closed_within(4 * SLOW)
        assert closed, "a silent connection was never closed"
        if extra:  # a 408 is allowed here, a closed socket without one too
            assert extra.startswith(b"HTTP/1.1 408 "), extra
    assert_backend_untouched(limited, backend)


# ---------------------------------------------------------------- connections


def sixth_connection_outcome(port):
    """'refused', 'closed' or 'served 503'; fails on anything else."""
    try:
        c = Conn(port, timeout=3 * SLOW)
    except ConnectionRefusedError:
        return "refused"
    with c:
        if not send_tolerant(c, build_request("GET", "/sixth")):
            return "closed"
        try:
            r = c.read_response(timeout=3 * SLOW)
        except PeerClosed:
            return "closed"
        except TimeoutError:
            pytest.fail("connection over max_connections neither refused, closed nor "
                        "answered within 3 s")
        assert_json_error(r, 503)
        return "served 503"


def test_max_connections(dw, backend):
    d = dw({"legacy": {"url": backend.url, "timeout_ms": 5000}},
           limits={"max_connections": 5})
    conns = [Conn(d.port) for _ in range(5)]
    try:
        for i, c in enumerate(conns):
            r = c.request("GET", "/c%d" % i)
            assert r.status == 200 and r.body == b"GET /c%d" % i
        outcome = sixth_connection_outcome(d.port)
        assert outcome in ("refused", "closed", "served 503")
        assert "/sixth" not in backend.targets(), "the 6th connection's request was proxied"
        for i, c in enumerate(conns):
            r = c.request("GET", "/again%d" % i)
            assert r.status == 200 and r.body == b"GET /again%d" % i, \
                "admitted connection %d broke after the 6th was refused" % i
        # Freeing a slot admits a new connection (bounded retry: the close
        # is noticed asynchronously).
        conns.pop().close()
        deadline = time.monotonic() + 3 * SLOW
        while True:
            try:
                r = request(d.port, "GET", "/freed", timeout=2)
                if r.status == 200:
                    break
            except (OSError, AssertionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "no slot freed 3 s after closing a connection"
            time.sleep(0.1)
        assert r.body == b"GET /freed"
    finally:
        for c in conns:
            c.close()


def test_head_deadline_applies_to_each_request_on_a_connection(limited, backend):
    head = b"GET /second-slow HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"a" * 60 + b"\r\n\r\n"
    with Conn(limited.port) as c:
        assert c.request("GET", "/first-fast").status == 200
        took = trickle(c, head, 0.2, give_up_s=5 * SLOW)
        assert took is not None, "second request's trickled head was never cut off"
        assert took <= 2.5 * SLOW, "cut off after %.2fs, want about 1 s" % took
        r = c.read_response()
        assert_json_error(r, 408)
        c.assert_closed()
    assert backend.targets() == ["/first-fast"]


def test_slow_upstream_is_not_cut_by_client_timeouts(limited, backend):
    # All client-side timers are 1 s; the legacy takes 1.5 s. Waiting for the
    # upstream is governed by its timeout_ms (5 s), not by them.
    backend.handler = lambda req: Reply(200, b"slow legacy", delay=1.5)
    with Conn(limited.port) as c:
        r = c.request("POST", "/slow-legacy", body=b"x" * 100)
        assert r.status == 200 and r.body == b"slow legacy"
        r = c.request("GET", "/slow-legacy-2")
        assert r.status == 200 and r.body == b"slow legacy"


def test_slow_reader_is_not_cut_by_idle_timeout(limited, backend):
    # idle_timeout_ms is for keep-alive between requests; a client that pauses
    # for 2 s while a 4 MiB response is being delivered still gets all of it.
    size = 4 << 20
    backend.reply(200, stream=size)
    with Conn(limited.port, rcvbuf=32768) as c:
        c.send(build_request("GET", "/stream"))
        resp = c.read_head()
        assert resp.status == 200
        time.sleep(2.0)
        body = c.read_exact(size, time.monotonic() + 30 * SLOW, "body after the pause")
    assert hashlib.sha256(body).hexdigest() == stream_sha256(size)
