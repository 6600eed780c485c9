"""test_smuggling — ambiguous requests never reach an upstream (SPEC §4, RFC 9112).

Each row of CASES is a request a lenient parser might read one way and a
backend another. For every one the proxy must answer itself — the listed
status with a JSON error body — close the connection, and leave the legacy
backend untouched: no request recorded and no TCP connection accepted (not
even a forwarded prefix). Then the classic CL.TE / TE.CL desync shapes in a
pipeline: the valid first request is answered, the invalid second gets 400,
the legacy sees only the first.
"""

import time

import pytest

from helpers import (SLOW, Conn, PeerClosed, assert_forwarded_exactly, assert_json_error,
                     build_request)

H = b"Host: a\r\n"
INNER = b"GET /third HTTP/1.1\r\nHost: a\r\n\r\n"

CASES = [
    ("cl-and-te",
     b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", 400),
    ("te-and-cl",
     b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
     b"0\r\n\r\n", 400),
    ("two-differing-cl",
     b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("cl-list-differing",
     b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3, 4\r\n\r\nabcd", 400),
    ("cl-plus-sign",
     b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc", 400),
    ("cl-negative",
     b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    ("cl-hex",
     b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x3\r\n\r\nabc", 400),
    ("cl-space-before-colon",
     b"POST / HTTP/1.1\r\n" + H + b"Content-Length : 3\r\n\r\nabc", 400),
    ("te-chunked-not-final",
     b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    ("te-chunked-twice",
     b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
     b"\r\n\r\n0\r\n\r\n", 400),
    ("te-gzip-only",
     b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", 501),
    ("te-unknown-coding",
     b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n", 501),
    ("chunk-size-not-hex",
     b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
     400),
    # a 64-bit overflow is over max_body_bytes long before it wraps
    ("chunk-size-overflow",
     b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
     b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n", 413),
    ("chunk-size-too-many-digits",
     b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
     b"00000000000000000005\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-data-without-crlf",
     b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
     b"5\r\nhelloXX\r\n0\r\n\r\n", 400),
    ("bare-cr-in-header",
     b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n", 400),
    ("bare-lf-line-endings",
     b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("obs-fold",
     b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n  folded\r\n\r\n", 400),
    ("whitespace-before-first-header",
     b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
    ("nul-in-header-value",
     b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    ("control-byte-in-header-value",
     b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x01b\r\n\r\n", 400),
    ("space-in-header-name",
     b"GET / HTTP/1.1\r\n" + H + b"X A: b\r\n\r\n", 400),
    ("header-without-colon",
     b"GET / HTTP/1.1\r\n" + H + b"NoColonHere\r\n\r\n", 400),
    ("missing-host-http11",
     b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    ("duplicate-host",
     b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
    ("duplicate-host-differing",
     b"GET / HTTP/1.1\r\nHost: a\r\nHost: evil\r\n\r\n", 400),
    ("double-space-request-line",
     b"GET  / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("trailing-garbage-request-line",
     b"GET / HTTP/1.1 extra\r\n" + H + b"\r\n", 400),
    ("bad-method-token",
     b"GE(T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("http-2.0",
     b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    # RFC 9112 §6.1: a coding we do not decode, even with chunked last
    ("te-gzip-then-chunked",
     b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("te-gzip-then-chunked-two-lines",
     b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked"
     b"\r\n\r\n0\r\n\r\n", 501),
    # the underscore lookalike a front-end folding '_' to '-' would honour
    ("te-underscore-lookalike",
     b"POST / HTTP/1.1\r\n" + H + b"Transfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
     b"0\r\n\r\n", 400),
    ("cl-underscore-lookalike",
     b"POST / HTTP/1.1\r\n" + H + b"Content_Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", 400),
    # 2^32+5: refused on the size line, not after the body deadline
    ("chunk-size-over-max-body",
     b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n100000005\r\nhello", 413),
    ("connect",
     b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
]


@pytest.fixture
def proxy(dw, backend):
    return dw({"legacy": {"url": backend.url, "timeout_ms": 5000}})


def assert_backend_untouched(proxy, backend):
    # only the marker reached the legacy, on the one connection opened for it
    assert_forwarded_exactly(proxy.port, backend, [], accepts=1)


@pytest.mark.parametrize("name,wire,status", CASES, ids=[c[0] for c in CASES])
def test_ambiguous_request_rejected(proxy, backend, name, wire, status):
    t0 = time.monotonic()
    with Conn(proxy.port) as c:
        c.send(wire)
        r = c.read_response(timeout=5 * SLOW)
        doc = assert_json_error(r, status)
        c.assert_closed()
    # at once: well inside the 5 s body/header deadlines, not because of them
    assert time.monotonic() - t0 < 2.0 * SLOW, "refused only after %.1fs" % (
        time.monotonic() - t0)
    assert "timeout" not in doc["error"].lower(), doc
    assert_backend_untouched(proxy, backend)


def test_cl_te_desync_in_pipeline(proxy, backend):
    first = build_request("GET", "/first")
    smuggled = (b"POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                b"GET /third HTTP/1.1\r\nHost: a\r\n\r\n")
    with Conn(proxy.port) as c:
        c.send(first + smuggled)
        r1 = c.read_response()
        assert r1.status == 200 and r1.body == b"GET /first"
        r2 = c.read_response()
        assert_json_error(r2, 400)
        c.assert_closed()
    assert_forwarded_exactly(proxy.port, backend, ["/first"])


def test_te_cl_desync_in_pipeline(proxy, backend):
    first = build_request("GET", "/first")
    smuggled = (b"POST /second HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Length: 3\r\n\r\n" +
                b"%x\r\n%s\r\n0\r\n\r\n" % (len(INNER), INNER))
    with Conn(proxy.port) as c:
        c.send(first + smuggled)
        r1 = c.read_response()
        assert r1.status == 200 and r1.body == b"GET /first"
        r2 = c.read_response()
        assert_json_error(r2, 400)
        c.assert_closed()
    assert_forwarded_exactly(proxy.port, backend, ["/first"])


def test_bad_chunk_after_valid_request_in_pipeline(proxy, backend):
    first = build_request("POST", "/ok", body=b"fine")
    bad = (b"POST /bad HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\nzz\r\n")
    with Conn(proxy.port) as c:
        c.send(first + bad)
        r1 = c.read_response()
        assert r1.status == 200 and r1.body == b"POST /ok"
        r2 = c.read_response()
        assert_json_error(r2, 400)
        c.assert_closed()
    assert_forwarded_exactly(proxy.port, backend, ["/ok"])


def test_request_inside_a_body_stays_a_body(proxy, backend):
    inner = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    with Conn(proxy.port) as c:
        c.send(build_request("POST", "/outer", body=inner) + build_request("GET", "/next"))
        r1 = c.read_response()
        r2 = c.read_response()
    assert (r1.status, r1.body) == (200, b"POST /outer")
    assert (r2.status, r2.body) == (200, b"GET /next")
    got = assert_forwarded_exactly(proxy.port, backend, ["/outer", "/next"])
    assert [(g.target, g.body) for g in got[:2]] == [("/outer", inner), ("/next", b"")]


def test_chunked_body_hiding_a_request_stays_a_body(proxy, backend):
    inner = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    wire = (b"POST /outer HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" +
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner))
    with Conn(proxy.port) as c:
        c.send(wire)
        r = c.read_response()
    assert (r.status, r.body) == (200, b"POST /outer")
    got = assert_forwarded_exactly(proxy.port, backend, ["/outer"])
    assert got[0].body == inner


def test_nothing_answered_after_a_rejected_request(proxy, backend):
    # A rejected request poisons the connection: what follows in the same
    # write is never parsed as a request.
    with Conn(proxy.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + build_request("GET", "/after"))
        r = c.read_response()
        assert_json_error(r, 400)
        try:
            extra = c.read_response(timeout=1)
        except (PeerClosed, TimeoutError):
            extra = None
        assert extra is None, "answered a request after a 400: %r" % extra
    assert_backend_untouched(proxy, backend)
