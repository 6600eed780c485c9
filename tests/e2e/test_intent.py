"""Write-ahead intents (SPEC §5 G2, §7.5): a mirrored write is journaled before it goes to
the legacy, so a daemon killed (or stopped past its drain deadline) while the legacy holds the
write leaves a trace the next start settles.

Real processes on loopback: Python backends as the legacy (one that holds a write until the
test lets it answer 2xx) and the new system, build/dualwrited in front with the routes of
conf/gear-ops.conf, build/dualwrite for the queue; for verify, a throwaway PostgreSQL
(tests/pg.sh) with the demo services user-core and gear-ops.

What must hold: after the restart each such write is a dead letter with the reason "dualwrited
stopped before the legacy answered: outcome unknown" (one that was never built: requeue
refuses it, purge clears it), recorded as indeterminate with its key when the request gives it
(a create's key is unknown and its dead letter says so), and counted; `dualwrite verify`
reports the key and `verify --repair` makes the row equal.
"""

import json
import os
import signal
import sys
import threading

sys.dont_write_bytecode = True

import helpers  # noqa: E402
import mirrorlib as ml  # noqa: E402
from backends import Reply  # noqa: E402

REASON = "dualwrited stopped before the legacy answered: outcome unknown"
TEST_BOUND_S = 120


_bounded = helpers.bounded(TEST_BOUND_S)


class HeldLegacy:
    """A legacy that holds every write until release(), then answers 2xx (it has committed
    the write: the answer just never reaches a daemon that is gone)."""

    def __init__(self, make_backend):
        self.go = threading.Event()
        self.be = make_backend(self.handle, name="legacy")
        self.url = self.be.url

    def handle(self, req):
        if req.method in ("POST", "PUT"):
            self.go.wait(30)
            doc = json.loads(req.body or b"{}")
            doc.setdefault("id", 501)
            doc["created_at"] = "2026-01-01T00:00:00Z"
            return Reply(201 if req.method == "POST" else 200, json.dumps(doc).encode(),
                         [("Content-Type", "application/json")])
        return Reply(404, b"{}", [("Content-Type", "application/json")])

    def release(self):
        self.go.set()


def send_async(port, method, path, doc):
    """Send a write on its own thread (its answer never comes: the daemon dies)."""
    t = threading.Thread(target=lambda: _swallow(port, method, path, doc), daemon=True)
    t.start()
    return t


def _swallow(port, method, path, doc):
    try:
        ml.send_json(port, method, path, doc, timeout=20)
    except Exception:  # noqa: BLE001 - the daemon was killed under it, as intended
        pass


def indeterminate_lines(d):
    path = os.path.join(d.queue_dir, "indeterminate.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def test_sigkill_while_legacy_holds_writes_dead_letters_them(dw, make_backend):
    legacy = HeldLegacy(make_backend)
    target = make_backend(lambda req: Reply(200, b'{"ok": true}',
                                            [("Content-Type", "application/json")]),
                          name="target")
    d = ml.mirror_daemon(dw, legacy.url, target.url, ml.gear_routes())
    send_async(d.port, "PUT", "/equipment/42", {"name": "renamed", "user_id": 7, "type": "tent",
                                               "brand": "B"})
    send_async(d.port, "POST", "/equipment", {"name": "new one", "user_id": 7, "type": "tent",
                                             "brand": "B"})
    legacy.be.wait_requests(2, timeout=10)  # both writes are at the legacy now
    d.kill()
    legacy.release()  # the legacy commits both and answers a dead socket
    d.start()

    dead = {r["route"]: r for r in ml.queue_list(d.conf_path, dead=True)}
    assert set(dead) == {"equipment-update", "equipment-create"}, dead
    upd, cre = dead["equipment-update"], dead["equipment-create"]
    assert upd["key"] == "42" and REASON in upd["line"], upd
    assert cre["key"] == "-" and REASON in cre["line"] and "key unknown" in cre["line"], cre
    d.wait_log("recorded as indeterminate", count=2)
    assert d.metric("dualwrite_indeterminate_total", route="equipment-update") == 1
    assert d.metric("dualwrite_indeterminate_total", route="equipment-create") == 1
    ind = {e["route"]: e for e in indeterminate_lines(d)}
    assert ind["equipment-update"]["key"] == "42", ind
    assert ind["equipment-create"].get("key") is None, ind
    # nothing was mirrored, and a dead letter that was never built cannot be requeued
    assert not target.requests
    out = ml.cli(d.conf_path, "queue", "requeue", str(upd["seq"]))
    assert out.returncode != 0, out.stdout + out.stderr
    # a second start settles nothing again
    d.stop()
    d.start()
    assert len(ml.queue_list(d.conf_path, dead=True)) == 2
    assert d.metric("dualwrite_indeterminate_total", route="equipment-update") == 0
    out = ml.cli(d.conf_path, "queue", "purge", "--dead")
    assert out.returncode == 0, out.stdout + out.stderr
    assert ml.queue_list(d.conf_path, dead=True) == []
    # and writes go on as before: an answered write is mirrored, its intent closed
    r = ml.send_json(d.port, "PUT", "/equipment/43", {"name": "x"})
    assert r.status == 200, r
    ml.wait_outcomes(d, lambda o: o["key"] == "43" and o["result"] == "delivered", 1, 10,
                     "the mirror of a write after the restart")
    d.stop()
    d.start()
    assert ml.queue_list(d.conf_path, dead=True) == []
    d.stop()


def test_drain_deadline_leaves_write_of_unknown_outcome_dead_lettered(dw, make_backend):
    """SIGTERM while the legacy holds a write past drain_timeout_ms: the exchange is cut
    without a crash, the outcome is just as unknown, and the next start says so."""
    legacy = HeldLegacy(make_backend)
    target = make_backend(lambda req: Reply(200, b"{}", [("Content-Type", "application/json")]),
                          name="target")
    d = ml.mirror_daemon(dw, legacy.url, target.url, ml.gear_routes(),
                         limits={"drain_timeout_ms": 500})
    send_async(d.port, "PUT", "/equipment/7", {"name": "slow"})
    legacy.be.wait_requests(1, timeout=10)
    d.signal(signal.SIGTERM)
    assert d.wait_exit(10) is not None
    legacy.release()
    d.start()
    dead = ml.queue_list(d.conf_path, dead=True)
    assert [(r["route"], r["key"]) for r in dead] == [("equipment-update", "7")], dead
    assert REASON in dead[0]["line"], dead
    assert d.metric("dualwrite_indeterminate_total", route="equipment-update") == 1
    d.stop()


# ------------------------------------------------------------------------ verify (PostgreSQL)


pg = ml.pg_fixture()
svc = ml.gear_services_fixture(truncate=True)


def test_verify_reports_killed_write_and_repair_fixes_it(pg, svc, dw):
    import test_cutover as tc
    c = tc.Cut(dw, svc, pg)
    r = tc.create(c.d.port, "victim")
    assert r.status == 201
    vid = r.json()["id"]
    ml.wait_outcomes(c.d, lambda o: o["key"] == str(vid) and o["result"] == "delivered", 1, 10,
                     "the mirror of the create")
    # user-core applies the write at once and answers 3 s later: the daemon dies meanwhile
    svc["user-core"].fault("slow", delay_ms=3000)
    send_async(c.d.port, "PUT", "/equipment/%d" % vid, {"name": "maybe"})
    helpers.wait_for(lambda: (c.legacy_row(vid) or {}).get("name") == "maybe", 10,
                     "user-core to apply the write")
    c.d.kill()
    svc["user-core"].fault("ok")
    c.d.start()
    dead = ml.queue_list(c.conf, dead=True)
    assert [(x["route"], x["key"]) for x in dead] == [("equipment-update", str(vid))], dead
    rc, v = tc.verify(c.conf)
    assert rc == 1, v
    kinds = {x["key"]: x for x in v["differences"]}
    assert kinds[str(vid)]["kind"] == "indeterminate", v
    out = ml.cli(c.conf, "verify", "--table", "equipment", "--repair")
    assert out.returncode in (0, 1), out.stderr
    assert (c.gear_row(vid) or {}).get("name") == "maybe"
    rc, v = tc.verify(c.conf)
    assert rc == 0 and v["equal"], v
    assert ml.cli(c.conf, "queue", "purge", "--dead").returncode == 0
    assert ml.queue_stats(c.conf)["dead"] == 0
    c.d.stop()


def test_authority_new_killed_write_is_dead_lettered_for_the_reverse(pg, svc, dw):
    """Authority "new": the write goes to gear-ops first; killed while gear-ops holds it, the
    next start dead-letters the reverse mirror's write (towards the legacy) as of unknown
    outcome, and verify reports the key."""
    import test_cutover as tc
    c = tc.Cut(dw, svc, pg)
    r = tc.create(c.d.port, "victim")
    assert r.status == 201
    vid = r.json()["id"]
    ml.wait_outcomes(c.d, lambda o: o["key"] == str(vid) and o["result"] == "delivered", 1, 10,
                     "the mirror of the create")
    c.flip("new")
    svc["gear-ops"].fault("slow", delay_ms=3000)
    send_async(c.d.port, "PUT", "/equipment/%d" % vid, {"name": "maybe"})
    helpers.wait_for(lambda: (c.gear_row(vid) or {}).get("name") == "maybe", 10,
                     "gear-ops to apply the write")
    c.d.kill()
    svc["gear-ops"].fault("ok")
    c.d.start()
    dead = ml.queue_list(c.conf, dead=True)
    assert [(x["route"], x["key"]) for x in dead] == [("equipment-update", str(vid))], dead
    assert "dualwrited stopped before the new system answered: outcome unknown" in \
        dead[0]["line"], dead
    assert c.d.metric("dualwrite_indeterminate_total", route="equipment-update") == 1
    rc, v = tc.verify(c.conf)
    assert rc == 1 and {x["key"]: x["kind"] for x in v["differences"]}[str(vid)] == \
        "indeterminate", v
    c.d.stop()
