"""mirrorlib — what the dual-writing end-to-end tests (test_mirror.py) need beyond helpers.py.

A throwaway PostgreSQL cluster (tests/pg.sh) with the four demo databases, the demo services
of the two seeds (build/dw-demo-backend: user-core, gear-ops, iot-v1, iot-v2) as child
processes with their fault switch, the fixtures a test module takes them from (`pg =
pg_fixture()`, `svc = gear_services_fixture()`), the table map of the Gear Ops seed and the
backfill's checkpoint, the mirror route tables of conf/gear-ops.conf and
conf/iot-v2.conf with the upstream URLs of the test, a driver for the `dualwrite` CLI (replay,
queue) and a parser for the daemon's mirror access-log lines.

Every process started here has a bounded wait on start and stop, and every poll is bounded in
time; nothing listens beyond 127.0.0.1 (PostgreSQL listens on a unix socket only).
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

import helpers

ROOT = helpers.REPO_ROOT
PG_SH = os.path.join(ROOT, "tests", "pg.sh")
DATABASES = ("user_core", "gear_ops", "iot_v1", "iot_v2")
SERVICE_DB = {"user-core": "user_core", "gear-ops": "gear_ops", "iot-v1": "iot_v1",
              "iot-v2": "iot_v2"}
CLI_TIMEOUT = 60.0
# Lines that must never appear in what a CLI process wrote.
_CLI_FORBIDDEN = re.compile(r"AddressSanitizer|LeakSanitizer|runtime error:")


def cli_binary():
    return os.path.join(helpers.build_dir(), "dualwrite")


def demo_binary():
    return os.path.join(helpers.build_dir(), "dw-demo-backend")


def _tool_env(extra=None):
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    env.update(extra or {})
    return env


# ---------------------------------------------------------------- PostgreSQL


class PgCluster:
    """tests/pg.sh start DIR with the demo databases (or `databases`); env holds
    PGHOST/PGPORT/PGUSER.

    The cluster lives in its own directory under $TMPDIR (or /tmp), not under pytest's
    tmp_path: pytest makes its
    /tmp/pytest-of-USER 0700 again whenever a session starts, and the server runs as
    another user than root (tests/pg.sh), so a cluster under it breaks the moment a second
    pytest session starts on the machine. It is removed by stop()."""

    def __init__(self, databases=DATABASES):
        self.dir = tempfile.mkdtemp(prefix="dw-pg-")
        os.chmod(self.dir, 0o755)
        env = dict(os.environ, PG_DATABASES=" ".join(databases))
        out = subprocess.run([PG_SH, "start", self.dir], env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, "tests/pg.sh start failed: %s" % out.stderr
        self.env = dict(os.environ)
        for k, v in re.findall(r"(PG[A-Z]+)=('[^']*'|\S+)", out.stdout):
            self.env[k] = v.strip("'")
        assert "PGHOST" in self.env and "PGPORT" in self.env, out.stdout

    def stop(self):
        subprocess.run([PG_SH, "stop", self.dir], capture_output=True, timeout=120)
        shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, db=None):
        """A libpq connection string to this cluster (to database db when given)."""
        text = "host=%s port=%s user=%s" % (self.env["PGHOST"], self.env["PGPORT"],
                                            self.env["PGUSER"])
        return text + (" dbname=%s" % db if db else "")

    def sql(self, db, text):
        """Run SQL; the rows of the last statement as lists of strings."""
        return psql(self.env, db, text)

    def rows_json(self, db, query):
        """The rows of query as a list of dicts (PostgreSQL builds the JSON)."""
        rows = self.sql(db, "SELECT coalesce(jsonb_agg(to_jsonb(t)), '[]') FROM (%s) t" % query)
        return json.loads(rows[0][0])


def psql(env, db, text, timeout=60):
    """Run SQL with psql in env (PG*); the rows of the last statement as lists of strings."""
    out = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-F", "\x1f", "-v",
                          "ON_ERROR_STOP=1", "-d", db], input=text, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, "psql -d %s failed: %s\n%s" % (db, out.stderr, text)
    return [ln.split("\x1f") for ln in out.stdout.splitlines() if ln != ""]


def pg_fixture():
    """A module-scoped fixture `pg` (`pg = mirrorlib.pg_fixture()`): the daemon, the CLI and
    the demo services are built, and one PgCluster serves the module's tests."""
    @pytest.fixture(scope="module", name="pg")
    def _pg():
        for b in (helpers.daemon_binary(), cli_binary(), demo_binary()):
            if not os.access(b, os.X_OK):
                pytest.fail("%s is not built (make all, or set DW_BUILD)" % b)
        c = PgCluster()
        try:
            yield c
        finally:
            c.stop()
    return _pg


def checkpoint(pg):
    """The backfill's position in table equipment: the last key it committed (0 before the
    first batch)."""
    r = pg.sql("gear_ops", "SELECT to_regclass('dualwrite_backfill_checkpoint') IS NOT NULL")
    if r[0][0] != "t":
        return 0
    r = pg.sql("gear_ops", "SELECT last_key FROM dualwrite_backfill_checkpoint"
               " WHERE table_name = 'equipment'")
    return int(r[0][0]) if r and r[0][0] else 0


# ---------------------------------------------------------------- demo services


class DemoService:
    """One build/dw-demo-backend --service NAME on a free port, schema applied."""

    def __init__(self, service, pg, log_dir):
        self.service = service
        self.db = SERVICE_DB[service]
        self.pg = pg
        self.port = helpers.free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.log_path = os.path.join(str(log_dir), "%s.log" % service)
        self.logf = open(self.log_path, "ab")
        binary = demo_binary()
        assert os.access(binary, os.X_OK), "%s is missing (make all?)" % binary
        self.proc = subprocess.Popen(
            [binary, "--service", service, "--listen", "127.0.0.1:%d" % self.port,
             "--init-schema"], stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf,
            env=_tool_env(pg.env), cwd=ROOT, close_fds=True)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("%s exited %s at start; log:\n%s" % (
                    service, self.proc.returncode, self.log_text()))
            try:
                if self.fault("ok", check=False) == 200:
                    return
            except (OSError, AssertionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("%s not answering after 20 s; log:\n%s" % (
                    service, self.log_text()))
            time.sleep(0.05)

    def fault(self, mode, delay_ms=None, check=True):
        target = "/_fault?mode=%s" % mode
        if delay_ms is not None:
            target += "&delay_ms=%d" % delay_ms
        r = helpers.request(self.port, "GET", target, [("Connection", "close")], timeout=5)
        if check:
            assert r.status == 200, "%s %s: %r" % (self.service, target, r)
        return r.status

    def kill(self):
        """SIGKILL the service (an outage); restart() brings it back on the same port."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def restart(self, timeout=20.0):
        """Start the service again on the same port and log file; wait until it answers."""
        assert self.proc.poll() is not None, "%s is still running" % self.service
        self.proc = subprocess.Popen(
            [demo_binary(), "--service", self.service, "--listen", "127.0.0.1:%d" % self.port],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf,
            env=_tool_env(self.pg.env), cwd=ROOT, close_fds=True)
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, "%s exited at restart:\n%s" % (
                self.service, self.log_text())
            try:
                if self.fault("ok", check=False) == 200:
                    return
            except (OSError, AssertionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "%s not answering %.0f s after restart" % (
                self.service, timeout)
            time.sleep(0.05)

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.logf.close()


@contextlib.contextmanager
def demo_services(pg, log_dir, names):
    """The demo services `names` started (in order) as {name: DemoService}; all stopped on
    exit, also when one of them fails to start."""
    started = {}
    try:
        for name in names:
            started[name] = DemoService(name, pg, log_dir)
        yield started
    finally:
        for s in started.values():
            s.stop()


def gear_services_fixture(truncate=False):
    """A fixture `svc` (`svc = mirrorlib.gear_services_fixture()`): user-core (legacy) and
    gear-ops (new) for one test over the module's `pg`; truncate: over empty tables."""
    @pytest.fixture(name="svc")
    def _svc(pg, tmp_path):
        with demo_services(pg, tmp_path, ("user-core", "gear-ops")) as started:
            if truncate:
                pg.sql("user_core", "TRUNCATE old_equipment")
                pg.sql("gear_ops", "TRUNCATE gear_items CASCADE")
            yield started
    return _svc


# ---------------------------------------------------------------- configuration


def table_map(pg, extra=""):
    """The table map of conf/gear-ops.conf (equipment) with this cluster's DSNs; extra: text
    appended after it."""
    return """
tables = (
  {
    name   = "equipment";
    source = { dsn = "%(d)s dbname=user_core"; table = "old_equipment"; key = "id"; };
    target = { dsn = "%(d)s dbname=gear_ops";  table = "gear_items";    key = "id"; };
    columns = {
      id = "$row.id"; user_id = "$row.user_id"; name = "$row.name"; category = "$row.type";
      brand = "$row.brand"; status = "active"; role = "personal";
      created_at = "$row.created_at"; updated_at = "$row.created_at";
    };
    ignore = [ "updated_at" ];
  }
);
%(e)s
""" % {"d": pg.dsn(), "e": extra}


def gear_routes(target="gear_ops"):
    """The routes of conf/gear-ops.conf, mirroring to upstream `target`."""
    return """
routes = (
  { name = "equipment-list"; match = "GET /user/{id}/equipment"; },
  {
    name  = "equipment-create";
    match = "POST /equipment";
    mirror = {
      upstream = "%(t)s";
      method   = "POST";
      path     = "/gear-items";
      key      = "$response.id";
      body = {
        id         = "$response.id";
        user_id    = "$request.user_id";
        name       = "$request.name";
        category   = "$request.type";
        brand      = "$request.brand";
        status     = "active";
        role       = "personal";
        created_at = "$response.created_at";
        updated_at = "$response.created_at";
      };
      delivered = [ 409 ];
    };
  },
  {
    name  = "equipment-update";
    match = "PUT /equipment/{id}";
    mirror = {
      upstream = "%(t)s";
      method   = "PUT";
      path     = "/gear-items/{id}";
      key      = "$path.id";
      body = {
        id         = "$response.id";
        user_id    = "$response.user_id";
        name       = "$response.name";
        category   = "$response.type";
        brand      = "$response.brand";
        status     = "active";
        role       = "personal";
        created_at = "$response.created_at";
        updated_at = "$now";
      };
    };
  },
  {
    name  = "equipment-delete";
    match = "DELETE /equipment/{id}";
    mirror = {
      upstream  = "%(t)s";
      path      = "/gear-items/{id}";
      key       = "$path.id";
      delivered = [ 404 ];
    };
  }
);
""" % {"t": target}


def iot_routes(target="v2"):
    """The routes of conf/iot-v2.conf, mirroring to upstream `target`."""
    return """
routes = (
  {
    name  = "device-create";
    match = "POST /devices";
    mirror = {
      upstream = "%(t)s";
      method   = "POST";
      path     = "/devices";
      key      = "$response.id";
      body = {
        id         = "$response.id";
        name       = "$request.name";
        tenantId   = "$tenant";
        templateId = "$request.type";
        attributes = "$request.config";
        metadata   = { migratedFrom = "v1"; originalType = "$request.type"; };
        status     = "$request.status";
      };
    };
  },
  {
    name  = "device-update";
    match = "PATCH /devices/{id}";
    mirror = {
      upstream = "%(t)s";
      path     = "/devices/{id}";
      key      = "$path.id";
      base     = "$request";
      drop     = [ "type", "config" ];
      body = {
        tenantId   = "$tenant";
        templateId = "$request.type";
        attributes = "$request.config";
        metadata   = { migratedFrom = "v1"; originalType = "$request.type"; };
      };
    };
  },
  {
    name  = "device-delete";
    match = "DELETE /devices/{id}";
    mirror = {
      upstream  = "%(t)s";
      path      = "/devices/{id}";
      key       = "$path.id";
      delivered = [ 404 ];
    };
  }
);
""" % {"t": target}


def mirror_daemon(dw, legacy_url, target_url, routes, target="gear_ops", target_timeout_ms=2000,
                  limits=None, queue=None, tenant=None, start=True, name=None, target_extra=None,
                  extra=None):
    """A dualwrited (through conftest's `dw` factory, so its clean stop is checked) in front
    of legacy_url mirroring to target_url with the given routes text; target_extra: more
    settings of the target upstream; extra: more top-level settings (e.g. workers)."""
    tconf = {"url": target_url, "timeout_ms": target_timeout_ms}
    tconf.update(target_extra or {})
    d = dw({"legacy": {"url": legacy_url, "timeout_ms": 5000}, target: tconf},
           limits=limits, start=False, name=name)
    q = {"path": d.queue_dir}
    q.update(queue or {})
    d.extra["queue"] = q
    d.extra["log_level"] = "info"
    if tenant:
        d.extra["tenant"] = tenant
    d.extra.update(extra or {})
    d.write_config(d.config_text() + routes)
    if start:
        d.start()
    return d


# ---------------------------------------------------------------- client side


def send_json(port, method, path, doc=None, headers=None, body=None, timeout=10.0):
    """One request on a fresh connection; doc is JSON-encoded unless body (bytes) is given."""
    hs = [("Connection", "close")]
    if body is None and doc is not None:
        body = json.dumps(doc).encode()
        hs.append(("Content-Type", "application/json"))
    hs += list(headers or [])
    return helpers.request(port, method, path, hs, body or b"", timeout=timeout)


# ---------------------------------------------------------------- the CLI


def cli(conf, *args, timeout=CLI_TIMEOUT, check_clean=True):
    """Run `dualwrite ARGS... -c conf`-style commands: args is the command, conf is inserted
    after it. Returns the CompletedProcess (text)."""
    argv = [cli_binary(), args[0], "-c", conf] + [str(a) for a in args[1:]]
    out = subprocess.run(argv, env=_tool_env(), capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT)
    if check_clean:
        bad = _CLI_FORBIDDEN.search(out.stderr)
        assert not bad, "sanitizer report from %s:\n%s" % (" ".join(argv), out.stderr)
    return out


def cli_popen(conf, *args):
    argv = [cli_binary(), args[0], "-c", conf] + [str(a) for a in args[1:]]
    return subprocess.Popen(argv, env=_tool_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


def queue_stats(conf):
    """`dualwrite queue stats` -> {"pending": N, "queued": N, "dead": N, "next_seq": N}."""
    out = cli(conf, "queue", "stats")
    assert out.returncode == 0, "queue stats exited %d: %s%s" % (out.returncode, out.stdout,
                                                                 out.stderr)
    st = {}
    for k, rx in (("pending", r"^pending\s+(\d+)"), ("queued", r"^queued\s+(\d+)"),
                  ("dead", r"^dead\s+(\d+)"), ("next_seq", r"^next seq\s+(\d+)")):
        m = re.search(rx, out.stdout, re.M)
        assert m, "queue stats output lacks %s:\n%s" % (k, out.stdout)
        st[k] = int(m.group(1))
    return st


def queue_list(conf, dead=False):
    """`dualwrite queue list [--dead]` -> list of dicts: seq, state, route, key, method, path,
    line ("SEQ STATE ROUTE KEY METHOD PATH attempts=N last=S age=A [reason=...]")."""
    args = ["queue", "list"] + (["--dead"] if dead else [])
    out = cli(conf, *args)
    assert out.returncode == 0, "%s exited %d: %s" % (args, out.returncode, out.stderr)
    res = []
    for ln in out.stdout.splitlines():
        f = ln.split(" ")
        if len(f) >= 6 and f[0].isdigit():
            res.append({"seq": int(f[0]), "state": f[1], "route": f[2], "key": f[3],
                        "method": f[4], "path": f[5], "line": ln})
    return res


def wait_dead(conf, n, timeout=5):
    """`queue list --dead` once it holds n dead letters (bounded). The outcome's log line
    can come before the loop iteration's one journal write that carries its state."""
    got = []

    def enough():
        got[:] = queue_list(conf, dead=True)
        return len(got) >= n
    helpers.wait_for(enough, timeout, "%d dead letters in the queue" % n, interval=0.05)
    return list(got)


def queue_show(conf, seq):
    out = cli(conf, "queue", "show", seq)
    assert out.returncode == 0, "queue show %s exited %d: %s" % (seq, out.returncode, out.stderr)
    return out.stdout


def replay_until_drained(conf, rounds=5, timeout=30.0, extra=()):
    """Run `dualwrite replay --once` until it exits 0 (drained); bounded in rounds and time.
    Returns the list of CompletedProcess."""
    runs = []
    deadline = time.monotonic() + timeout
    for _ in range(rounds):
        left = deadline - time.monotonic()
        assert left > 0, "replay not drained within %.0f s: %r" % (timeout, [
            (r.returncode, r.stderr[-2000:]) for r in runs])
        r = cli(conf, "replay", "--once", *extra, timeout=max(left, 1.0))
        runs.append(r)
        if r.returncode == 0:
            return runs
        time.sleep(0.3)
    raise AssertionError("replay did not drain the queue in %d rounds:\n%s" % (
        rounds, "\n---\n".join("exit %d\n%s" % (r.returncode, r.stderr[-3000:]) for r in runs)))


# ---------------------------------------------------------------- the daemon's mirror log

_MIRROR_RE = re.compile(
    r"mirror route=(?P<route>\S+) key=(?P<key>\S+) idem=(?P<idem>\S+) seq=(?P<seq>\d+) "
    r"result=(?P<result>\w+) status=(?P<status>-?\d+) attempt=(?P<attempt>\d+) "
    r"latency_ms=(?P<latency>[\d.]+)(?: reason=(?P<reason>.*))?$")


def mirror_outcomes(d):
    """Every mirror outcome line of daemon d's log, as dicts (in log order)."""
    out = []
    for ln in d.log_text().splitlines():
        m = _MIRROR_RE.search(ln)
        if m:
            g = m.groupdict()
            g["seq"] = int(g["seq"])
            g["status"] = int(g["status"])
            g["line"] = ln
            out.append(g)
    return out


def wait_outcomes(d, pred, n, timeout, what):
    """Wait until at least n mirror outcome lines satisfy pred; returns them."""
    deadline = time.monotonic() + timeout * helpers.SLOW
    while True:
        got = [o for o in mirror_outcomes(d) if pred(o)]
        if len(got) >= n:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("wanted %d mirror outcomes (%s) within %.0f s, got %d; log:\n%s"
                                 % (n, what, timeout, len(got), d.log_text()[-6000:]))
        time.sleep(0.05)


def mirror_total(d, **labels):
    return d.metric("dualwrite_mirror_total", **labels)
