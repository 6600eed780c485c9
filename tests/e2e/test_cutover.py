"""The write cut-over (issue 12, SPEC §7.5): authority "new" on the Gear Operations routes.

Real processes on loopback: a throwaway PostgreSQL (tests/pg.sh), the demo services user-core
(legacy) and gear-ops (new system) from build/dw-demo-backend, build/dualwrited in front with
the routes of conf/gear-ops.conf plus their request/response/reverse blocks, and
build/dualwrite for replay, queue, verify and cutover check.

What must hold: a reload that flips a route to authority "new" is refused while the queue
holds a record (queued or dead) for the new system, and accepted once it is empty; with
authority "new" the client gets gear-ops' answer mapped to the legacy's shape and the legacy
gets the write through the reverse mirror with gear-ops' id; a dead legacy queues the reverse
mirror and replay delivers it; a non-2xx from gear-ops is the client's answer and nothing is
mirrored; flipping back is always accepted and verify then finds both sides equal (the
rollback drill); a write whose answer never came is counted and reported by verify until the
row is equal; `dualwrite cutover check` exits 0 only when every gate holds.
"""

import json
import os
import re
import subprocess
import sys
import time

import pytest

sys.dont_write_bytecode = True

import helpers  # noqa: E402
import mirrorlib as ml  # noqa: E402

NEW_IDS = 1000000000  # gear-ops assigns ids from here (tools/demo/schema/gear-ops.sql)


def cut_routes(authority="legacy", legacy="legacy", target="gear_ops"):
    """conf/gear-ops.conf's write routes with their cut-over blocks, at the given authority."""
    return """
routes = (
  {
    name  = "equipment-create";
    match = "POST /equipment";
    authority = "%(a)s";
    table = "equipment";
    mirror = {
      upstream = "%(t)s"; method = "POST"; path = "/gear-items"; key = "$response.id";
      body = { id = "$response.id"; user_id = "$request.user_id"; name = "$request.name";
               category = "$request.type"; brand = "$request.brand"; status = "active";
               role = "personal"; created_at = "$response.created_at";
               updated_at = "$response.created_at"; };
      delivered = [ 409 ];
    };
    request = {
      method = "POST"; path = "/gear-items";
      body = { user_id = "$request.user_id"; name = "$request.name"; category = "$request.type";
               brand = "$request.brand"; status = "active"; role = "personal"; };
    };
    response = {
      body = { id = "$response.id"; user_id = "$response.user_id"; name = "$response.name";
               type = "$response.category"; brand = "$response.brand";
               created_at = "$response.created_at"; };
    };
    reverse = {
      upstream = "%(l)s"; method = "POST"; path = "/equipment"; key = "$response.id";
      body = { id = "$response.id"; user_id = "$response.user_id"; name = "$response.name";
               type = "$response.category"; brand = "$response.brand";
               created_at = "$response.created_at"; };
      delivered = [ 409 ];
    };
  },
  {
    name  = "equipment-update";
    match = "PUT /equipment/{id}";
    authority = "%(a)s";
    table = "equipment";
    mirror = {
      upstream = "%(t)s"; method = "PUT"; path = "/gear-items/{id}"; key = "$path.id";
      body = { id = "$response.id"; user_id = "$response.user_id"; name = "$response.name";
               category = "$response.type"; brand = "$response.brand"; status = "active";
               role = "personal"; created_at = "$response.created_at"; updated_at = "$now"; };
    };
    request = {
      method = "PUT"; path = "/gear-items/{id}";
      body = { user_id = "$request.user_id"; name = "$request.name"; category = "$request.type";
               brand = "$request.brand"; };
    };
    response = {
      body = { id = "$response.id"; user_id = "$response.user_id"; name = "$response.name";
               type = "$response.category"; brand = "$response.brand";
               created_at = "$response.created_at"; };
    };
    reverse = {
      upstream = "%(l)s"; method = "PUT"; path = "/equipment/{id}"; key = "$path.id";
      body = { user_id = "$response.user_id"; name = "$response.name";
               type = "$response.category"; brand = "$response.brand"; };
    };
  },
  {
    name  = "equipment-delete";
    match = "DELETE /equipment/{id}";
    authority = "%(a)s";
    table = "equipment";
    mirror = { upstream = "%(t)s"; path = "/gear-items/{id}"; key = "$path.id";
               delivered = [ 404 ]; };
    request = { path = "/gear-items/{id}"; };
    reverse = { upstream = "%(l)s"; path = "/equipment/{id}"; key = "$path.id";
                delivered = [ 404 ]; };
  }
);
""" % {"a": authority, "t": target, "l": legacy}


pg = ml.pg_fixture()
svc = ml.gear_services_fixture(truncate=True)


class Cut:
    """A dualwrited in front of user-core mirroring to gear-ops, with the cut-over routes."""

    def __init__(self, dw, svc, pg, authority="legacy", extra="", queue=None):
        self.pg, self.svc, self.extra = pg, svc, extra
        self.d = ml.mirror_daemon(dw, svc["user-core"].url, svc["gear-ops"].url,
                                  cut_routes(authority) + ml.table_map(pg, extra), queue=queue)
        self.conf = self.d.conf_path

    def text(self, authority):
        return (self.d.config_text() + cut_routes(authority)
                + ml.table_map(self.pg, self.extra))

    def flip(self, authority, expect="ok"):
        return self.d.reload(self.text(authority), expect=expect)

    def legacy_row(self, i):
        r = self.pg.rows_json("user_core", "SELECT * FROM old_equipment WHERE id = %d" % i)
        return r[0] if r else None

    def gear_row(self, i):
        r = self.pg.rows_json("gear_ops", "SELECT * FROM gear_items WHERE id = %d" % i)
        return r[0] if r else None

    def outcomes(self, route=None, result=None):
        return [o for o in ml.mirror_outcomes(self.d)
                if (route is None or o["route"] == route)
                and (result is None or o["result"] == result)]


def create(port, name, type_="tent", brand="B"):
    return ml.send_json(port, "POST", "/equipment",
                        {"user_id": 7, "name": name, "type": type_, "brand": brand})


def verify(conf):
    out = ml.cli(conf, "verify", "--table", "equipment", "--json")
    assert out.returncode in (0, 1), out.stderr
    return out.returncode, json.loads(out.stdout)


def check(conf, *extra):
    out = ml.cli(conf, "cutover", "check", *extra)
    assert out.returncode in (0, 1), "cutover check exited %d: %s" % (out.returncode, out.stderr)
    return out


# ------------------------------------------------------------------------------ the gates


def test_flip_refused_while_queued_or_dead_accepted_once_empty(pg, svc, dw):
    c = Cut(dw, svc, pg)
    svc["gear-ops"].fault("down503")
    r = create(c.d.port, "queued one")
    assert r.status == 201, r
    ml.wait_outcomes(c.d, lambda o: o["result"] == "queued", 1, 10, "the mirror queued")

    c.flip("new", expect="failed")
    c.d.wait_log('authority "new" refused: the queue holds 1 queued')
    # the old configuration still serves, legacy first
    r = create(c.d.port, "still legacy")
    assert r.status == 201 and r.json()["id"] < NEW_IDS, r

    # a dead letter refuses it too
    out = ml.cli(c.conf, "replay", "--once", "--max-attempts", "1")
    assert ml.queue_stats(c.conf)["dead"] >= 1, out.stderr
    c.flip("new", expect="failed")
    c.d.wait_log("dead record(s) for \"gear_ops\"")

    svc["gear-ops"].fault("ok")
    assert ml.cli(c.conf, "queue", "requeue", "--all-dead").returncode == 0
    ml.replay_until_drained(c.conf)
    st = ml.queue_stats(c.conf)
    assert st["queued"] == 0 and st["dead"] == 0, st
    c.flip("new")
    st = json.loads(c.d.admin("/status").body)
    assert {r["name"]: r.get("authority") for r in st["routes"]}["equipment-create"] == "new"
    r = create(c.d.port, "first on new")
    assert r.status == 201 and r.json()["id"] >= NEW_IDS, r
    assert c.d.metric("dualwrite_config_reloads_total", result="failed") == 2
    c.d.stop()


def test_flip_refused_while_the_postgres_fleet_queue_holds_records(pg, svc, dw):
    dsn = "host=%s port=%s user=%s dbname=user_core" % (
        pg.env["PGHOST"], pg.env["PGPORT"], pg.env["PGUSER"])
    c = Cut(dw, svc, pg, queue={"postgres": dsn, "table": "dw_cut_q"})
    svc["gear-ops"].fault("down503")
    assert create(c.d.port, "to postgres").status == 201
    helpers.wait_for(lambda: c.d.metric("dualwrite_queue_forwarded_total") == 1, 15,
                     "the failed mirror forwarded to postgres")
    c.flip("new", expect="failed")
    c.d.wait_log('the queue holds 1 queued and 0 dead record(s) for "gear_ops"')
    out = check(c.conf, "--json")
    items = {i["check"]: i for i in json.loads(out.stdout)["checks"]}
    assert items["queue gear_ops"]["ok"] is False, items
    # a daemon started at "new" with that record waiting says the gate would not hold
    c.d.stop()
    c.d.write_config(c.text("new"))
    c.d.start()
    c.d.wait_log('start-up: route "equipment-create": authority "new" refused')
    c.d.write_config(c.text("legacy"))
    c.d.reload(c.text("legacy"))
    svc["gear-ops"].fault("ok")
    ml.replay_until_drained(c.conf)
    c.flip("new")
    c.d.stop()


# ------------------------------------------------------------------- authority "new"


def test_rollback_drill_authority_new_reverse_mirror_flip_back_verify_equal(pg, svc, dw):
    c = Cut(dw, svc, pg)
    before = create(c.d.port, "legacy era")
    assert before.status == 201
    c.flip("new")

    # the client's answer is gear-ops' row in the legacy's shape, with gear-ops' id
    r = create(c.d.port, "tent on new", "tent", "Acme")
    assert r.status == 201, r
    doc = r.json()
    assert doc["id"] >= NEW_IDS and doc["type"] == "tent" and doc["brand"] == "Acme", doc
    assert "category" not in doc and "role" not in doc, doc
    nid = doc["id"]
    assert c.gear_row(nid)["category"] == "tent"
    ml.wait_outcomes(c.d, lambda o: o["route"] == "equipment-create" and o["key"] == str(nid)
                     and o["result"] == "delivered", 1, 10, "the reverse mirror delivered")
    row = c.legacy_row(nid)
    assert row and row["name"] == "tent on new" and row["type"] == "tent", row

    # update and delete go the same way round
    r = ml.send_json(c.d.port, "PUT", "/equipment/%d" % nid, {"name": "renamed", "type": "stove"})
    assert r.status == 200 and r.json()["type"] == "stove", r
    r = ml.send_json(c.d.port, "DELETE", "/equipment/%d" % before.json()["id"])
    assert r.status == 204, r

    # a non-2xx of the new system is the client's answer, and nothing is mirrored
    n_out = len(ml.mirror_outcomes(c.d))
    r = ml.send_json(c.d.port, "PUT", "/equipment/424242", {"name": "nobody"})
    assert r.status == 404, r
    marker = create(c.d.port, "marker")
    assert marker.status == 201
    mk = marker.json()["id"]
    ml.wait_outcomes(c.d, lambda o: o["key"] == str(mk) and o["result"] == "delivered", 1, 10,
                     "the marker's reverse mirror")
    assert not [o for o in ml.mirror_outcomes(c.d)[n_out:] if o["key"] == "424242"]

    # legacy down: the reverse mirror queues, the client is served by gear-ops all the same
    svc["user-core"].fault("down503")
    r = create(c.d.port, "while legacy down")
    assert r.status == 201, r
    qid = r.json()["id"]
    ml.wait_outcomes(c.d, lambda o: o["key"] == str(qid) and o["result"] == "queued", 1, 10,
                     "the reverse mirror queued")
    assert c.legacy_row(qid) is None
    svc["user-core"].fault("ok")
    # gear-ops assigned the id: with the reverse queue not empty the flip back is allowed
    c.flip("legacy")
    ml.replay_until_drained(c.conf)
    assert c.legacy_row(qid)["name"] == "while legacy down"
    assert c.legacy_row(nid)["name"] == "renamed"
    r = create(c.d.port, "back on legacy")
    assert r.status == 201 and r.json()["id"] < NEW_IDS, r
    ml.wait_outcomes(c.d, lambda o: o["key"] == str(r.json()["id"]) and o["result"] ==
                     "delivered", 1, 10, "forward mirror again")
    rc, v = verify(c.conf)
    assert rc == 0 and v["equal"], v
    c.d.stop()


def test_indeterminate_write_counted_reported_by_verify_then_cleared(pg, svc, dw):
    c = Cut(dw, svc, pg)
    r = create(c.d.port, "victim")
    assert r.status == 201
    vid = r.json()["id"]
    ml.wait_outcomes(c.d, lambda o: o["key"] == str(vid) and o["result"] == "delivered", 1, 10,
                     "the forward mirror")
    c.flip("new")
    # gear-ops applies the write at once and answers after the daemon's 2 s timeout
    svc["gear-ops"].fault("slow", delay_ms=3000)
    r = ml.send_json(c.d.port, "PUT", "/equipment/%d" % vid, {"name": "maybe"})
    assert r.status == 504, r
    assert c.d.metric("dualwrite_indeterminate_total", route="equipment-update") == 1
    svc["gear-ops"].fault("ok")
    helpers.wait_for(lambda: (c.gear_row(vid) or {}).get("name") == "maybe", 10,
                     "gear-ops to apply the slow write")
    rc, v = verify(c.conf)
    assert rc == 1 and not v["equal"], v
    kinds = {d["key"]: d for d in v["differences"]}
    assert kinds[str(vid)]["kind"] == "indeterminate", v
    assert kinds[str(vid)]["was"] == "changed", v

    # the client repeats its write: both sides equal, and the next verify clears the key
    r = ml.send_json(c.d.port, "PUT", "/equipment/%d" % vid, {"name": "maybe"})
    assert r.status == 200, r
    ml.wait_outcomes(c.d, lambda o: o["key"] == str(vid) and o["route"] == "equipment-update"
                     and o["result"] == "delivered", 1, 10, "the reverse mirror")
    rc, v = verify(c.conf)
    assert rc == 0 and v["equal"] and v["differences"] == [], v
    with open(os.path.join(c.d.queue_dir, "indeterminate.jsonl")) as f:
        assert '"clear":true' in f.read()
    c.d.stop()


def test_new_system_down_502_and_nothing_mirrored(pg, svc, dw):
    c = Cut(dw, svc, pg)
    c.flip("new")
    before = ml.queue_stats(c.conf)["next_seq"]
    svc["gear-ops"].proc.kill()
    svc["gear-ops"].proc.wait(timeout=10)
    r = create(c.d.port, "nowhere")
    assert r.status == 502, r
    # the journal is written before any answer: had anything been mirrored, it would be there
    assert ml.queue_stats(c.conf)["next_seq"] == before
    assert c.d.metric("dualwrite_indeterminate_total", route="equipment-create") == 0
    assert c.pg.sql("user_core", "SELECT count(*) FROM old_equipment")[0][0] == "0"
    c.d.stop()


def test_reverse_mirror_survives_sigkill(pg, svc, dw):
    c = Cut(dw, svc, pg)
    c.flip("new")
    svc["user-core"].fault("down503")
    ids = []
    for i in range(5):
        r = create(c.d.port, "kill %d" % i)
        assert r.status == 201, r
        ids.append(r.json()["id"])
    c.d.kill()  # SIGKILL right after the last answer: its reverse mirror may still be pending
    svc["user-core"].fault("ok")
    c.d.start()  # what was pending is recovered as queued
    assert ml.queue_stats(c.conf)["queued"] == len(ids)
    # starting at "new" is no flip, but the daemon says the gate would not hold (the queue
    # waits for the legacy here, not for gear_ops: nothing to say)
    assert "start-up: route" not in c.d.log_text()
    ml.replay_until_drained(c.conf)
    for i in ids:
        assert c.legacy_row(i) is not None, i
    st = ml.queue_stats(c.conf)
    assert st["queued"] == 0 and st["dead"] == 0 and st["pending"] == 0, st
    c.d.stop()


def test_flip_back_under_writes_zero_failures_every_write_in_legacy(pg, svc, dw):
    """Writers run through both flips; not one request fails, and after replay every row
    acknowledged to a client (on either authority) is in the legacy, counted."""
    import threading
    c = Cut(dw, svc, pg)
    c.flip("new")
    acked, failures, stop = [], [], threading.Event()
    lock = threading.Lock()

    def writer(w):
        n = 0
        while not stop.is_set() and n < 400:
            n += 1
            try:
                r = create(c.d.port, "w%d-%d" % (w, n))
                if r.status != 201:
                    failures.append(r)
                else:
                    with lock:
                        acked.append(r.json()["id"])
            except Exception as e:  # noqa: BLE001 - reported below
                failures.append(e)

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(3)]
    for t in threads:
        t.start()
    helpers.wait_for(lambda: len(acked) >= 30, 20, "writes on authority new")
    c.flip("legacy")
    on_new = [i for i in acked if i >= NEW_IDS]
    helpers.wait_for(lambda: len([i for i in acked if i < NEW_IDS]) >= 30, 20,
                     "writes on authority legacy")
    stop.set()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert not failures, failures[:5]
    assert on_new and len(acked) > len(on_new)
    ml.replay_until_drained(c.conf)
    got = {int(r[0]) for r in c.pg.sql("user_core", "SELECT id FROM old_equipment")}
    missing = [i for i in acked if i not in got]
    assert not missing, "%d of %d acknowledged writes missing in the legacy" % (
        len(missing), len(acked))
    helpers.wait_for(lambda: ml.queue_stats(c.conf)["pending"] == 0, 10, "mirrors settled")
    ml.replay_until_drained(c.conf)
    rc, v = verify(c.conf)
    assert rc == 0 and v["equal"], v
    c.d.stop()


# --------------------------------------------------------------------- cutover check


def test_cutover_check_exit_codes_and_json(pg, svc, dw):
    c = Cut(dw, svc, pg, extra="cutover = { verified_within_h = 1; reads_at_100_h = 0; };")
    # never verified: not ready
    out = check(c.conf, "--json")
    assert out.returncode == 1, out.stdout
    doc = json.loads(out.stdout)
    assert doc["ok"] is False
    items = {i["check"]: i for i in doc["checks"]}
    assert items["verify equipment"]["ok"] is False, doc
    assert items["queue gear_ops"]["ok"] is True, doc

    rc, _ = verify(c.conf)
    assert rc == 0
    out = check(c.conf)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ready" in out.stdout

    # a queued record for gear_ops holds it back
    svc["gear-ops"].fault("down503")
    assert create(c.d.port, "queued").status == 201
    ml.wait_outcomes(c.d, lambda o: o["result"] == "queued", 1, 10, "the mirror queued")
    out = check(c.conf, "--json")
    assert out.returncode == 1
    items = {i["check"]: i for i in json.loads(out.stdout)["checks"]}
    assert items["queue gear_ops"]["ok"] is False, items

    svc["gear-ops"].fault("ok")
    ml.replay_until_drained(c.conf)
    # a tripped guard (the guards module's latch file) holds it back too
    with open(os.path.join(c.d.queue_dir, "guards.json"), "w") as f:
        json.dump({"version": 1, "upstreams": {"gear_ops": {
            "state": "tripped", "reason": "read_error_rate", "measured": 7.5, "limit": 1,
            "sample": 80, "window_s": 60, "since_ms": int(time.time() * 1000),
            "detail": "tripped: read_error_rate 7.50 > 1.00"}}}, f)
    # the daemon takes the latch from the file within a tick (its guards, in memory)
    c.d.wait_log('guard: upstream "gear_ops" (latch file): tripped')
    out = check(c.conf, "--json")
    assert out.returncode == 1
    items = {i["check"]: i for i in json.loads(out.stdout)["checks"]}
    assert items["guards gear_ops"]["ok"] is False, items
    c.flip("new", expect="failed")
    c.d.wait_log("a guard of \"gear_ops\" is tripped: read_error_rate")
    os.unlink(os.path.join(c.d.queue_dir, "guards.json"))
    assert verify(c.conf)[0] == 0
    assert check(c.conf).returncode == 0
    c.d.stop()


# ------------------------------------------------------------------------ seed configs


@pytest.mark.parametrize("name", ["gear-ops.conf", "iot-v2.conf"])
def test_seed_configs_carry_the_cut_over_blocks(name, tmp_path):
    """Every write route of the shipped configs has its request/reverse blocks, so the flip
    is one word: both the file as shipped (authority "legacy") and the file with every
    route at "new" pass `dualwrited -t`."""
    src = os.path.join(ml.ROOT, "conf", name)
    with open(src) as f:
        text = f.read()
    mirrors = len(re.findall(r"^\s*mirror = \{", text, re.M))
    legacy = re.findall(r'^\s*authority = "legacy";', text, re.M)
    assert mirrors and len(legacy) == mirrors, (mirrors, len(legacy))
    assert len(re.findall(r"^\s*reverse\s*= \{", text, re.M)) == mirrors
    flipped = tmp_path / name
    flipped.write_text(text.replace('authority = "legacy";', 'authority = "new";'))
    for path in (src, str(flipped)):
        out = subprocess.run([helpers.daemon_binary(), "-t", "-c", path], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0 and "configuration ok" in out.stdout, (path, out.stderr)


def test_legacy_authority_timeout_is_indeterminate_too(pg, svc, dw):
    """Authority "legacy": the legacy's answer never came, so the write may be there and
    nothing was mirrored; verify reports the key until it is equal."""
    c = Cut(dw, svc, pg)
    r = create(c.d.port, "victim")
    assert r.status == 201
    vid = r.json()["id"]
    ml.wait_outcomes(c.d, lambda o: o["key"] == str(vid) and o["result"] == "delivered", 1, 10,
                     "the forward mirror")
    c.d.reload(c.d.config_text().replace('"timeout_ms": 5000', '"timeout_ms": 1000')
               .replace("timeout_ms = 5000", "timeout_ms = 1000")
               + cut_routes("legacy") + ml.table_map(pg))
    svc["user-core"].fault("slow", delay_ms=2000)
    r = ml.send_json(c.d.port, "PUT", "/equipment/%d" % vid, {"name": "maybe"})
    assert r.status == 504, r
    assert c.d.metric("dualwrite_indeterminate_total", route="equipment-update") == 1
    svc["user-core"].fault("ok")
    helpers.wait_for(lambda: (c.legacy_row(vid) or {}).get("name") == "maybe", 10,
                     "user-core to apply the slow write")
    rc, v = verify(c.conf)
    assert rc == 1 and {d["key"]: d["kind"] for d in v["differences"]}[str(vid)] == \
        "indeterminate", v
    c.d.stop()
