"""backends — a programmable HTTP/1.1 origin on raw sockets for the e2e suite.

`Backend` listens on 127.0.0.1 (a kernel-chosen port), serves each
connection in its own thread, parses requests itself (not http.server, so
the framing on the wire is exactly what the test says), records every
request it receives — method, target, version, headers as a list, the
decoded body, whether it came chunked — and answers with whatever the
handler returns: a `Reply` with fixed status/headers/body, Content-Length
or chunked or close-delimited framing, a large generated stream, a delay,
or an act of misbehaviour (hang, close, reset, close mid-body).

It also counts accepted TCP connections, so a test can say "nothing of it
reached the upstream" and mean not even a connect. Every blocking call has a
timeout and stop() unblocks all of them.
"""

import hashlib
import random
import socket
import struct
import threading
import time

SOCK_TIMEOUT = 30.0
MAX_HEAD = 1 << 20

_BLOCK = random.Random(20240501).randbytes(65536)


def stream_block(i):
    """Block i of the deterministic large body: its index, then fixed noise."""
    return struct.pack(">Q", i) + _BLOCK[8:]


def stream_bytes(size):
    """Yield the deterministic body of this size in blocks."""
    i = 0
    left = size
    while left > 0:
        b = stream_block(i)[:left]
        yield b
        left -= len(b)
        i += 1


def stream_sha256(size):
    h = hashlib.sha256()
    for b in stream_bytes(size):
        h.update(b)
    return h.hexdigest()


class Request:
    def __init__(self, method, target, version, headers, body, chunked, conn_no):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers  # list of (name, value), wire order
        self.body = body
        self.chunked = chunked  # the body arrived with chunked coding
        self.conn_no = conn_no  # which accepted connection carried it

    def header(self, name):
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def header_all(self, name):
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def names(self):
        return [n.lower() for n, _ in self.headers]

    def __repr__(self):
        return "<Request %s %s %s headers=%r body=%r>" % (
            self.method, self.target, self.version, self.headers, self.body[:200])


class Reply:
    """What the backend answers.

    action: "respond" (default), "hang" (never answer), "close" (close without
    answering), "reset" (RST: SO_LINGER 0), "partial" (head promising
    `length` bytes, then `partial` bytes of body, then close).
    framing: "length" (default), "chunked", "close" (no length; close after).
    stream: a size; the body is the deterministic generated stream (length framing).
    interim: 1xx statuses sent before the final answer.
    raw: bytes sent verbatim as the whole answer (then the connection closes).
    silent_close: close the connection after the answer without saying so
    (as a backend whose keep-alive timer fired would).
    linger: after an answer that closes the connection, shut down the sending side
    and read what the client still sends until it closes (as nginx's lingering_close
    does), so requests pipelined behind the answer are not met with a reset.
    fin_with_body: head, body and FIN corked into one segment (a close-delimited
    answer whose end of stream is already queued behind its bytes at first read).
    """

    def __init__(self, status=200, body=b"", headers=None, reason=None, framing="length",
                 chunk_size=None, stream=None, delay=0.0, action="respond", partial=0,
                 length=None, close=False, interim=(), raw=None, silent_close=False,
                 linger=False, fin_with_body=False):
        self.status = status
        self.body = body if isinstance(body, bytes) else body.encode()
        self.headers = list(headers or [])
        self.reason = reason
        self.framing = framing
        self.chunk_size = chunk_size
        self.stream = stream
        self.delay = delay
        self.action = action
        self.partial = partial
        self.length = length
        self.close = close
        self.interim = list(interim)
        self.raw = raw
        self.silent_close = silent_close
        self.linger = linger
        self.fin_with_body = fin_with_body


REASONS = {100: "Continue", 102: "Processing", 103: "Early Hints", 200: "OK", 201: "Created", 204: "No Content",
           304: "Not Modified", 400: "Bad Request", 404: "Not Found",
           500: "Internal Server Error", 503: "Service Unavailable"}


def default_handler(req):
    return Reply(200, ("%s %s" % (req.method, req.target)).encode(),
                 [("Content-Type", "text/plain")])


class _BadRequest(Exception):
    pass


class Backend:
    def __init__(self, handler=None, name="legacy", tls=None):
        """tls: an ssl.SSLContext (server side): the origin speaks HTTPS."""
        self.name = name
        self.tls = tls
        self.handler = handler or default_handler
        self.requests = []
        self.accepts = 0
        self.errors = []  # framing problems the backend saw (the proxy's fault)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.conns = []
        self.threads = []
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(128)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.url = "%s://127.0.0.1:%d" % ("https" if tls else "http", self.port)
        t = threading.Thread(target=self._accept_loop, name="backend-accept-%s" % name,
                             daemon=True)
        t.start()
        self.accept_thread = t

    # -- test-side API

    def reply(self, *a, **kw):
        """Answer every request with the same Reply."""
        r = Reply(*a, **kw)
        self.handler = lambda req: r

    def reset(self):
        with self.lock:
            self.requests = []
            self.accepts = 0
            self.errors = []

    def wait_requests(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= n:
                    return list(self.requests)
            time.sleep(0.01)
        raise AssertionError("backend %s got %d requests, wanted %d within %.1fs: %r" % (
            self.name, len(self.requests), n, timeout, self.requests))

    def targets(self):
        with self.lock:
            return [r.target for r in self.requests]

    def stop(self):
        self.stopping.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass
        self.accept_thread.join(timeout=5)
        for t in list(self.threads):
            t.join(timeout=5)

    # -- server side

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                c, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            # head and body go out in separate sends: without this, Nagle holds
            # the body until the delayed ACK of the head (40 ms an answer)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.accepts += 1
                no = self.accepts
                self.conns.append(c)
            t = threading.Thread(target=self._serve, args=(c, no), daemon=True,
                                 name="backend-%s-%d" % (self.name, no))
            self.threads.append(t)
            t.start()

    def _recv(self, c, buf):
        d = c.recv(65536)
        if not d:
            raise EOFError
        buf += d

    def _read_line(self, c, buf):
        while True:
            i = buf.find(b"\r\n")
            if i >= 0:
                ln = bytes(buf[:i])
                del buf[:i + 2]
                return ln
            if len(buf) > MAX_HEAD:
                raise _BadRequest("line too long")
            self._recv(c, buf)

    def _read_exact(self, c, buf, n):
        while len(buf) < n:
            self._recv(c, buf)
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def _read_request(self, c, buf, no):
        while True:
            i = buf.find(b"\r\n\r\n")
            if i >= 0:
                break
            if len(buf) > MAX_HEAD:
                raise _BadRequest("head too long")
            self._recv(c, buf)
        head = bytes(buf[:i])
        del buf[:i + 4]
        lines = head.split(b"\r\n")
        for ln in lines:
            if b"\r" in ln or b"\n" in ln or b"\0" in ln:
                raise _BadRequest("bare CR/LF/NUL in head %r" % head)
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            raise _BadRequest("bad request line %r" % lines[0])
        method, target, version = (p.decode("latin-1") for p in parts)
        headers = []
        for ln in lines[1:]:
            name, sep, value = ln.partition(b":")
            if not sep or not name or name != name.strip() or ln[:1] in (b" ", b"\t"):
                raise _BadRequest("bad header line %r" % ln)
            headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
        te = [v for n, v in headers if n.lower() == "transfer-encoding"]
        cl = [v for n, v in headers if n.lower() == "content-length"]
        if te and cl:
            raise _BadRequest("both Transfer-Encoding and Content-Length")
        body = b""
        is_chunked = False
        if te:
            if [t.strip().lower() for v in te for t in v.split(",")] != ["chunked"]:
                raise _BadRequest("transfer coding %r" % te)
            is_chunked = True
            out = bytearray()
            while True:
                ln = self._read_line(c, buf)
                size = int(ln.split(b";")[0].strip(), 16)
                if size == 0:
                    while self._read_line(c, buf) != b"":
                        pass
                    break
                out += self._read_exact(c, buf, size)
                if self._read_exact(c, buf, 2) != b"\r\n":
                    raise _BadRequest("no CRLF after chunk")
            body = bytes(out)
        elif cl:
            if len(set(cl)) != 1 or not cl[0].isdigit():
                raise _BadRequest("Content-Length %r" % cl)
            body = self._read_exact(c, buf, int(cl[0]))
        return Request(method, target, version, headers, body, is_chunked, no)

    @staticmethod
    def _wants_close(req):
        tokens = [t.strip().lower() for v in req.header_all("Connection") for t in v.split(",")]
        if "close" in tokens:
            return True
        return req.version == "HTTP/1.0" and "keep-alive" not in tokens

    def _serve(self, c, no):
        c.settimeout(SOCK_TIMEOUT)
        buf = bytearray()
        try:
            if self.tls:
                c = self.tls.wrap_socket(c, server_side=True)  # ssl.SSLError is an OSError
            while not self.stopping.is_set():
                try:
                    req = self._read_request(c, buf, no)
                except EOFError:
                    return
                except _BadRequest as e:
                    with self.lock:
                        self.errors.append(str(e))
                    return
                with self.lock:
                    self.requests.append(req)
                rep = self.handler(req)
                if rep.delay and self.stopping.wait(rep.delay):
                    return
                if not self._answer(c, req, rep):
                    return
        except (OSError, ValueError):
            return
        finally:
            try:
                c.close()
            except OSError:
                pass

    def _answer(self, c, req, rep):
        """Send the reply; False when the connection must end."""
        if rep.action == "hang":
            self.stopping.wait(60)
            return False
        if rep.action == "close":
            return False
        if rep.action == "reset":
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        for st in rep.interim:
            c.sendall(b"HTTP/1.1 %d %s\r\n\r\n" % (st, REASONS.get(st, "Info").encode()))
        if rep.raw is not None:
            c.sendall(rep.raw)
            self.stopping.wait(0.2)  # let it be read before the FIN
            return False
        close = rep.close or self._wants_close(req) or rep.framing == "close"
        no_body = req.method == "HEAD" or rep.status < 200 or rep.status in (204, 304)
        headers = list(rep.headers)
        names = [n.lower() for n, _ in headers]
        if rep.stream is not None:
            total = rep.stream
        else:
            total = len(rep.body)
        if rep.action == "partial":
            headers.append(("Content-Length", str(rep.length or total)))
        elif rep.framing == "chunked" and not no_body:
            headers.append(("Transfer-Encoding", "chunked"))
        elif rep.framing == "length" and "content-length" not in names:
            if rep.status >= 200 and rep.status not in (204, 304):
                headers.append(("Content-Length", str(rep.length if rep.length is not None
                                                      else total)))
        if close and "connection" not in names:
            headers.append(("Connection", "close"))
        reason = rep.reason if rep.reason is not None else REASONS.get(rep.status, "Status")
        head = "HTTP/1.1 %d %s\r\n" % (rep.status, reason)
        head += "".join("%s: %s\r\n" % (n, v) for n, v in headers) + "\r\n"
        if rep.fin_with_body:  # the whole answer and the FIN leave in one segment
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            c.sendall(head.encode("latin-1") + rep.body)
            c.shutdown(socket.SHUT_WR)
            self.stopping.wait(0.2)
            return False
        c.sendall(head.encode("latin-1"))
        if rep.action == "partial":
            c.sendall(rep.body[:rep.partial])
            return False
        if no_body:
            return not close
        if rep.stream is not None:
            for b in stream_bytes(rep.stream):
                if self.stopping.is_set():
                    return False
                c.sendall(b)
        elif rep.framing == "chunked":
            step = rep.chunk_size or max(1, len(rep.body))
            for i in range(0, len(rep.body), step):
                part = rep.body[i:i + step]
                c.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            c.sendall(b"0\r\n\r\n")
        else:
            c.sendall(rep.body)
        if rep.silent_close:
            self.stopping.wait(0.05)
            return False
        if close and rep.linger:
            self._linger(c)
        return not close

    def _linger(self, c):
        try:
            c.shutdown(socket.SHUT_WR)
            c.settimeout(2.0)
            while not self.stopping.is_set() and c.recv(65536):
                pass
        except OSError:
            pass
