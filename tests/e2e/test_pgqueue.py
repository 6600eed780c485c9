"""End-to-end tests of the shared PostgreSQL replay queue (queue.postgres).

A module-scoped throwaway cluster (tests/pg.sh); each test uses its own table. The mirror
target is a recording server in this file that answers 503 while "down" and 201 while "up",
recording (idempotency key, ordering key, value) for every accepted write; values are numbered
per key, so per-key order is checkable. What is covered: failed mirrors move from the daemon's
spool into the table and `dualwrite replay` delivers them; two replay workers (separate
processes, separate local spools, one table) deliver every row exactly once and each key in
order; PostgreSQL down when mirrors fail keeps them in the local spool (log line, metric), and
they are forwarded when it is back; replay drains both places and never lets a local write of
a key overtake that key's rows in the table; a new write of a key with queued rows in the table
queues behind them even when the target is up.
"""

import json
import os
import random
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

import helpers
from backends import Reply
from helpers import request, wait_for

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("DW_BUILD", "build"))
if not BUILD.is_absolute():
    BUILD = ROOT / BUILD
DW = BUILD / "dualwrite"
DB = "dwq"

ROUTES = [{
    "name": "item-put",
    "match": "PUT /items/{id}",
    "mirror": {"upstream": "target", "path": "/items/{id}", "key": "$path.id",
               "body": {"id": "$path.id", "v": "$request.v"}},
}]


# ---------------------------------------------------------------- fixtures and helpers


class Cluster:
    def __init__(self, d):
        self.dir = d
        self.env = dict(os.environ)

    def start(self):
        env = dict(os.environ, PG_DATABASES=DB)
        out = subprocess.run([str(ROOT / "tests/pg.sh"), "start", str(self.dir)], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        for k, v in re.findall(r"(PG[A-Z]+)=('[^']*'|\S+)", out.stdout):
            self.env[k] = v.strip("'")
        self.env["PGDATABASE"] = DB

    def stop(self):
        out = subprocess.run([str(ROOT / "tests/pg.sh"), "stop", str(self.dir)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr

    @property
    def dsn(self):
        e = self.env
        return "host=%s port=%s user=%s dbname=%s" % (e["PGHOST"], e["PGPORT"],
                                                       e.get("PGUSER", "postgres"), DB)

    def sql(self, text):
        out = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1",
                              "-d", DB], input=text, env=self.env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [ln.split("|") for ln in out.stdout.splitlines() if ln != ""]

    def counts(self, table):
        rows = self.sql("SELECT state, count(*) FROM %s GROUP BY state" % table)
        return {s: int(n) for s, n in rows}


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    if not DW.exists():
        pytest.fail(f"{DW} not built (set DW_BUILD to the build directory)")
    d = tmp_path_factory.mktemp("pgq")
    os.chmod(d, 0o755)
    c = Cluster(d)
    c.start()
    try:
        yield c
    finally:
        subprocess.run([str(ROOT / "tests/pg.sh"), "stop", str(d)], capture_output=True,
                       timeout=120)


class Target:
    """The mirror target: 503 while down, 201 (after `delay`) while up; records what it took."""

    def __init__(self, make_backend):
        self.up = False
        self.delay = 0.0
        self.lock = threading.Lock()
        self.got = []  # (idempotency key, ordering key, value)
        self.backend = make_backend(self.handle, name="target")

    def handle(self, req):
        if req.method == "GET":  # a read route's read (test_a_key_queued_..._pins_reads)
            return Reply(200, b'{"side": "new"}', [("Content-Type", "application/json")])
        if not self.up:
            return Reply(503, b'{"error": "down"}', [("Content-Type", "application/json")])
        if self.delay:
            time.sleep(self.delay)
        body = json.loads(req.body)
        with self.lock:
            self.got.append((req.header("Idempotency-Key"), body["id"], body["v"]))
        return Reply(201, b"{}", [("Content-Type", "application/json")])

    def taken(self):
        with self.lock:
            return list(self.got)

    def values(self, key):
        return [v for _, k, v in self.taken() if k == key]


def check_exactly_once_in_order(got):
    idems = [i for i, _, _ in got]
    dups = {i for i in idems if idems.count(i) > 1}
    assert not dups, "delivered more than once: %r" % sorted(dups)
    per_key = {}
    for _, k, v in got:
        per_key.setdefault(k, []).append(v)
    for k, vs in per_key.items():
        assert vs == sorted(vs), "key %s delivered out of order: %r" % (k, vs)
    return per_key


def start_daemon(dw, make_backend, pg, tmp_path, table, name="d1", dsn=None, routes=None):
    legacy = make_backend(name="legacy")
    legacy.reply(200, b'{"ok": true}', [("Content-Type", "application/json")])
    target = Target(make_backend)
    queue = {"path": str(tmp_path / (name + "-queue")), "postgres": dsn or pg.dsn,
             "table": table}
    d = dw({"legacy": {"url": legacy.url, "timeout_ms": 5000},
            "target": {"url": target.backend.url, "timeout_ms": 2000}},
           extra={"routes": routes or ROUTES, "queue": queue}, name=name)
    return d, target


def put(d, key, v):
    r = request(d.port, "PUT", "/items/%s" % key, [("Content-Type", "application/json")],
                json.dumps({"v": v}).encode())
    assert r.status == 200, r


def conf_with_queue(d, tmp_path, name, path):
    """A copy of the daemon's configuration with another local queue path (another host)."""
    s = d.settings()
    s["queue"] = dict(s["queue"], path=str(path))
    p = tmp_path / (name + ".conf")
    p.write_text(helpers.libconfig_text(s))
    return p


def replay(conf, *args, timeout=60):
    return subprocess.run([str(DW), "replay", "-c", str(conf), *args], capture_output=True,
                          text=True, timeout=timeout)


def queue_stats(conf):
    out = subprocess.run([str(DW), "queue", "-c", str(conf), "stats"], capture_output=True,
                         text=True, timeout=30)
    return out


def local_queued(conf):
    out = queue_stats(conf)
    m = re.search(r"^queued\s+(\d+)$", out.stdout, re.M)
    assert m, out.stdout + out.stderr
    return int(m.group(1))


# ---------------------------------------------------------------- tests


def test_failed_mirrors_go_to_postgres_and_replay_delivers_them(dw, make_backend, pg, tmp_path):
    table = "q_basic"
    d, target = start_daemon(dw, make_backend, pg, tmp_path, table)
    for v in range(1, 4):
        for key in ("1", "2"):
            put(d, key, v)
    wait_for(lambda: pg.counts(table).get("queued") == 6, 10, "6 queued rows in postgres")
    wait_for(lambda: d.metric("dualwrite_queue_forwarded_total") == 6, 5,
             "dualwrite_queue_forwarded_total 6")
    assert d.metric("dualwrite_queue_postgres_up") == 1
    wait_for(lambda: d.metric("dualwrite_queue_depth") == 0, 5, "the local queue to empty")
    # rows keep the write's fields and the per-key journal order
    rows = pg.sql("SELECT key, convert_from(body, 'UTF8'), route, method, path, sidecar "
                  "FROM %s ORDER BY id" % table)
    assert [json.loads(b)["v"] for k, b, *_ in rows if k == "1"] == [1, 2, 3]
    assert all(r[2] == "item-put" and r[3] == "PUT" and r[4].startswith("/items/") and
               r[5].endswith(":%d" % d.pid) for r in rows), rows

    st = queue_stats(d.conf_path)
    assert st.returncode == 0, st.stderr
    assert re.search(r"^postgres q_basic: queued 6 ", st.stdout, re.M), st.stdout
    assert re.search(r"^queued\s+0$", st.stdout, re.M), st.stdout

    # a dry run lists what may go now (the oldest row of each key) and changes nothing
    dry = replay(d.conf_path, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert len(re.findall(r"^would send pg id=\d+ PUT ", dry.stdout, re.M)) == 2, dry.stdout
    assert "6 in the postgres queue" in dry.stderr, dry.stderr
    assert pg.counts(table) == {"queued": 6}

    target.up = True
    out = replay(d.conf_path)
    assert out.returncode == 0, out.stderr
    per_key = check_exactly_once_in_order(target.taken())
    assert per_key == {"1": [1, 2, 3], "2": [1, 2, 3]}, per_key
    assert pg.counts(table) == {"delivered": 6}
    assert "remaining 0 local and 0 in postgres" in out.stderr, out.stderr


def test_two_workers_deliver_each_row_once_in_key_order(dw, make_backend, pg, tmp_path):
    table = "q_workers"
    d, target = start_daemon(dw, make_backend, pg, tmp_path, table)
    # More keys than one claim takes (64), writes of the keys interleaved at random, so the
    # two workers' claims overlap in keys: without the per-key rule a worker would send a
    # key's later row while the other still holds an earlier one.
    keys = ["k%d" % i for i in range(80)]
    rng = random.Random(4)
    todo = [k for k in keys for _ in range(3)]
    rng.shuffle(todo)
    nextv = {k: 1 for k in keys}
    n = 0
    for key in todo:
        put(d, key, nextv[key])
        nextv[key] += 1
        n += 1
    wait_for(lambda: pg.counts(table).get("queued") == n, 15, "%d queued rows" % n)
    d.stop()
    d.finished = True
    assert d.rc == 0

    target.up = True
    target.delay = 0.002
    confs = [conf_with_queue(d, tmp_path, "w%d" % i, tmp_path / ("host%d-queue" % i))
             for i in range(2)]
    procs = [subprocess.Popen([str(DW), "replay", "-c", str(c)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in confs]
    outs = []
    for p in procs:
        try:
            o, e = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            raise
        outs.append((p.returncode, e))
    for rc, e in outs:
        assert rc == 0, e
    got = target.taken()
    assert len(got) == n, "delivered %d of %d" % (len(got), n)
    per_key = check_exactly_once_in_order(got)
    assert per_key == {k: [1, 2, 3] for k in keys}, per_key
    assert pg.counts(table) == {"delivered": n}
    done = [int(re.search(r"delivered (\d+),", e).group(1)) for _, e in outs]
    assert sum(done) == n, done


def test_postgres_down_keeps_mirrors_local_then_forwards_and_replay_drains_both(
        dw, make_backend, pg, tmp_path):
    table = "q_outage"
    pg.sql("SELECT 1")  # the cluster is up before the outage
    pg.stop()
    try:
        d, target = start_daemon(dw, make_backend, pg, tmp_path, table)
        put(d, "a", 1)
        put(d, "b", 1)
        put(d, "a", 2)
        wait_for(lambda: d.metric("dualwrite_queue_depth") == 3, 10, "3 writes queued locally")
        wait_for(lambda: "postgres unreachable, keeping failed mirrors in the local spool"
                 in d.log_text(), 10, "the outage in the log")
        assert d.metric("dualwrite_queue_postgres_up") == 0
        assert d.log_text().count("postgres unreachable") == 1, d.log_text()
    finally:
        pg.start()
    # back: the local records move to the table, in order
    wait_for(lambda: d.metric("dualwrite_queue_forwarded_total") == 3, 15,
             "the 3 local writes forwarded")
    assert d.metric("dualwrite_queue_postgres_up") == 1
    wait_for(lambda: d.metric("dualwrite_queue_depth") == 0, 5, "the local queue to empty")
    assert "postgres reachable again" in d.log_text()
    assert pg.counts(table) == {"queued": 3}

    # A second outage: key "a" has rows in the table, so its new write queues locally behind
    # them (the forwarder's last known set); key "c" is new and queues because the target fails.
    pg.stop()
    try:
        wait_for(lambda: d.metric("dualwrite_queue_postgres_up") == 0, 10, "postgres_up 0")
        put(d, "a", 3)
        put(d, "c", 1)
        wait_for(lambda: d.metric("dualwrite_queue_depth") == 2, 10, "2 writes queued locally")
        d.stop()
        d.finished = True
        assert d.rc == 0, d.log_text()

        # replay while postgres is down: only the local spool, and "a" is held
        target.up = True
        out = replay(d.conf_path, "--once")
        assert out.returncode == 1, out.stderr
        assert "postgres unreachable, draining the local spool only" in out.stderr, out.stderr
        assert re.search(r"key=a held", out.stderr), out.stderr
        assert [(k, v) for _, k, v in target.taken()] == [("c", 1)]
    finally:
        pg.start()

    # postgres back: replay moves the local "a" write into the table behind its rows and
    # drains everything
    out = replay(d.conf_path)
    assert out.returncode == 0, out.stderr
    assert "moved 1 local record into the postgres queue" in out.stderr, out.stderr
    per_key = check_exactly_once_in_order(target.taken())
    assert per_key == {"a": [1, 2, 3], "b": [1], "c": [1]}, per_key
    assert pg.counts(table) == {"delivered": 4}
    assert local_queued(d.conf_path) == 0


def test_new_write_of_a_key_queued_in_postgres_waits_behind_it(dw, make_backend, pg, tmp_path):
    table = "q_behind"
    d, target = start_daemon(dw, make_backend, pg, tmp_path, table)
    put(d, "7", 1)
    wait_for(lambda: pg.counts(table).get("queued") == 1, 10, "the failed write in postgres")
    target.up = True
    put(d, "8", 1)  # another key goes straight through
    wait_for(lambda: [k for _, k, _ in target.taken()] == ["8"], 5, "key 8 delivered directly")
    put(d, "7", 2)
    wait_for(lambda: pg.counts(table).get("queued") == 2, 10,
             "the second write of key 7 queued behind the first in postgres")
    assert target.values("7") == []
    assert PGQ_BEHIND in "\n".join(r[0] for r in pg.sql(
        "SELECT coalesce(last_error, '') FROM %s WHERE key = '7' ORDER BY id" % table))
    out = replay(d.conf_path)
    assert out.returncode == 0, out.stderr
    assert target.values("7") == [1, 2]
    check_exactly_once_in_order(target.taken())
    # drained: the key flows directly again once the forwarder's set has caught up
    time.sleep(1.2)
    put(d, "7", 3)
    wait_for(lambda: target.values("7") == [1, 2, 3], 5, "key 7 delivered directly again")
    assert pg.counts(table) == {"delivered": 2}


PGQ_BEHIND = "key has earlier writes in the postgres queue"


READ_ROUTES = ROUTES + [{
    "name": "item-get",
    "match": "GET /items/{id}",
    "read": {"upstream": "target", "weight": 100, "sticky": "$path.id"},
}]


def read_side(d, key):
    r = request(d.port, "GET", "/items/%s" % key, [("Connection", "close")])
    assert r.status == 200, r
    return "new" if json.loads(r.body) == {"side": "new"} else "legacy"


def test_a_key_queued_in_postgres_by_another_sidecar_pins_reads_here(dw, make_backend, pg,
                                                                     tmp_path):
    """Read-your-writes across a fleet (SPEC §7.2): sidecar B serves a key's reads from the
    legacy while a write of it, acknowledged through sidecar A, waits in the shared table
    (B's forwarder refreshes the table's queued keys every 500 ms)."""
    table = "q_ryw"
    a, target_a = start_daemon(dw, make_backend, pg, tmp_path, table, name="a",
                               routes=READ_ROUTES)
    b, target_b = start_daemon(dw, make_backend, pg, tmp_path, table, name="b",
                               routes=READ_ROUTES)
    assert read_side(b, "7") == "new"
    put(a, "7", 1)  # the target is down: queued in a's spool, then forwarded to postgres
    wait_for(lambda: pg.counts(table).get("queued") == 1, 10, "the failed write in postgres")
    wait_for(lambda: read_side(b, "7") == "legacy", 5, "b pins key 7")
    assert b.metric("dualwrite_read_total", route="item-get", side="legacy",
                    reason="pinned") >= 1
    assert read_side(b, "8") == "new"
    target_a.up = True
    out = replay(a.conf_path)
    assert out.returncode == 0, out.stderr
    assert pg.counts(table) == {"delivered": 1}
    wait_for(lambda: read_side(b, "7") == "new", 5, "b gives key 7 back once delivered")
