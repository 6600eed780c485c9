"""TLS both ways (SPEC §8), end to end with throwaway certificates made here with the
openssl CLI: a CA, server certificates for 127.0.0.1/localhost (two, for reloads), an
expired one, one for the wrong name, a self-signed one (unknown CA) and a client one.

- the TLS listener serves HTTPS, tells the backend X-Forwarded-Proto: https, resumes
  sessions, and with client_ca accepts a client certificate and refuses its absence;
- https:// upstreams are proxied and mirrored with a per-upstream CA, SNI and a client
  certificate; each verification failure is reported by name in the log, the 502, the
  mirror's access log and the dead letter's reason;
- certificates are re-read on SIGHUP under load with no failed handshake, a bad one is a
  failed reload while the old keeps serving, and `dualwrited -t` checks cert/key pairs.
"""

import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest

import helpers
import mirrorlib as ml
from backends import Backend

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="needs the openssl CLI")

IP_SANS = "subjectAltName=IP:127.0.0.1,DNS:localhost"


class Certs:
    """A CA and the certificates it (or nobody) signs, in one directory."""

    def __init__(self, d):
        self.dir = str(d)
        self.ca, self.ca_key = self.path("ca.pem"), self.path("ca.key")
        self._run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                  "-nodes", "-keyout", self.ca_key, "-out", self.ca, "-days", "30",
                  "-subj", "/CN=dualwrite test CA",
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def path(self, name):
        return os.path.join(self.dir, name)

    def _run(self, *args):
        out = subprocess.run([OPENSSL] + list(args), cwd=self.dir, capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, "openssl %s: %s" % (" ".join(args), out.stderr)

    def issue(self, name, ext=IP_SANS, days=30, signed=True):
        """-> (cert, key) paths; ext: the extension line; signed=False: self-signed."""
        key, crt = self.path(name + ".key"), self.path(name + ".pem")
        if not signed:
            self._run("req", "-x509", "-newkey", "ec", "-pkeyopt",
                      "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", crt,
                      "-days", str(days), "-subj", "/CN=" + name, "-addext", ext)
            return crt, key
        csr, extf = self.path(name + ".csr"), self.path(name + ".ext")
        with open(extf, "w") as f:
            f.write(ext + "\n")
        self._run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                  "-keyout", key, "-out", csr, "-subj", "/CN=" + name)
        self._run("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
                  "-CAcreateserial", "-days", str(days), "-extfile", extf, "-out", crt)
        return crt, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    c = Certs(tmp_path_factory.mktemp("certs"))
    c.server = c.issue("server-1")
    c.server2 = c.issue("server-2")
    c.expired = c.issue("expired", days=-1)
    c.wrong_name = c.issue("wrong-name", ext="subjectAltName=DNS:wrong.example")
    c.dns_only = c.issue("dns-only", ext="subjectAltName=DNS:localhost")
    c.self_signed = c.issue("self-signed", signed=False)
    c.client = c.issue("client", ext="extendedKeyUsage=clientAuth")
    return c


def server_ctx(cert, client_ca=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_ctx(certs, cert=None):
    ctx = ssl.create_default_context(cafile=certs.ca)
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


def tls_listen(port, cert, client_ca=None):
    tls = {"cert": cert[0], "key": cert[1]}
    if client_ca:
        tls["client_ca"] = client_ca
    return {"addr": "127.0.0.1:%d" % port, "tls": tls}


def https_get(port, ctx, path="/", host="localhost", timeout=10.0):
    """One request over a fresh TLS connection -> (status, body, peer certificate CN)."""
    c = http.client.HTTPSConnection(host, port, context=ctx, timeout=timeout)
    try:
        c.connect()
        cert = c.sock.getpeercert()
        cn = dict(x[0] for x in cert["subject"])["commonName"]
        c.request("GET", path, headers={"Connection": "close"})
        r = c.getresponse()
        return r.status, r.read(), cn
    finally:
        c.close()


def tls_daemon(dw, backend, certs, cert=None, client_ca=None, start=True):
    d = dw({"legacy": backend.url}, start=False)
    d.tls_port = helpers.free_port()
    d.extra["listen"] = ["127.0.0.1:%d" % d.port,
                         tls_listen(d.tls_port, cert or certs.server, client_ca)]
    if start:
        d.start()
    return d


# ---------------------------------------------------------------- the listener


def test_tls_listener_serves_https_with_forwarded_proto(dw, backend, certs):
    d = tls_daemon(dw, backend, certs)
    ctx = client_ctx(certs)
    c = http.client.HTTPSConnection("localhost", d.tls_port, context=ctx, timeout=10)
    for i in range(3):  # keep-alive: three requests on one TLS connection
        c.request("GET", "/tls/%d" % i)
        r = c.getresponse()
        assert r.status == 200 and r.read() == b"GET /tls/%d" % i
    assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
    c.close()
    assert helpers.request(d.port, "GET", "/plain", [("Connection", "close")]).status == 200
    reqs = backend.wait_requests(4)
    assert backend.accepts >= 1
    by_target = {r.target: r for r in reqs}
    for i in range(3):
        assert by_target["/tls/%d" % i].header("X-Forwarded-Proto") == "https"
        assert by_target["/tls/%d" % i].header("X-Forwarded-For") == "127.0.0.1"
    assert by_target["/plain"].header("X-Forwarded-Proto") == "http"


def test_tls_listener_resumes_sessions(dw, backend, certs):
    d = tls_daemon(dw, backend, certs)
    ctx = client_ctx(certs)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # a session object right after the handshake
    with socket.create_connection(("127.0.0.1", d.tls_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            sess = s.session
    with socket.create_connection(("127.0.0.1", d.tls_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=sess) as s:
            assert s.session_reused
            s.sendall(b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")


def test_mtls_accepts_a_client_certificate_and_refuses_none(dw, backend, certs):
    d = tls_daemon(dw, backend, certs, client_ca=certs.ca)
    assert https_get(d.tls_port, client_ctx(certs, certs.client), "/with-cert")[0] == 200
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        https_get(d.tls_port, client_ctx(certs), "/without-cert")
    # an untrusted client certificate is refused too
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        https_get(d.tls_port, client_ctx(certs, certs.self_signed), "/untrusted-cert")
    # marker: the daemon still serves, and nothing refused reached the backend
    assert https_get(d.tls_port, client_ctx(certs, certs.client), "/marker")[0] == 200
    backend.wait_requests(2)
    assert backend.targets() == ["/with-cert", "/marker"]
    refused = re.compile(r"client 127\.0\.0\.1: TLS (handshake|certificate verify) failed")
    helpers.wait_for(lambda: len(refused.findall(d.log_text())) >= 2, 5,
                     "the refused handshakes in the log")


def test_config_check_loads_certificates_with_file_and_line(dw, backend, certs, tmp_path):
    d = tls_daemon(dw, backend, certs, cert=(certs.server[0], certs.server2[1]), start=False)
    d.write_config()
    out = subprocess.run([helpers.daemon_binary(), "-t", "-c", d.conf_path], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2, out
    line = next(i + 1 for i, ln in enumerate(open(d.conf_path)) if "tls = {" in ln)
    assert re.search(r"%s:%d: listen\[1\]\.tls: key .*server-2\.key\" does not match cert" %
                     (re.escape(d.conf_path), line), out.stderr), out.stderr
    d.extra["listen"][1]["tls"]["cert"] = str(tmp_path / "missing.pem")
    d.write_config()
    out = subprocess.run([helpers.daemon_binary(), "-t", "-c", d.conf_path], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2 and "missing.pem\": cannot open: No such file" in out.stderr, out
    d.extra["listen"][1]["tls"]["cert"] = certs.server[0]
    d.extra["listen"][1]["tls"]["key"] = certs.server[1]
    d.write_config()
    out = subprocess.run([helpers.daemon_binary(), "-t", "-c", d.conf_path], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out


# ---------------------------------------------------------------- reloads


def install_cert(dst, src):
    """Replace the files dst=(cert, key) by src's, each by an atomic rename."""
    for a, b in zip(src, dst):
        shutil.copyfile(a, b + ".tmp")
        os.rename(b + ".tmp", b)


def test_certificate_reload_under_load_drops_no_handshake(dw, backend, certs, tmp_path):
    live = (str(tmp_path / "live.pem"), str(tmp_path / "live.key"))
    install_cert(live, certs.server)
    d = tls_daemon(dw, backend, certs, cert=live)
    ctx = client_ctx(certs)
    total, bound_s = 2000, 45.0
    seen, failures = [], []
    swapped = threading.Event()

    def load():
        deadline = time.monotonic() + bound_s
        for i in range(total):
            if time.monotonic() > deadline:
                failures.append("bound of %.0f s reached after %d requests" % (bound_s, i))
                return
            try:
                st, _, cn = https_get(d.tls_port, ctx, "/load/%d" % i)
                seen.append(cn)
                if st != 200:
                    failures.append("request %d: status %d" % (i, st))
            except Exception as e:  # noqa: BLE001 - every failure counts
                failures.append("request %d: %r" % (i, e))
            if i == total // 4:
                swapped.set()

    t = threading.Thread(target=load, daemon=True)
    t.start()
    assert swapped.wait(bound_s), "the load loop did not get going"
    install_cert(live, certs.server2)
    d.reload(d.config_text(), expect="ok")
    t.join(bound_s + 10)
    assert not t.is_alive()
    assert failures == [], failures[:10]
    assert len(seen) == total
    assert seen[0] == "server-1" and seen[-1] == "server-2", (seen[0], seen[-1])
    first_new = seen.index("server-2")
    assert set(seen[first_new:]) == {"server-2"}  # no new connection went back to the old one
    assert https_get(d.tls_port, ctx)[2] == "server-2"


def test_bad_certificate_on_reload_is_refused_and_the_old_keeps_serving(dw, backend, certs,
                                                                       tmp_path):
    live = (str(tmp_path / "live.pem"), str(tmp_path / "live.key"))
    install_cert(live, certs.server)
    d = tls_daemon(dw, backend, certs, cert=live)
    ctx = client_ctx(certs)
    kept = http.client.HTTPSConnection("localhost", d.tls_port, context=ctx, timeout=10)
    kept.request("GET", "/before")
    assert kept.getresponse().read() == b"GET /before"
    # a key that does not match the certificate
    shutil.copyfile(certs.server2[1], live[1])
    d.reload(d.config_text(), expect="failed")
    assert re.search(r"reload rejected.*listen\[1\]\.tls: key .*live\.key\" does not match",
                     d.log_text()), d.log_text()
    # a file that is no certificate at all
    install_cert(live, certs.server)
    with open(live[0], "w") as f:
        f.write("not a certificate\n")
    d.reload(d.config_text(), expect="failed")
    assert "not a PEM certificate" in d.log_text()
    assert https_get(d.tls_port, ctx, "/after")[:3:2] == (200, "server-1")
    kept.request("GET", "/kept")  # the open connection was not touched
    assert kept.getresponse().read() == b"GET /kept"
    kept.close()


# ---------------------------------------------------------------- upstreams


ROUTES = """
routes = (
  { name = "create"; match = "POST /items";
    mirror = { upstream = "target"; path = "/items"; key = "$request.id"; base = "$request"; }; }
);
"""


def test_https_upstreams_proxied_and_mirrored_with_ca_sni_and_client_cert(dw, make_backend,
                                                                          certs):
    legacy = make_backend(name="legacy", tls=server_ctx(certs.dns_only))
    # the target wants a client certificate from our CA
    target = make_backend(name="target", tls=server_ctx(certs.server, client_ca=certs.ca))
    d = ml.mirror_daemon(dw, legacy.url, target.url, ROUTES, target="target", start=False,
                         target_extra={"ca_file": certs.ca, "cert": certs.client[0],
                                       "key": certs.client[1]})
    # the legacy's certificate names localhost only: sni says which name to expect
    d.upstreams["legacy"] = {"url": legacy.url, "ca_file": certs.ca, "sni": "localhost"}
    d.write_config(d.config_text() + ROUTES)
    d.start()
    r = ml.send_json(d.port, "POST", "/items", {"id": 7, "name": "drill"})
    assert r.status == 200, r
    assert legacy.wait_requests(1)[0].header("X-Forwarded-Proto") == "http"
    got = target.wait_requests(1)[0]
    assert got.target == "/items" and b'"id": 7' in got.body or b'"id":7' in got.body
    ml.wait_outcomes(d, lambda o: o["result"] == "delivered", 1, 10, "delivered over TLS")


FAILURES = {
    # kind: (certificate the upstream presents, words the report must carry)
    "expired": ("expired", "expired (certificate has expired)"),
    "hostname": ("wrong_name", "hostname mismatch"),
    "unknown-ca": ("self_signed", "unknown CA"),
}


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_upstream_verification_failure_named_in_502_and_log(dw, make_backend, certs, kind):
    attr, words = FAILURES[kind]
    legacy = make_backend(name="legacy", tls=server_ctx(getattr(certs, attr)))
    d = dw({"legacy": {"url": legacy.url, "ca_file": certs.ca}})
    r = helpers.request(d.port, "GET", "/x", [("Connection", "close")])
    assert r.status == 502, r
    assert "TLS certificate verify failed: " + words in r.json()["error"], r.json()
    assert "Protocol error" not in d.log_text()
    helpers.wait_for(lambda: words in d.log_text(), 5, "the failure in the log")
    assert legacy.requests == []


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_mirror_verification_failure_named_in_access_log_and_dead_letter(dw, make_backend,
                                                                         certs, kind):
    attr, words = FAILURES[kind]
    legacy = make_backend(name="legacy")
    target = make_backend(name="target", tls=server_ctx(getattr(certs, attr)))
    d = ml.mirror_daemon(dw, legacy.url, target.url, ROUTES, target="target",
                         target_extra={"ca_file": certs.ca})
    assert ml.send_json(d.port, "POST", "/items", {"id": 1}).status == 200
    out = ml.wait_outcomes(d, lambda o: o["result"] == "queued", 1, 10, "queued on TLS failure")
    assert words in (out[0]["reason"] or ""), out[0]["line"]
    rp = ml.cli(d.conf_path, "replay", "--once", "--max-attempts", "1")
    assert words in rp.stdout + rp.stderr, rp
    dead = ml.queue_list(d.conf_path, dead=True)
    assert len(dead) == 1 and words in dead[0]["line"], dead
    assert words in ml.queue_show(d.conf_path, dead[0]["seq"])
    assert target.requests == []


def test_verify_false_is_warned_at_every_load_and_accepts_any_certificate(dw, make_backend,
                                                                          certs):
    legacy = make_backend(name="legacy", tls=server_ctx(certs.self_signed))
    d = dw({"legacy": {"url": legacy.url, "verify": False}})
    assert helpers.request(d.port, "GET", "/x", [("Connection", "close")]).status == 200
    warn = 'upstream "legacy" (%s): verify = false' % legacy.url
    assert d.log_text().count(warn) == 1
    d.reload(d.config_text())
    assert d.log_text().count(warn) == 2


def test_tls_keys_on_an_http_upstream_are_a_config_error(dw, backend, certs):
    d = dw({"legacy": {"url": backend.url, "ca_file": certs.ca}}, start=False)
    d.write_config()
    out = subprocess.run([helpers.daemon_binary(), "-t", "-c", d.conf_path], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2 and "apply to https:// upstreams only" in out.stderr, out
