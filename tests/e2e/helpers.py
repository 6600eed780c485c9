"""helpers — the client side and the daemon driver of the end-to-end suite.

What lives here: free ports and a "closed port", a raw-socket HTTP/1.1
client with a small *strict* response reader (status line, CRLF-terminated
headers, body by Content-Length, chunked or until close), a Prometheus text
parser, and `Daemon`, which writes a libconfig file, runs build/dualwrited in
the foreground with its stderr in a log file, waits for GET /ready on the
admin port, and on stop checks the exit status and scans the log for
sanitizer, assertion and loss reports.

Every socket operation and every wait is bounded: a hung daemon makes a test
fail with a message, never hang the suite; `bounded(seconds)` gives a test
module an alarm on each of its tests. Only 127.0.0.1 is used.
"""

import contextlib
import itertools
import json
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time

import pytest

IO_TIMEOUT = 10.0
REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VALGRIND = os.environ.get("DW_VALGRIND") == "1"
# Upper time bounds are stretched under valgrind; lower bounds never are.
SLOW = 4.0 if VALGRIND else 1.0


def build_dir():
    b = os.environ.get("DW_BUILD", "build")
    return b if os.path.isabs(b) else os.path.join(REPO_ROOT, b)


def daemon_binary():
    return os.path.join(build_dir(), "dualwrited")


_sanitized = {}


def sanitized_binary():
    """Whether the daemon binary was built with AddressSanitizer."""
    b = daemon_binary()
    if b not in _sanitized:
        try:
            with open(b, "rb") as f:
                _sanitized[b] = b"__asan_init" in f.read()
        except OSError:
            _sanitized[b] = False
    return _sanitized[b]


# ---------------------------------------------------------------- ports

_ports_lock = threading.Lock()
_ports_given = set()


def free_port():
    """A port nothing listens on right now, never handed out twice by us."""
    for _ in range(50):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        with _ports_lock:
            if port not in _ports_given:
                _ports_given.add(port)
                return port
    raise RuntimeError("no free port found")


class ClosedPort:
    """A port with nothing listening. The socket stays bound (never listening)
    so nobody else can take the port; connecting to it is refused."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port

    def close(self):
        self.sock.close()


def connect_refused(port, timeout=1.0):
    """True when a TCP connect to port is refused (nothing accepting)."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    s.close()
    return False


# ---------------------------------------------------------------- responses


class ProtocolError(AssertionError):
    """The peer sent something that is not valid HTTP/1.1."""


class PeerClosed(AssertionError):
    """The connection ended (EOF or reset) before a whole message arrived."""

    def __init__(self, msg, partial=b""):
        super().__init__(msg)
        self.partial = partial


class Response:
    def __init__(self, version, status, reason, headers, raw_head):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value) in wire order
        self.raw_head = raw_head
        self.body = b""
        self.framing = None  # "length" | "chunked" | "close" | "none"

    def header(self, name):
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def header_all(self, name):
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def has_token(self, name, token):
        for v in self.header_all(name):
            for t in v.split(","):
                if t.strip().lower() == token.lower():
                    return True
        return False

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "<Response %s %d %r headers=%r body=%r>" % (
            self.version, self.status, self.reason, self.headers, self.body[:200])


_STATUS_RE = re.compile(rb"^HTTP/(1\.[01]) ([0-9]{3}) ([\x20-\x7e\t]*)$")
_TOKEN_RE = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def parse_head_lines(head):
    """head: bytes of a response head without the final CRLFCRLF."""
    lines = head.split(b"\r\n")
    for ln in lines:
        if b"\n" in ln or b"\r" in ln:
            raise ProtocolError("bare CR or LF in response head: %r" % head)
    m = _STATUS_RE.match(lines[0])
    if not m:
        raise ProtocolError("bad status line %r" % lines[0])
    headers = []
    for ln in lines[1:]:
        if ln[:1] in (b" ", b"\t"):
            raise ProtocolError("obs-fold in response: %r" % ln)
        name, sep, value = ln.partition(b":")
        if not sep or not _TOKEN_RE.match(name):
            raise ProtocolError("bad header line %r" % ln)
        headers.append((name.decode("ascii"), value.strip(b" \t").decode("latin-1")))
    return Response("HTTP/" + m.group(1).decode(), int(m.group(2)),
                    m.group(3).decode("latin-1"), headers, head)


class Conn:
    """One client connection with exact bytes out and a strict reader in."""

    def __init__(self, port, timeout=IO_TIMEOUT, rcvbuf=None):
        self.port = port
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            # Before connect, so the window is small from the start.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = bytearray()
        self.eof = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline, what):
        if self.eof:
            raise PeerClosed("connection closed while reading %s; have %r" %
                             (what, bytes(self.buf[:300])), bytes(self.buf))
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out reading %s; have %r" % (what, bytes(self.buf[:300])))
        self.sock.settimeout(left)
        try:
            d = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("timed out reading %s; have %r" % (what, bytes(self.buf[:300])))
        except ConnectionResetError:
            self.eof = True
            raise PeerClosed("connection reset while reading %s; have %r" %
                             (what, bytes(self.buf[:300])), bytes(self.buf))
        if not d:
            self.eof = True
            raise PeerClosed("connection closed while reading %s; have %r" %
                             (what, bytes(self.buf[:300])), bytes(self.buf))
        self.buf += d

    def _take(self, n):
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_line(self, deadline, what, limit=65536):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                return self._take(i + 2)[:-2]
            if len(self.buf) > limit:
                raise ProtocolError("line too long in %s" % what)
            self._fill(deadline, what)

    def read_exact(self, n, deadline, what):
        while len(self.buf) < n:
            self._fill(deadline, what)
        return self._take(n)

    def read_head(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                head = self._take(i + 4)[:-4]
                return parse_head_lines(head)
            if len(self.buf) > 1 << 20:
                raise ProtocolError("response head over 1 MiB")
            self._fill(deadline, "response head")

    def read_body(self, resp, method="GET", timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        te = resp.header_all("Transfer-Encoding")
        cl = resp.header_all("Content-Length")
        if method == "HEAD" or resp.status < 200 or resp.status in (204, 304):
            resp.framing = "none"
            if resp.status in (204, 304) or resp.status < 200:
                if te or (resp.status == 204 and cl and cl != ["0"]):
                    raise ProtocolError("%d with body framing: %r" % (resp.status, resp.headers))
            return resp
        if te and cl:
            raise ProtocolError("response has both Transfer-Encoding and Content-Length")
        if te:
            codings = [c.strip().lower() for v in te for c in v.split(",")]
            if codings[-1] != "chunked":
                raise ProtocolError("unexpected transfer coding %r" % te)
            resp.framing = "chunked"
            out = bytearray()
            while True:
                line = self.read_line(deadline, "chunk size")
                size_s = line.split(b";", 1)[0].strip(b" \t")
                if not re.match(rb"^[0-9A-Fa-f]{1,16}$", size_s):
                    raise ProtocolError("bad chunk size line %r" % line)
                size = int(size_s, 16)
                if size == 0:
                    while self.read_line(deadline, "trailer") != b"":
                        pass
                    break
                out += self.read_exact(size, deadline, "chunk data")
                if self.read_exact(2, deadline, "chunk CRLF") != b"\r\n":
                    raise ProtocolError("missing CRLF after chunk data")
            resp.body = bytes(out)
            return resp
        if cl:
            if len(set(cl)) != 1 or not re.match(r"^[0-9]+$", cl[0]):
                raise ProtocolError("bad Content-Length %r" % cl)
            resp.framing = "length"
            resp.body = self.read_exact(int(cl[0]), deadline, "body")
            return resp
        resp.framing = "close"
        while not self.eof:
            try:
                self._fill(deadline, "close-delimited body")
            except PeerClosed:
                break
        resp.body = self._take(len(self.buf))
        return resp

    def read_response(self, method="GET", timeout=None):
        resp = self.read_head(timeout)
        return self.read_body(resp, method, timeout)

    def request(self, method, target, headers=None, body=b"", version="HTTP/1.1", timeout=None):
        self.send(build_request(method, target, headers, body, version))
        return self.read_response(method, timeout)

    def closed_within(self, timeout):
        """Wait up to timeout for the peer to close. Returns (closed, extra_bytes)."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            try:
                self._fill(deadline, "close")
            except PeerClosed:
                break
            except TimeoutError:
                return False, bytes(self.buf)
        return True, bytes(self.buf)

    def assert_closed(self, timeout=3.0):
        closed, extra = self.closed_within(timeout * SLOW)
        assert closed, "connection still open %.1fs after the response" % timeout
        assert extra == b"", "bytes after the response before close: %r" % extra[:300]


def build_request(method, target, headers=None, body=b"", version="HTTP/1.1"):
    """Headers is a list of (name, value); Host and Content-Length are added
    unless present (pass ("Host", None) to leave Host out)."""
    headers = list(headers or [])
    names = [n.lower() for n, _ in headers]
    if "host" not in names and version == "HTTP/1.1":
        headers.insert(0, ("Host", "127.0.0.1"))
    if body and "content-length" not in names and "transfer-encoding" not in names:
        headers.append(("Content-Length", str(len(body))))
    out = "%s %s %s\r\n" % (method, target, version)
    for n, v in headers:
        if v is None:
            continue
        out += "%s: %s\r\n" % (n, v)
    out += "\r\n"
    return out.encode("latin-1") + body


def request(port, method, target, headers=None, body=b"", version="HTTP/1.1", timeout=None):
    """One request on a fresh connection."""
    with Conn(port) as c:
        return c.request(method, target, headers, body, version, timeout)


def chunked(*parts):
    """Encode parts as a chunked body (with the last-chunk)."""
    out = b""
    for p in parts:
        out += b"%x\r\n%s\r\n" % (len(p), p)
    return out + b"0\r\n\r\n"


def assert_json_error(resp, status):
    assert resp.status == status, "expected %d, got %r" % (status, resp)
    ct = resp.header("Content-Type") or ""
    assert ct.split(";")[0].strip().lower() == "application/json", \
        "error Content-Type is %r: %r" % (ct, resp)
    try:
        doc = resp.json()
    except ValueError:
        raise AssertionError("error body is not JSON: %r" % resp.body)
    assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"], \
        "error body lacks a non-empty \"error\" string: %r" % doc
    return doc


_MARKERS = itertools.count(1)


def assert_forwarded_exactly(port, backend, targets, accepts=None):
    """Nothing but `targets` reached the backend, checked after an event, not
    a sleep: a marker request sent on a fresh connection after the test's own
    traffic must arrive, and by then the backend must have recorded exactly
    `targets` followed by the marker. Anything the proxy had wrongly
    forwarded before answering the client would already be there. With
    `accepts`, the backend must also have accepted exactly that many
    connections, the marker's included."""
    marker = "/__marker-%d" % next(_MARKERS)
    resp = request(port, "GET", marker)
    assert resp.status == 200, "marker request failed: %r" % resp
    got = backend.wait_requests(len(targets) + 1)
    seen = [r.target for r in got]
    assert seen == list(targets) + [marker], "backend saw %r, expected %r then the marker" % (
        seen, list(targets))
    if accepts is not None:
        assert backend.accepts == accepts, "the proxy opened %d upstream connection(s), " \
            "expected %d" % (backend.accepts, accepts)
    return got


class BoundExceeded(Exception):
    pass


@contextlib.contextmanager
def alarm(seconds):
    """SIGALRM after `seconds`: the code under it raises BoundExceeded instead of hanging."""
    def ring(signum, frame):
        raise BoundExceeded("test exceeded its %d s bound" % seconds)
    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def bounded(seconds):
    """An autouse fixture for a test module (`_bounded = helpers.bounded(120)`): each test of
    the module is bounded by an alarm of `seconds`."""
    @pytest.fixture(autouse=True, name="_bounded")
    def _bounded():
        with alarm(seconds):
            yield
    return _bounded


def wait_for(pred, timeout, what, interval=0.02):
    """Poll pred() until true; bounded. Returns its value."""
    deadline = time.monotonic() + timeout * SLOW
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout * SLOW, what))
        time.sleep(interval)


# ---------------------------------------------------------------- metrics

_METRIC_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$")
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def parse_metrics(text):
    """Prometheus text format -> list of (name, {labels}, value)."""
    out = []
    for ln in text.splitlines():
        if not ln.strip() or ln.startswith("#"):
            continue
        m = _METRIC_RE.match(ln)
        if not m:
            raise ProtocolError("bad metrics line %r" % ln)
        labels = {}
        if m.group(2):
            pos = 0
            s = m.group(2)
            while pos < len(s):
                lm = _LABEL_RE.match(s, pos)
                if not lm:
                    raise ProtocolError("bad labels in %r" % ln)
                labels[lm.group(1)] = lm.group(2)
                pos = lm.end()
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def metric_sum(text, name, **labels):
    """Sum of every series of name whose labels include labels (0 if none)."""
    total = 0.0
    for n, lb, v in parse_metrics(text):
        if n == name and all(lb.get(k) == str(x) for k, x in labels.items()):
            total += v
    return total


# ---------------------------------------------------------------- config

def _lc_value(v, indent):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, dict):
        return _lc_group(v, indent)
    if isinstance(v, (list, tuple)):
        return "( " + ", ".join(_lc_value(x, indent + 1) for x in v) + " )"
    raise TypeError(v)


def _lc_group(d, indent):
    pad = "  " * (indent + 1)
    inner = "".join("%s%s = %s;\n" % (pad, k, _lc_value(x, indent + 1)) for k, x in d.items())
    return "{\n" + inner + "  " * indent + "}"


def libconfig_text(settings):
    """A dict of top-level settings -> libconfig text (insertion order kept)."""
    return "".join("%s = %s;\n" % (k, _lc_value(v, 0)) for k, v in settings.items())


# ---------------------------------------------------------------- daemon

# Things that must never appear in the daemon's log.
_FORBIDDEN = [
    re.compile(r"AddressSanitizer"),
    re.compile(r"LeakSanitizer"),
    re.compile(r"runtime error:"),
    re.compile(r"Assertion"),
    re.compile(r"\blost\b", re.I),
]
# "0 lost" style bookkeeping lines are not losses.
_NOT_A_LOSS = re.compile(r"\b0\s+lost\b|\blost[=:]\s*0\b|lost_total\S*\s+0\b", re.I)
_VALGRIND_LINE = re.compile(r"^==\d+==")


class Daemon:
    """One dualwrited process with its own config file, ports and log."""

    def __init__(self, tmp_path, upstreams, default_upstream="legacy", limits=None,
                 extra=None, name="dw", env=None):
        self.dir = str(tmp_path)
        self.env = dict(env or {})
        self.name = name
        self.port = free_port()
        self.admin_port = free_port()
        self.upstreams = dict(upstreams)
        self.default_upstream = default_upstream
        self.limits = dict(limits or {})
        self.extra = dict(extra or {})
        self.conf_path = os.path.join(self.dir, name + ".conf")
        self.log_path = os.path.join(self.dir, name + ".log")
        self.queue_dir = os.path.join(self.dir, name + "-queue")
        os.makedirs(self.queue_dir, exist_ok=True)
        self.proc = None
        self.rc = None
        self.logf = None
        self.stopped_by_test = False
        self.finished = False

    # -- configuration

    def settings(self, **over):
        s = {"listen": "127.0.0.1:%d" % self.port,
             "admin": {"listen": "127.0.0.1:%d" % self.admin_port}}
        if self.limits:
            s["limits"] = dict(self.limits)
        ups = {}
        for n, u in self.upstreams.items():
            if isinstance(u, str):
                u = {"url": u}
            ups[n] = dict(u)
        s["upstreams"] = ups
        s["default_upstream"] = self.default_upstream
        s["queue"] = {"path": self.queue_dir}
        s.update(self.extra)
        s.update(over)
        return s

    def config_text(self, **over):
        return libconfig_text(self.settings(**over))

    def write_config(self, text=None):
        if text is None:
            text = self.config_text()
        tmp = self.conf_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, self.conf_path)

    # -- process

    def start(self, wait=True):
        if not os.path.exists(self.conf_path):
            self.write_config()
        binary = daemon_binary()
        assert os.access(binary, os.X_OK), "daemon binary %s is missing (make all?)" % binary
        argv = [binary, "-c", self.conf_path]
        if VALGRIND:
            argv = ["valgrind", "--error-exitcode=99", "--leak-check=full",
                    "--errors-for-leak-kinds=definite", "--log-fd=2"] + argv
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        env.update(self.env)
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=self.logf, cwd=REPO_ROOT, close_fds=True, env=env)
        if wait:
            self.wait_ready()
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout=None):
        if timeout is None:
            timeout = 60.0 if VALGRIND else 10.0
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("daemon exited with %s before ready; log:\n%s" %
                                     (self.proc.returncode, self.log_text()))
            try:
                r = self.admin("/ready", timeout=1.0)
                if r.status == 200:
                    return
                last = r.status
            except (OSError, AssertionError, TimeoutError) as e:
                last = e
            time.sleep(0.05)
        raise AssertionError("daemon not ready after %.0fs (last: %r); log:\n%s" %
                             (timeout, last, self.log_text()))

    def admin(self, path, timeout=5.0):
        with Conn(self.admin_port, timeout=timeout) as c:
            return c.request("GET", path, [("Connection", "close")], timeout=timeout)

    def metrics(self):
        r = self.admin("/metrics")
        assert r.status == 200, "GET /metrics: %r" % r
        return r.body.decode("utf-8")

    def metric(self, name, **labels):
        return metric_sum(self.metrics(), name, **labels)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def reload(self, text, expect="ok", timeout=5.0):
        """Write text as the config, SIGHUP, wait until the reload is counted
        with result=expect. Returns the new counter value."""
        before = self.metric("dualwrite_config_reloads_total", result=expect)
        self.write_config(text)
        self.signal(signal.SIGHUP)
        return wait_for(
            lambda: (self.metric("dualwrite_config_reloads_total", result=expect) > before
                     and self.metric("dualwrite_config_reloads_total", result=expect)),
            timeout, "dualwrite_config_reloads_total{result=%r} to grow" % expect)

    def wait_exit(self, timeout):
        try:
            self.rc = self.proc.wait(timeout=timeout * SLOW)
        except subprocess.TimeoutExpired:
            return None
        return self.rc

    def stop(self, sig=None, timeout=15.0):
        """Signal (SIGTERM by default), wait bounded; SIGKILL and fail if it
        does not exit."""
        if sig is None:
            sig = signal.SIGTERM
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            if self.wait_exit(timeout) is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError("daemon did not exit within %.0fs of signal %d; log:\n%s"
                                     % (timeout * SLOW, sig, self.log_text()))
        self.rc = self.proc.returncode
        return self.rc

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.logf:
            self.logf.close()
            self.logf = None

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_log(self, text, count=1, timeout=10):
        """The log's text once `text` occurs in it `count` times: a line written
        just after an answer went out may land a moment after the client read it."""
        deadline = time.monotonic() + timeout * SLOW
        while True:
            log = self.log_text()
            if log.count(text) >= count:
                return log
            if time.monotonic() >= deadline:
                raise AssertionError("%r did not appear %d time(s) in the log within %.0fs:\n%s"
                                     % (text, count, timeout * SLOW, log))
            time.sleep(0.02)

    def rss_kib(self):
        with open("/proc/%d/status" % self.pid) as f:
            for ln in f:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1])
        raise AssertionError("no VmRSS for pid %d" % self.pid)

    def check_log(self):
        bad = []
        for ln in self.log_text().splitlines():
            for rx in _FORBIDDEN:
                if not rx.search(ln):
                    continue
                if rx.pattern == r"\blost\b" and (_VALGRIND_LINE.match(ln) or _NOT_A_LOSS.search(ln)):
                    continue
                bad.append(ln)
                break
        assert not bad, "forbidden lines in the daemon log:\n%s\n--- full log ---\n%s" % (
            "\n".join(bad), self.log_text())

    def finish(self):
        """Stop (SIGTERM unless the test already stopped it), then require exit 0
        (and no valgrind error exit) and a clean log."""
        self.finished = True
        try:
            rc = self.stop()
        finally:
            if self.logf:
                self.logf.close()
                self.logf = None
        if rc is not None:
            assert rc != 99 or not VALGRIND, "valgrind reported errors; log:\n%s" % self.log_text()
            assert rc >= 0, "daemon died of signal %d; log:\n%s" % (-rc, self.log_text())
            if not self.stopped_by_test:
                assert rc == 0, "daemon exited %d after SIGTERM; log:\n%s" % (rc, self.log_text())
        self.check_log()


def select_readable(sock, timeout):
    r, _, _ = select.select([sock], [], [], timeout)
    return bool(r)
