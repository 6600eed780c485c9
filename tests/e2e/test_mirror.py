"""End-to-end tests of dual-writing (issue 3's acceptance tests; SPEC §3-§5, G1-G4).

The real daemon (build/dualwrited) sits in front of the real demo services (build/dw-demo-backend:
user-core -> gear-ops, iot-v1 -> iot-v2) on a throwaway PostgreSQL cluster (tests/pg.sh), all
on 127.0.0.1; the real CLI (build/dualwrite) replays and inspects the queue. Where a test must
see the exact bytes of the mirrored request, or script the target's answers, the mirror target
(or the legacy) is a recording raw-socket Backend (backends.py) instead.

The cluster and the four services are started once per module; each test starts from empty
tables and healthy services. Daemons come from conftest's `dw` factory, so every test ends with
the daemon's clean SIGTERM stop (exit 0, no sanitizer report, no "lost" line). Each test is
bounded by an alarm; every loop and wait is bounded in count and time.
"""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

sys.dont_write_bytecode = True

import helpers  # noqa: E402
import mirrorlib as ml  # noqa: E402
from backends import Reply  # noqa: E402

TEST_BOUND_S = 120


_bounded = helpers.bounded(TEST_BOUND_S)


pg = ml.pg_fixture()


@pytest.fixture(scope="module")
def services(pg, tmp_path_factory):
    with ml.demo_services(pg, tmp_path_factory.mktemp("svc"), ml.SERVICE_DB) as started:
        yield started


RESET_SQL = {
    "user_core": "TRUNCATE old_equipment RESTART IDENTITY;",
    "gear_ops": "TRUNCATE gear_items, gear_inspections, gear_reminders, idempotency_keys;",
    "iot_v1": "TRUNCATE devices, users, device_data;",
    "iot_v2": "TRUNCATE devices, users, telemetry, idempotency_keys; DELETE FROM device_templates; "
              "DELETE FROM tenants WHERE id <> 'default_tenant_id';",
}


@pytest.fixture
def svc(services, pg):
    """The demo services, healthy, over empty tables."""
    for s in services.values():
        s.fault("ok")
    for db, text in RESET_SQL.items():
        pg.sql(db, text)
    yield services
    for s in services.values():
        if s.proc.poll() is None:
            s.fault("ok", check=False)


# ---------------------------------------------------------------- small helpers

ITEM = {"user_id": 42, "name": "Tent 2p", "type": "tent", "brand": "MSR"}


BREAKER_FAILURES = 5  # lib/breaker.h


def create(d, n=0, **over):
    doc = dict(ITEM, name="item %d" % n)
    doc.update(over)
    r = ml.send_json(d.port, "POST", "/equipment", doc)
    assert r.status == 201, "POST /equipment through the sidecar: %r" % r
    return r.json()


def gear_rows(pg):
    return {r["id"]: r for r in pg.rows_json(
        "gear_ops", "SELECT id, user_id, name, category, brand, status, role, "
        "created_at::text AS created_at FROM gear_items ORDER BY id")}


def legacy_rows(pg):
    return {r["id"]: r for r in pg.rows_json(
        "user_core", "SELECT id, user_id, name, type, brand, created_at::text AS created_at "
        "FROM old_equipment ORDER BY id")}


def wait_gear_ids(pg, ids, timeout=10.0):
    ids = set(ids)
    return helpers.wait_for(lambda: ids <= set(gear_rows(pg)) and gear_rows(pg), timeout,
                            "gear_items to hold ids %s" % sorted(ids), interval=0.1)


def wait_stats(d, pred, timeout, what):
    last = [None]

    def check():
        last[0] = ml.queue_stats(d.conf_path)
        return pred(last[0])
    try:
        helpers.wait_for(check, timeout, what, interval=0.2)
    except AssertionError as e:
        raise AssertionError("%s; last stats %r; log:\n%s" % (e, last[0], d.log_text()[-5000:]))
    return last[0]


def restart(d):
    """Start the same daemon again (same config, queue and log file)."""
    if d.logf:
        d.logf.close()
        d.logf = None
    d.start()


def assert_tables_equal(pg):
    """gear_items mirrors old_equipment row for row (SPEC's Gear mapping)."""
    src, tgt = legacy_rows(pg), gear_rows(pg)
    assert set(src) == set(tgt), "ids differ: legacy-only %s, gear-only %s" % (
        sorted(set(src) - set(tgt)), sorted(set(tgt) - set(src)))
    for i, s in src.items():
        t = tgt[i]
        assert (t["user_id"], t["name"], t["category"], t["brand"], t["status"], t["role"],
                t["created_at"]) == (s["user_id"], s["name"], s["type"], s["brand"], "active",
                                     "personal", s["created_at"]), "row %s: %r vs %r" % (i, s, t)


def json_backend(make_backend, name, status, body):
    b = make_backend(name=name)
    b.reply(status, json.dumps(body).encode(), [("Content-Type", "application/json")])
    return b


# ---------------------------------------------------------------- 1. the Gear mapping


def test_create_mirror_carries_idempotency_key_and_route_header(svc, dw, make_backend):
    target = json_backend(make_backend, "target", 201, {"ok": True})
    d = ml.mirror_daemon(dw, svc["user-core"].url, target.url, ml.gear_routes())
    item = create(d, 1)
    lid = item["id"]
    reqs = target.wait_requests(1, timeout=5)
    m = reqs[0]
    assert (m.method, m.target) == ("POST", "/gear-items"), m
    idem = m.header("Idempotency-Key")
    assert idem and len(idem) >= 8, "mirrored request lacks an Idempotency-Key: %r" % m
    assert m.header_all("X-Dualwrite-Route") == ["equipment-create"], m
    assert (m.header("Content-Type") or "").startswith("application/json"), m
    assert json.loads(m.body) == {
        "id": lid, "user_id": 42, "name": "item 1", "category": "tent", "brand": "MSR",
        "status": "active", "role": "personal", "created_at": item["created_at"],
        "updated_at": item["created_at"]}, m.body
    out = ml.wait_outcomes(d, lambda o: o["result"] == "delivered", 1, 5, "delivered")
    assert out[0]["idem"] == idem and out[0]["key"] == str(lid), out[0]["line"]
    assert out[0]["route"] == "equipment-create" and out[0]["status"] == 201, out[0]["line"]
    assert ml.mirror_total(d, route="equipment-create", result="delivered") == 1
    # A second write is a different write: a different Idempotency-Key.
    create(d, 2)
    reqs = target.wait_requests(2, timeout=5)
    assert reqs[1].header("Idempotency-Key") not in (None, idem), reqs[1]


def test_create_mirrored_into_gear_items(svc, dw, pg):
    d = ml.mirror_daemon(dw, svc["user-core"].url, svc["gear-ops"].url, ml.gear_routes())
    items = [create(d, 1), create(d, 2, type="stove", brand="Primus", user_id=7)]
    rows = wait_gear_ids(pg, [i["id"] for i in items])
    for it in items:
        r = rows[it["id"]]
        assert r["user_id"] == it["user_id"] and r["name"] == it["name"], r
        assert r["category"] == it["type"] and r["brand"] == it["brand"], r
        assert r["status"] == "active" and r["role"] == "personal", r
    assert_tables_equal(pg)
    ml.wait_outcomes(d, lambda o: o["result"] == "delivered", 2, 5, "delivered")
    assert ml.mirror_total(d, route="equipment-create", result="delivered") == 2
    # The sidecar's gear-ops log names the route and the key for each mirrored write.
    log = svc["gear-ops"].log_text()
    assert "equipment-create" in log, log[-3000:]


# ---------------------------------------------------------------- 2. G1: legacy 4xx


def test_legacy_4xx_is_not_mirrored_and_client_gets_exact_answer(svc, dw, make_backend, pg):
    target = json_backend(make_backend, "target", 201, {"ok": True})
    d = ml.mirror_daemon(dw, svc["user-core"].url, target.url, ml.gear_routes())
    bad = {"user_id": 42, "type": "tent"}  # no name: user-core says 400
    direct = ml.send_json(svc["user-core"].port, "POST", "/equipment", bad)
    assert direct.status == 400, direct
    before = ml.queue_stats(d.conf_path)
    r = ml.send_json(d.port, "POST", "/equipment", bad)
    assert r.status == 400 and r.body == direct.body, (r, direct)
    assert r.header("Content-Type") == direct.header("Content-Type"), (r, direct)
    # An update of an id the legacy does not have: 404, also not mirrored.
    r404 = ml.send_json(d.port, "PUT", "/equipment/999999", ITEM)
    assert r404.status == 404, r404
    after = ml.queue_stats(d.conf_path)
    assert after == before, "spool changed by non-2xx writes: %r -> %r" % (before, after)
    assert ml.mirror_total(d) == 0, d.metrics()
    assert ml.mirror_outcomes(d) == []
    assert pg.sql("user_core", "SELECT count(*) FROM old_equipment") == [["0"]]
    # Marker: a good create through the same daemon must be mirrored; once it
    # has arrived, it is the only request the target ever got.
    lid = create(d, 1)["id"]
    m = target.wait_requests(1, timeout=5)[0]
    assert json.loads(m.body)["id"] == lid, m
    assert len(target.requests) == 1 and target.accepts == 1, target.requests
    # Control: the same wiring does mirror a 2xx write.
    create(d, 1)
    target.wait_requests(1, timeout=5)


# ---------------------------------------------------------------- 3. G1: slow mirror


def test_slow_mirror_target_does_not_delay_clients(svc, dw, pg):
    svc["gear-ops"].fault("slow", delay_ms=2000)
    d = ml.mirror_daemon(dw, svc["user-core"].url, svc["gear-ops"].url, ml.gear_routes(),
                         target_timeout_ms=6000)
    ids = []
    for n in range(3):
        t0 = time.monotonic()
        ids.append(create(d, n)["id"])
        took = time.monotonic() - t0
        assert took < 1.0 * helpers.SLOW, "client answer %d took %.2f s (held by the mirror?)" % (
            n, took)
    out = ml.wait_outcomes(d, lambda o: o["result"] == "delivered", 3, 25, "3 delivered")
    assert {o["key"] for o in out} == {str(i) for i in ids}, [o["line"] for o in out]
    # The mirror really was slow: the target held each answer ~2 s.
    assert all(float(o["latency"]) >= 1500 for o in out), [o["line"] for o in out]
    assert [o for o in ml.mirror_outcomes(d) if o["result"] != "delivered"] == []
    wait_gear_ids(pg, ids)
    assert_tables_equal(pg)


# ---------------------------------------------------------------- 4. target down -> queue -> replay


def down_until_up(make_backend):
    """A target answering 503 until the returned event is set, then 201."""
    up = threading.Event()

    def handler(req):
        if up.is_set():
            return Reply(201, b'{"ok": true}', [("Content-Type", "application/json")])
        return Reply(503, b'{"error": "down"}', [("Content-Type", "application/json")])
    return make_backend(handler, name="target"), up


def test_target_down_queues_then_replay_keeps_idempotency_key(svc, dw, make_backend):
    target, up = down_until_up(make_backend)
    d = ml.mirror_daemon(dw, svc["user-core"].url, target.url, ml.gear_routes())
    ids = [create(d, n)["id"] for n in range(2)]
    ml.wait_outcomes(d, lambda o: o["result"] == "queued", 2, 10, "2 queued")
    st = wait_stats(d, lambda s: s["queued"] == 2 and s["pending"] == 0, 5, "2 queued")
    assert st["dead"] == 0
    failed = list(target.requests)
    assert failed and all(json.loads(r.body)["id"] in ids for r in failed), failed
    first_key = {}
    for r in failed:
        first_key.setdefault(json.loads(r.body)["id"], r.header("Idempotency-Key"))
    assert set(first_key) == set(ids) and all(first_key.values()), failed
    assert ml.mirror_total(d, route="equipment-create", result="queued") == 2
    up.set()
    nfailed = len(failed)
    ml.replay_until_drained(d.conf_path)
    later = target.requests[nfailed:]
    delivered = {}
    for r in later:
        lid = json.loads(r.body)["id"]
        assert lid not in delivered, "id %s delivered twice by replay: %r" % (lid, later)
        delivered[lid] = r
    assert set(delivered) == set(ids), later
    for lid, r in delivered.items():
        assert r.header("Idempotency-Key") == first_key[lid], \
            "replay of id %s used key %r, the failed attempt %r" % (
                lid, r.header("Idempotency-Key"), first_key[lid])
        assert r.header("X-Dualwrite-Route") == "equipment-create", r
        assert (r.method, r.target) == ("POST", "/gear-items"), r
        orig = [f for f in failed if json.loads(f.body)["id"] == lid][0]
        assert r.body == orig.body, (r.body, orig.body)
    st = ml.queue_stats(d.conf_path)
    assert (st["pending"], st["queued"], st["dead"]) == (0, 0, 0), st


def test_a_replayed_write_is_the_request_the_daemon_sent_but_for_its_replay_mark(
        svc, dw, make_backend):
    """Replay sends what the daemon sent live (one builder, lib/mirrorwire): the same
    method, target, headers in the same order and body; only X-Dualwrite-Replay (the
    attempt number) is added."""
    target, up = down_until_up(make_backend)
    d = ml.mirror_daemon(dw, svc["user-core"].url, target.url, ml.gear_routes())
    create(d, 0)
    ml.wait_outcomes(d, lambda o: o["result"] == "queued", 1, 10, "queued")
    up.set()
    ml.replay_until_drained(d.conf_path)
    live, again = target.requests[0], target.requests[-1]
    assert len(target.requests) == 2, target.requests

    def headers(r):
        return [(n.lower(), v) for n, v in r.headers if n.lower() != "x-dualwrite-replay"]

    assert live.header("X-Dualwrite-Replay") is None, live
    assert again.header("X-Dualwrite-Replay") == "2", again
    assert headers(again) == headers(live), (again.headers, live.headers)
    assert (again.method, again.target, again.body) == (live.method, live.target, live.body)


def test_replay_sends_several_writes_to_an_upstream_at_once(svc, dw, make_backend):
    """Replay's sends to one upstream overlap (up to --concurrency, 16 by default; one
    per key: each key's oldest record only): a target that answers a write only once
    four are in at the same time gets all four delivered by one `replay --once`."""
    up = threading.Event()
    together = threading.Barrier(4, timeout=3)

    def handler(req):
        if not up.is_set():
            return Reply(503, b'{"error": "down"}', [("Content-Type", "application/json")])
        try:
            together.wait()
        except threading.BrokenBarrierError:
            return Reply(503, b'{"error": "alone"}', [("Content-Type", "application/json")])
        return Reply(201, b'{"ok": true}', [("Content-Type", "application/json")])
    target = make_backend(handler, name="target")
    d = ml.mirror_daemon(dw, svc["user-core"].url, target.url, ml.gear_routes())
    for n in range(4):
        create(d, n)
    ml.wait_outcomes(d, lambda o: o["result"] == "queued", 4, 10, "4 queued")
    up.set()
    r = ml.cli(d.conf_path, "replay", "--once")
    assert r.returncode == 0, r.stderr
    assert "delivered 4, dead 0, remaining 0" in r.stderr, r.stderr
    assert not together.broken


def test_target_down_then_replay_leaves_tables_equal(svc, dw, pg):
    svc["gear-ops"].fault("down503")
    d = ml.mirror_daemon(dw, svc["user-core"].url, svc["gear-ops"].url, ml.gear_routes())
    for n in range(4):
        create(d, n, user_id=n + 1)
    wait_stats(d, lambda s: s["queued"] == 4 and s["pending"] == 0, 10, "4 queued")
    assert gear_rows(pg) == {}
    svc["gear-ops"].fault("ok")
    ml.replay_until_drained(d.conf_path)
    assert_tables_equal(pg)
    assert len(gear_rows(pg)) == 4


# ---------------------------------------------------------------- 5. G3: order per key


def test_order_per_key_through_the_queue(svc, dw, pg):
    svc["gear-ops"].fault("down503")
    d = ml.mirror_daemon(dw, svc["user-core"].url, svc["gear-ops"].url, ml.gear_routes())
    a = create(d, 1)["id"]
    for name in ("a-1", "a-2"):
        r = ml.send_json(d.port, "PUT", "/equipment/%d" % a, dict(ITEM, name=name))
        assert r.status == 200, r
    r = ml.send_json(d.port, "DELETE", "/equipment/%d" % a)
    assert r.status == 204, r
    b = create(d, 2)["id"]
    r = ml.send_json(d.port, "PUT", "/equipment/%d" % b, dict(ITEM, name="b-2", brand="Vaude"))
    assert r.status == 200, r
    wait_stats(d, lambda s: s["queued"] == 6 and s["pending"] == 0, 10, "6 queued")
    svc["gear-ops"].fault("ok")
    ml.replay_until_drained(d.conf_path)
    rows = gear_rows(pg)
    assert a not in rows, "deleted id %s is in gear_items: %r" % (a, rows.get(a))
    assert b in rows and rows[b]["name"] == "b-2" and rows[b]["brand"] == "Vaude", rows
    assert_tables_equal(pg)
    st = ml.queue_stats(d.conf_path)
    assert st["dead"] == 0, (st, ml.queue_list(d.conf_path, dead=True))


def _burst(d, n, threads=8):
    """n creates through the sidecar from several client threads at once, so the
    mirror requests of one loop iteration share a pipelined connection."""
    errors, ids, lock = [], [], threading.Lock()

    def client(k):
        try:
            for i in range(k, n, threads):
                item = create(d, i)
                with lock:
                    ids.append(item["id"])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    ts = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors
    return ids


def _by_number(reply_for):
    """A target handler answering reply_for(n), n the request's number (1, 2, ...)."""
    seen = [0]
    lock = threading.Lock()

    def handler(req):
        with lock:
            seen[0] += 1
            no = seen[0]
        return reply_for(no)
    return handler


def _created():
    return Reply(201, b'{"ok":true}', [("Content-Type", "application/json")])


def test_pipelined_mirrors_survive_a_target_that_closes_keepalive(svc, dw, make_backend):
    """A target that answers every 4th request with Connection: close (as nginx does
    after keepalive_requests, with its lingering close) drops what was pipelined behind
    it unread: those go out again on a new connection - each write delivered exactly
    once, nothing queued."""
    target = make_backend(_by_number(lambda no: Reply(
        201, b'{"ok":true}', [("Content-Type", "application/json")], close=no % 4 == 0,
        linger=True)), name="target")
    d = ml.mirror_daemon(dw, svc["user-core"].url, target.url, ml.gear_routes())
    n = 120
    _burst(d, n)
    out = ml.wait_outcomes(d, lambda o: o["result"] == "delivered", n, 20, "%d delivered" % n)
    assert [o for o in ml.mirror_outcomes(d) if o["result"] != "delivered"] == []
    idems = [r.header("Idempotency-Key") for r in target.requests]
    assert sorted(idems) == sorted(o["idem"] for o in out), "each write reaches the target once"
    assert d.metric("dualwrite_mirror_resent_total") > 0, \
        "no request was pipelined behind a closing answer: the test did not test anything"
    assert target.errors == []


def test_pipelined_mirrors_when_the_target_resets_one(svc, dw, make_backend):
    """Resets while requests are pipelined: the one being answered fails as any send
    (queued for replay); the ones behind it are sent again and delivered."""
    # 30, 60, 90 held a moment, then reset: later sends pile up behind them
    target = make_backend(_by_number(lambda no: Reply(action="reset", delay=0.1)
                                     if no in (30, 60, 90) else _created()), name="target")
    d = ml.mirror_daemon(dw, svc["user-core"].url, target.url, ml.gear_routes())
    n = 120
    _burst(d, n)
    got = ml.wait_outcomes(d, lambda o: o["result"] in ("delivered", "queued"), n, 20,
                           "%d settled" % n)
    queued = [o for o in got if o["result"] == "queued"]
    assert len(queued) == 3, [o["line"] for o in queued]
    assert all("upstream" in (o["reason"] or "") for o in queued), [o["line"] for o in queued]
    assert len(got) == n and not [o for o in got if o["result"] == "dead"], got
    assert d.metric("dualwrite_mirror_resent_total") > 0, \
        "nothing was pipelined behind the reset: the test did not test anything"


def test_a_target_not_yet_seen_answering_gets_one_request_per_connection(svc, dw,
                                                                        make_backend):
    """Nothing is pipelined to a target until it has answered a few times: one that hangs
    from the start holds one request per connection, every write ends queued once its
    send times out, and none is sent twice."""
    target = make_backend(lambda req: Reply(action="hang"), name="target")
    d = ml.mirror_daemon(dw, svc["user-core"].url, target.url, ml.gear_routes(),
                         target_timeout_ms=400)
    n = 40
    _burst(d, n)
    got = ml.wait_outcomes(d, lambda o: o["result"] == "queued", n, 20, "%d queued" % n)
    assert len(got) == n
    assert {o["attempt"] for o in got} <= {"0", "1"}, "sent again to wait for another timeout"
    # The backend reads a connection's next request only after answering the last:
    # it sees every write only if each came on a connection of its own.
    assert len(target.requests) == n, "pipelined: the target read %d of %d requests" % (
        len(target.requests), n)
    assert len({r.conn_no for r in target.requests}) == n
    idems = [r.header("Idempotency-Key") for r in target.requests]
    assert len(idems) == len(set(idems)), "a write was sent twice"
    assert d.metric("dualwrite_mirror_resent_total") == 0


def _answers_then_hangs(after):
    """A target handler: the first `after` requests answered 201, every later one hangs."""
    return _by_number(lambda no: Reply(action="hang") if no > after else _created())


def test_pipeline_depth_1_keeps_one_request_per_connection(svc, dw, make_backend):
    """pipeline_depth = 1 (for a target that mishandles pipelining): even a fast target
    gets one request per connection - after it hangs, it reads every write, each on a
    connection of its own."""
    target = make_backend(_answers_then_hangs(40), name="target")
    d = ml.mirror_daemon(dw, svc["user-core"].url, target.url, ml.gear_routes(),
                         target_timeout_ms=400, target_extra={"pipeline_depth": 1})
    _burst(d, 40)
    ml.wait_outcomes(d, lambda o: o["result"] == "delivered", 40, 20, "40 delivered")
    n = 30  # under max_inflight: all are on the wire when the timeouts come
    _burst(d, n, threads=16)
    ml.wait_outcomes(d, lambda o: o["result"] == "queued", n, 20, "%d queued" % n)
    late = target.requests[40:]
    assert len(late) == n, "the target read %d of %d: some were pipelined" % (len(late), n)
    assert len({r.conn_no for r in late}) == n


def test_a_target_that_stops_answering_fails_what_was_pipelined_to_it(svc, dw, make_backend):
    """A fast target (pipelined to) that stops answering: when a connection times out,
    every request on it fails and is queued, none goes out a second time to wait for
    another timeout, and the breaker opens."""
    target = make_backend(_answers_then_hangs(40), name="target")
    d = ml.mirror_daemon(dw, svc["user-core"].url, target.url, ml.gear_routes(),
                         target_timeout_ms=400)
    _burst(d, 40)
    ml.wait_outcomes(d, lambda o: o["result"] == "delivered", 40, 20, "40 delivered")
    n = 80
    _burst(d, n, threads=16)
    got = ml.wait_outcomes(d, lambda o: o["result"] == "queued", n, 20, "%d queued" % n)
    assert len(got) == n
    assert {o["attempt"] for o in got} <= {"0", "1"}, "sent again to wait for another timeout"
    # The backend reads a connection's next request only after answering the last,
    # so what was pipelined behind a hung request never shows up here.
    assert len(target.requests) - 40 < n, \
        "nothing was pipelined to the hanging target: the test did not test anything"
    idems = [r.header("Idempotency-Key") for r in target.requests]
    assert len(idems) == len(set(idems)), "a write was sent again after a timeout"
    assert d.metric("dualwrite_mirror_resent_total") == 0
    d.wait_log("failed 5 times in a row")


def test_keys_written_through_several_workers_keep_their_order(svc, dw, pg):
    """Three workers, each with its own mirror shard: every write of a key goes to the
    key's home shard whichever worker served it, so each key's writes are delivered one
    at a time in journal order and the final rows are the last writes."""
    d = ml.mirror_daemon(dw, svc["user-core"].url, svc["gear-ops"].url, ml.gear_routes(),
                         extra={"workers": 3})
    ids = [create(d, n)["id"] for n in range(12)]
    ml.wait_outcomes(d, lambda o: o["result"] == "delivered", len(ids), 10, "creates delivered")
    # A slow target keeps each key's earlier writes in flight while its later ones arrive,
    # through other workers: only one home per key keeps them in order.
    svc["gear-ops"].fault("slow", delay_ms=40)
    errors = []

    def writer(k):
        try:
            for v in range(4):  # a fresh connection each: SO_REUSEPORT spreads them
                r = ml.send_json(d.port, "PUT", "/equipment/%d" % k,
                                 dict(ITEM, name="k%d-v%d" % (k, v)))
                assert r.status == 200, r
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=writer, args=(k,)) for k in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    svc["gear-ops"].fault("ok")
    n = len(ids) * 5
    got = ml.wait_outcomes(d, lambda o: o["result"] == "delivered", n, 20, "%d delivered" % n)
    assert len(got) == n, got
    for k in ids:
        seqs = [o["seq"] for o in got if o["key"] == str(k)]
        assert seqs == sorted(seqs) and len(seqs) == 5, "key %s delivered out of order: %s" % (
            k, seqs)
    rows = gear_rows(pg)
    for k in ids:
        assert rows[k]["name"] == "k%d-v3" % k, rows[k]
    assert_tables_equal(pg)


def test_new_write_of_queued_key_queues_behind(svc, dw, pg):
    svc["gear-ops"].fault("down503")
    d = ml.mirror_daemon(dw, svc["user-core"].url, svc["gear-ops"].url, ml.gear_routes())
    k = create(d, 1)["id"]
    r = ml.send_json(d.port, "PUT", "/equipment/%d" % k, dict(ITEM, name="k-1"))
    assert r.status == 200, r
    wait_stats(d, lambda s: s["queued"] == 2 and s["pending"] == 0, 10, "2 queued")
    # The target is back, but key k still has records waiting: the next write must not
    # overtake them (sent now, it would reach gear-ops before the create).
    svc["gear-ops"].fault("ok")
    r = ml.send_json(d.port, "PUT", "/equipment/%d" % k, dict(ITEM, name="k-2"))
    assert r.status == 200, r
    wait_stats(d, lambda s: s["queued"] == 3 and s["pending"] == 0, 10, "3 queued")
    out = [o for o in ml.mirror_outcomes(d) if o["key"] == str(k)]
    assert [o["result"] for o in out][-1] == "queued", [o["line"] for o in out]
    assert all(o["result"] != "delivered" for o in out), [o["line"] for o in out]
    assert gear_rows(pg) == {}, "a write of a queued key reached gear-ops before replay"
    ml.replay_until_drained(d.conf_path)
    rows = gear_rows(pg)
    assert k in rows and rows[k]["name"] == "k-2", rows
    assert_tables_equal(pg)
    # Drained: the key flows directly again (the daemon learns within ~1 s).
    time.sleep(1.5)
    r = ml.send_json(d.port, "PUT", "/equipment/%d" % k, dict(ITEM, name="k-3"))
    assert r.status == 200, r
    helpers.wait_for(lambda: gear_rows(pg)[k]["name"] == "k-3", 10,
                     "the drained key to be mirrored directly", interval=0.1)


# ---------------------------------------------------------------- 6. dead letters


def test_non_json_body_is_served_and_dead_lettered(dw, make_backend):
    legacy = json_backend(make_backend, "legacy", 201, {"id": 7})
    target = json_backend(make_backend, "target", 201, {"ok": True})
    d = ml.mirror_daemon(dw, legacy.url, target.url, ml.gear_routes())
    r = ml.send_json(d.port, "POST", "/equipment", body=b"this is not json",
                     headers=[("Content-Type", "text/plain")])
    assert r.status == 201 and r.body == b'{"id": 7}', r
    lreq = legacy.wait_requests(1, timeout=5)[0]
    assert lreq.body == b"this is not json", lreq
    out = ml.wait_outcomes(d, lambda o: o["result"] == "dead", 1, 5, "dead")
    assert "json" in (out[0]["reason"] or "").lower(), out[0]["line"]
    dead = ml.wait_dead(d.conf_path, 1)
    assert len(dead) == 1 and dead[0]["route"] == "equipment-create", dead
    assert "json" in dead[0]["line"].lower(), dead
    shown = ml.queue_show(d.conf_path, dead[0]["seq"])
    assert "dead" in shown and "json" in shown.lower(), shown
    # Marker: a well-formed create on the same route must reach the target,
    # and by then it is the only request the target ever got.
    r = ml.send_json(d.port, "POST", "/equipment", dict(ITEM, name="marker"))
    assert r.status == 201, r
    m = target.wait_requests(1, timeout=5)[0]
    assert json.loads(m.body)["name"] == "marker", m
    assert len(target.requests) == 1 and target.accepts == 1, target.requests
    assert ml.mirror_total(d, route="equipment-create", result="dead") == 1


def test_malformed_tenant_is_served_and_dead_lettered(dw, make_backend):
    legacy = json_backend(make_backend, "legacy", 201, {"id": "dev-9"})
    target = json_backend(make_backend, "target", 201, {"ok": True})
    d = ml.mirror_daemon(dw, legacy.url, target.url, ml.iot_routes(), target="v2",
                         tenant={"header": "X-Tenant-ID", "default": "default_tenant_id"})
    r = ml.send_json(d.port, "POST", "/devices", {"name": "Boiler", "type": "sensor"},
                     headers=[("X-Tenant-ID", "bad tenant!")])
    assert r.status == 201 and r.body == b'{"id": "dev-9"}', r
    lreq = legacy.wait_requests(1, timeout=5)[0]
    assert lreq.header("X-Tenant-ID") == "bad tenant!", lreq
    out = ml.wait_outcomes(d, lambda o: o["result"] == "dead", 1, 5, "dead")
    assert "tenant" in (out[0]["reason"] or "").lower(), out[0]["line"]
    dead = ml.wait_dead(d.conf_path, 1)
    assert len(dead) == 1 and dead[0]["route"] == "device-create", dead
    assert "tenant" in dead[0]["line"].lower(), dead
    # A well-formed tenant on the same daemon is mirrored (the route itself
    # works); it is also the marker: once it has arrived, it is the only
    # request the target ever got — the dead-lettered write was never sent.
    r = ml.send_json(d.port, "POST", "/devices", {"name": "Gate", "type": "gw"},
                     headers=[("X-Tenant-ID", "tenant-b")])
    assert r.status == 201, r
    m = target.wait_requests(1, timeout=5)[0]
    assert json.loads(m.body)["tenantId"] == "tenant-b", m
    assert len(target.requests) == 1 and target.accepts == 1, target.requests


def test_requeue_refuses_dead_letters_whose_mirror_was_never_built(dw, make_backend):
    # A malformed tenant or a body that is not JSON leaves nothing to send:
    # requeue used to replay such a dead letter as a bodiless POST and count
    # it delivered. A dead letter that was built (the target said 422) is
    # requeued and replayed as before.
    legacy = json_backend(make_backend, "legacy", 201, {"id": "dev-9"})
    target = json_backend(make_backend, "target", 422, {"error": "not yet"})
    d = ml.mirror_daemon(dw, legacy.url, target.url, ml.iot_routes(), target="v2",
                         tenant={"header": "X-Tenant-ID", "default": "default_tenant_id"})
    sends = [
        dict(doc={"name": "Built", "type": "sensor"}, headers=[("X-Tenant-ID", "tenant-b")]),
        dict(doc={"name": "Boiler", "type": "sensor"}, headers=[("X-Tenant-ID", "bad tenant!")]),
        dict(body=b"this is not json", headers=[("Content-Type", "text/plain")]),
    ]
    for i, kw in enumerate(sends):
        assert ml.send_json(d.port, "POST", "/devices", **kw).status == 201
        ml.wait_outcomes(d, lambda o: o["result"] == "dead", i + 1, 5, "%d dead" % (i + 1))
    assert len(target.wait_requests(1)) == 1
    dead = ml.wait_dead(d.conf_path, 3)
    assert len(dead) == 3, dead
    tenant_seq = next(x["seq"] for x in dead if "tenant" in x["line"].lower())
    json_seq = next(x["seq"] for x in dead if "json" in x["line"].lower())
    assert "never built" in ml.queue_show(d.conf_path, tenant_seq)

    out = ml.cli(d.conf_path, "queue", "requeue", tenant_seq)
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert ("nothing to send: the mirror was never built (reason: malformed tenant in "
            "X-Tenant-ID header)") in out.stderr, out.stderr
    assert "dead" in ml.queue_show(d.conf_path, tenant_seq).split("\n")[1]

    target.reply(201, b'{"ok": true}', [("Content-Type", "application/json")])
    out = ml.cli(d.conf_path, "queue", "requeue", "--all-dead")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "requeued 1 dead record\n" in out.stderr, out.stderr
    assert "skipped 2 dead records whose mirror was never built" in out.stderr, out.stderr
    out = ml.cli(d.conf_path, "replay", "--once")
    assert out.returncode == 0, (out.stdout, out.stderr)
    reqs = target.wait_requests(2)
    assert len(reqs) == 2, reqs
    assert json.loads(reqs[1].body)["name"] == "Built", reqs[1]
    assert sorted(x["seq"] for x in ml.queue_list(d.conf_path, dead=True)) == \
        sorted([tenant_seq, json_seq])
    assert ml.queue_stats(d.conf_path)["queued"] == 0


def _crc32c(data, crc=0xFFFFFFFF):
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc


def append_state_frame(queue_dir, seq, state, error):
    """Append a STATE frame (lib/spool.c's format) to the queue's last segment,
    as another process would: here to leave a record waiting that no command
    can make waiting any more."""
    import glob
    import struct
    seg = sorted(glob.glob(os.path.join(queue_dir, "seg-*.log")))[-1]
    e = error.encode()
    payload = struct.pack("<BIIq", state, 0, 0, int(time.time() * 1e6)) + \
        struct.pack("<I", len(e)) + e
    typeseq = struct.pack("<BQ", 5, seq)
    crc = _crc32c(payload, _crc32c(typeseq)) ^ 0xFFFFFFFF
    frame = struct.pack("<III", 0x31515744, len(payload), crc) + typeseq + payload
    with open(seg, "ab") as f:
        f.write(frame)


def test_replay_never_sends_a_mirror_that_was_never_built(dw, make_backend):
    # Defence in depth: an unbuilt write left waiting (a daemon killed between
    # journaling it and its dead letter, or an older version's requeue) is
    # dead-lettered by replay, not sent as a bodiless request counted delivered.
    legacy = json_backend(make_backend, "legacy", 201, {"id": "dev-9"})
    target = json_backend(make_backend, "target", 201, {"ok": True})
    d = ml.mirror_daemon(dw, legacy.url, target.url, ml.iot_routes(), target="v2",
                         tenant={"header": "X-Tenant-ID", "default": "default_tenant_id"})
    assert ml.send_json(d.port, "POST", "/devices", {"name": "Boiler", "type": "sensor"},
                        headers=[("X-Tenant-ID", "bad tenant!")]).status == 201
    ml.wait_outcomes(d, lambda o: o["result"] == "dead", 1, 5, "dead")
    assert d.stop() == 0
    seq = ml.queue_list(d.conf_path, dead=True)[0]["seq"]
    append_state_frame(d.queue_dir, seq, 2, "left waiting")
    assert [x["seq"] for x in ml.queue_list(d.conf_path)] == [seq]

    out = ml.cli(d.conf_path, "replay", "--once")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert target.accepts == 0 and target.requests == [], target.requests
    dead = ml.queue_list(d.conf_path, dead=True)
    assert [x["seq"] for x in dead] == [seq], dead
    assert "nothing to send: the mirror was never built" in dead[0]["line"], dead
    assert ml.queue_stats(d.conf_path)["queued"] == 0


def test_permanent_4xx_from_target_is_dead_with_status_and_excerpt(svc, dw, make_backend):
    target = json_backend(make_backend, "target", 422,
                          {"error": "unprocessable: category kayak not allowed"})
    d = ml.mirror_daemon(dw, svc["user-core"].url, target.url, ml.gear_routes())
    lid = create(d, 1, type="kayak")["id"]
    out = ml.wait_outcomes(d, lambda o: o["result"] == "dead", 1, 5, "dead")
    assert out[0]["status"] == 422 and out[0]["key"] == str(lid), out[0]["line"]
    assert "category kayak not allowed" in (out[0]["reason"] or ""), out[0]["line"]
    dead = ml.wait_dead(d.conf_path, 1)
    assert len(dead) == 1 and dead[0]["key"] == str(lid), dead
    assert "last=422" in dead[0]["line"], dead
    shown = ml.queue_show(d.conf_path, dead[0]["seq"])
    assert "422" in shown and "category kayak not allowed" in shown, shown
    # Marker: a second write (dead-lettered too) must reach the target; by
    # then the first was not sent again.
    mid = create(d, 2, type="kayak")["id"]
    got = target.wait_requests(2, timeout=5)
    assert [json.loads(g.body)["id"] for g in got] == [lid, mid], \
        "a permanent failure was retried: %r" % got
    ml.wait_outcomes(d, lambda o: o["result"] == "dead", 2, 5, "both dead")
    st = ml.queue_stats(d.conf_path)
    assert (st["queued"], st["pending"], st["dead"]) == (0, 0, 2), st


# ---------------------------------------------------------------- 7. G2: SIGKILL at random instants


def test_sigkill_loop_loses_no_acknowledged_write(svc, dw, pg):
    seed = int(time.time())
    rnd = random.Random(seed)
    d = ml.mirror_daemon(dw, svc["user-core"].url, svc["gear-ops"].url, ml.gear_routes())
    acked = set()
    lock = threading.Lock()
    stop = threading.Event()
    errors = []

    def client(no):
        for i in range(5000):
            if stop.is_set():
                return
            try:
                r = ml.send_json(d.port, "POST", "/equipment",
                                 dict(ITEM, name="c%d-%d" % (no, i), user_id=no), timeout=5)
            except (OSError, AssertionError, TimeoutError):
                time.sleep(0.01)  # daemon down or killed mid-request: unacknowledged
                continue
            if r.status == 201:
                with lock:
                    acked.add(r.json()["id"])
            elif r.status not in (502, 503, 504):
                errors.append(r)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(3)]
    for t in threads:
        t.start()
    kills = 0
    try:
        for _ in range(5):
            time.sleep(rnd.uniform(0.2, 1.0))
            d.proc.kill()
            d.proc.wait(timeout=10)
            kills += 1
            restart(d)  # must start every time (torn tail tolerated); bounded wait for /ready
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    assert kills == 5
    assert not errors, "unexpected answers (seed %d): %r" % (seed, errors[:5])
    assert len(acked) >= 20, "too little load to mean anything: %d acked" % len(acked)
    before = ml.queue_stats(d.conf_path)
    runs = ml.replay_until_drained(d.conf_path, rounds=6, timeout=60)
    print("seed %d: %d acked, queue before replay %r, replay: %s" % (
        seed, len(acked), before, runs[-1].stderr.strip().splitlines()[-1:]))
    # Whatever the running daemon still has in flight lands within a few seconds.
    try:
        wait_gear_ids(pg, acked, timeout=15)
    except AssertionError:
        missing = sorted(acked - set(gear_rows(pg)))
        raise AssertionError("seed %d: %d acknowledged writes missing from gear_items: %s\n"
                             "queue: %r\nlist: %r\ndead: %r" % (
                                 seed, len(missing), missing[:30], ml.queue_stats(d.conf_path),
                                 ml.queue_list(d.conf_path)[:10],
                                 ml.queue_list(d.conf_path, dead=True)[:10]))
    gear = set(gear_rows(pg))
    legacy = set(legacy_rows(pg))
    assert gear <= legacy, "gear_items ids the legacy lacks: %s" % sorted(gear - legacy)[:30]
    # The only dead letters are writes a kill caught while the legacy held them: their
    # outcome is unknown (write-ahead intents, SPEC §5 G2), and each says so.
    st = ml.queue_stats(d.conf_path)
    dead = ml.queue_list(d.conf_path, dead=True)
    assert len(dead) == st["dead"], (st, dead[:10])
    odd = [x["line"] for x in dead if "stopped before the legacy answered: outcome unknown"
           not in x["line"]]
    assert not odd, (st, odd[:10])
    starts = d.log_text().count("ready:")
    assert starts >= 6, "daemon logged %d starts for 6 runs" % starts


# ---------------------------------------------------------------- 8. torn spool tail


def test_torn_spool_tail_is_tolerated(svc, dw, pg):
    svc["gear-ops"].fault("down503")
    d = ml.mirror_daemon(dw, svc["user-core"].url, svc["gear-ops"].url, ml.gear_routes())
    lid = create(d, 1)["id"]
    wait_stats(d, lambda s: s["queued"] == 1 and s["pending"] == 0, 10, "1 queued")
    assert d.stop() == 0, d.log_text()
    segs = sorted(f for f in os.listdir(d.queue_dir) if f.startswith("seg-") and
                  f.endswith(".log"))
    assert segs, "no seg-*.log under %s: %r" % (d.queue_dir, os.listdir(d.queue_dir))
    with open(os.path.join(d.queue_dir, segs[-1]), "ab") as f:
        f.write(b"\x00\x17torn write\xff\xfe" * 7)
    logged = len(d.log_text())
    restart(d)
    helpers.wait_for(lambda: "torn" in d.log_text()[logged:].lower(), 5,
                     "a warning about the torn tail")
    warn = [ln for ln in d.log_text()[logged:].splitlines() if "torn" in ln.lower()]
    assert any("warn" in ln.lower() for ln in warn), warn
    st = ml.queue_stats(d.conf_path)
    assert st["queued"] == 1, st
    svc["gear-ops"].fault("ok")
    ml.replay_until_drained(d.conf_path)
    wait_gear_ids(pg, [lid])
    # The spool is writable after the cut: a new write is journaled and delivered.
    lid2 = create(d, 2)["id"]
    wait_gear_ids(pg, [lid2])
    st = ml.queue_stats(d.conf_path)
    assert (st["queued"], st["dead"]) == (0, 0), st


# ---------------------------------------------------------------- 9. concurrent replays


def test_two_concurrent_replays_deliver_each_record_once(svc, dw, make_backend):
    up = threading.Event()

    def handler(req):
        if up.is_set():
            return Reply(201, b'{"ok": true}', [("Content-Type", "application/json")],
                         delay=0.05)
        return Reply(503, b'{"error": "down"}', [("Content-Type", "application/json")])
    target = make_backend(handler, name="target")
    d = ml.mirror_daemon(dw, svc["user-core"].url, target.url, ml.gear_routes())
    n = 20
    ids = [create(d, i)["id"] for i in range(n)]
    wait_stats(d, lambda s: s["queued"] == n and s["pending"] == 0, 15, "%d queued" % n)
    d.stopped_by_test = True
    assert d.stop() == 0, d.log_text()
    target.reset()
    up.set()
    procs = [ml.cli_popen(d.conf_path, "replay") for _ in range(2)]
    outs = []
    for p in procs:
        try:
            so, se = p.communicate(timeout=60)
        except Exception:
            p.kill()
            p.communicate(timeout=10)
            raise
        outs.append((p.returncode, se))
    per_key = {}
    for r in target.requests:
        per_key.setdefault(r.header("Idempotency-Key"), []).append(json.loads(r.body)["id"])
    twice = {k: v for k, v in per_key.items() if len(v) != 1}
    assert not twice, "records delivered more than once: %r\nreplays: %r" % (twice, outs)
    assert sorted(v[0] for v in per_key.values()) == sorted(ids), (per_key, outs)
    codes = sorted(rc for rc, _ in outs)
    assert codes[0] == 0, outs
    if codes[1] != 0:
        loser = [se for rc, se in outs if rc != 0][0]
        assert "another replay is running" in loser, outs
    st = ml.queue_stats(d.conf_path)
    assert (st["pending"], st["queued"], st["dead"]) == (0, 0, 0), st


# ---------------------------------------------------------------- 10. fsync durability


def test_fsync_durability_mirrors_and_serves(svc, dw, pg):
    d = ml.mirror_daemon(dw, svc["user-core"].url, svc["gear-ops"].url, ml.gear_routes(),
                         queue={"durability": "fsync"})
    ids = [create(d, n)["id"] for n in range(5)]
    wait_gear_ids(pg, ids)
    assert_tables_equal(pg)
    ml.wait_outcomes(d, lambda o: o["result"] == "delivered", 5, 5, "5 delivered")
    st = ml.queue_stats(d.conf_path)
    assert (st["pending"], st["queued"], st["dead"]) == (0, 0, 0), st


# ---------------------------------------------------------------- 11. the IoT mapping


def v2_devices(pg):
    return {r["id"]: r for r in pg.rows_json(
        "iot_v2", "SELECT id, tenant_id, name, template_id, attributes, metadata, status "
        "FROM devices ORDER BY id")}


def test_iot_create_and_patch_mirrored_with_tenant(svc, dw, pg):
    pg.sql("iot_v2", "INSERT INTO tenants (id, name, slug, plan, status) "
           "VALUES ('tenant-b', 'B', 'b', 'PRO', 'ACTIVE')")
    d = ml.mirror_daemon(dw, svc["iot-v1"].url, svc["iot-v2"].url, ml.iot_routes(),
                         target="v2",
                         tenant={"header": "X-Tenant-ID", "default": "default_tenant_id"})
    r = ml.send_json(d.port, "POST", "/devices",
                     {"name": "Boiler", "type": "sensor", "config": {"interval": 30, "unit": "C"}})
    assert r.status == 201, r
    d1 = r.json()["id"]
    r = ml.send_json(d.port, "POST", "/devices",
                     {"name": "Gate", "type": "gateway", "config": {"port": 8080},
                      "status": "OFFLINE"}, headers=[("X-Tenant-ID", "tenant-b")])
    assert r.status == 201, r
    d2 = r.json()["id"]
    helpers.wait_for(lambda: {d1, d2} <= set(v2_devices(pg)), 10, "both devices in V2",
                     interval=0.1)
    rows = v2_devices(pg)
    assert rows[d1]["tenant_id"] == "default_tenant_id", rows[d1]
    assert rows[d1]["name"] == "Boiler" and rows[d1]["template_id"] == "sensor", rows[d1]
    assert rows[d1]["attributes"] == {"interval": 30, "unit": "C"}, rows[d1]
    assert rows[d1]["metadata"] == {"migratedFrom": "v1", "originalType": "sensor"}, rows[d1]
    assert rows[d2]["tenant_id"] == "tenant-b" and rows[d2]["template_id"] == "gateway", rows[d2]
    assert rows[d2]["attributes"] == {"port": 8080} and rows[d2]["status"] == "OFFLINE", rows[d2]
    assert rows[d2]["metadata"] == {"migratedFrom": "v1", "originalType": "gateway"}, rows[d2]
    r = ml.send_json(d.port, "PATCH", "/devices/%s" % d1,
                     {"name": "Boiler 2", "config": {"interval": 60}})
    assert r.status == 200, r
    r = ml.send_json(d.port, "PATCH", "/devices/%s" % d2, {"status": "ONLINE"},
                     headers=[("X-Tenant-ID", "tenant-b")])
    assert r.status == 200, r
    helpers.wait_for(lambda: v2_devices(pg)[d1]["name"] == "Boiler 2" and
                     v2_devices(pg)[d2]["status"] == "ONLINE", 10, "both patches in V2",
                     interval=0.1)
    rows = v2_devices(pg)
    assert rows[d1]["attributes"] == {"interval": 60} and rows[d1]["tenant_id"] == \
        "default_tenant_id", rows[d1]
    assert rows[d2]["tenant_id"] == "tenant-b" and rows[d2]["attributes"] == {"port": 8080}, \
        rows[d2]
    out = ml.wait_outcomes(d, lambda o: o["result"] == "delivered", 4, 5, "4 delivered")
    assert {o["route"] for o in out} == {"device-create", "device-update"}, out
    assert [o for o in ml.mirror_outcomes(d) if o["result"] != "delivered"] == []


def shipped_iot_routes():
    """The routes section of the shipped conf/iot-v2.conf, as is."""
    with open(os.path.join(helpers.REPO_ROOT, "conf/iot-v2.conf")) as f:
        text = f.read()
    start = text.index("\nroutes = (")
    return text[start:text.index("\n);\n", start) + 4]


def test_iot_users_and_telemetry_batches_mirrored_with_tenant(svc, dw, pg):
    """The shipped routes: users created, renamed and deleted, one reading V1 stamps, and a
    1,000-reading batch for another tenant, mirrored as one write into V2's tables."""
    pg.sql("iot_v2", "INSERT INTO tenants (id, name, slug, plan, status) "
           "VALUES ('tenant-b', 'B', 'b', 'PRO', 'ACTIVE')")
    d = ml.mirror_daemon(dw, svc["iot-v1"].url, svc["iot-v2"].url, shipped_iot_routes(),
                         target="v2",
                         tenant={"header": "X-Tenant-ID", "default": "default_tenant_id"})
    r = ml.send_json(d.port, "POST", "/users", {"email": "a@x.test", "name": "A"})
    assert r.status == 201, r
    u1 = r.json()["id"]
    r = ml.send_json(d.port, "POST", "/users", {"email": "b@x.test", "role": "ADMIN"},
                     headers=[("X-Tenant-ID", "tenant-b")])
    assert r.status == 201, r
    u2 = r.json()["id"]
    r = ml.send_json(d.port, "PATCH", "/users/%s" % u1, {"name": "A. Person"})
    assert r.status == 200, r
    r = ml.send_json(d.port, "POST", "/telemetry", {"deviceId": "dev-1", "data": {"t": 21.5},
                                                   "protocol": "mqtt"})
    assert r.status == 201, r
    batch = [{"deviceId": "dev-%d" % (i % 5), "timestamp": "2025-01-01T00:%02d:%02d.%06dZ"
              % (i // 60 % 60, i % 60, i), "data": {"t": i / 2}, "protocol": "http",
              **({"source": "gw"} if i % 2 else {})} for i in range(1000)]
    r = ml.send_json(d.port, "POST", "/telemetry/batch", batch,
                     headers=[("X-Tenant-ID", "tenant-b")])
    assert r.status == 201 and r.json() == {"count": 1000}, r
    ml.wait_outcomes(d, lambda o: o["result"] == "delivered", 5, 10, "5 delivered")
    r = ml.send_json(d.port, "DELETE", "/users/%s" % u2)
    assert r.status == 204, r
    out = ml.wait_outcomes(d, lambda o: o["result"] == "delivered", 6, 10, "6 delivered")
    assert sorted(o["route"] for o in out) == sorted(
        ["user-create", "user-create", "user-update", "user-delete", "telemetry-ingest",
         "telemetry-batch"]), out
    assert [o for o in ml.mirror_outcomes(d) if o["result"] != "delivered"] == []

    users = {u["id"]: u for u in pg.rows_json("iot_v2", "SELECT * FROM users")}
    assert set(users) == {u1}, users
    v1u = pg.rows_json("iot_v1", "SELECT * FROM users")[0]
    assert users[u1]["tenant_id"] == "default_tenant_id" and users[u1]["name"] == "A. Person"
    assert (users[u1]["created_at"], users[u1]["updated_at"]) == \
        (v1u["created_at"], v1u["updated_at"]), (users[u1], v1u)
    # The single reading carries the timestamp V1 gave it.
    one = pg.rows_json("iot_v2", "SELECT * FROM telemetry WHERE tenant_id = 'default_tenant_id'")
    v1r = pg.rows_json("iot_v1", "SELECT * FROM device_data WHERE device_id = 'dev-1' "
                       "AND data = '{\"t\": 21.5}'")
    assert len(one) == 1 and one[0]["timestamp"] == v1r[0]["timestamp"], (one, v1r)
    assert one[0]["source"] == "migrated" and one[0]["quality"] == "GOOD"
    # Every row of the batch: the tenant, data -> metrics, source ?? 'migrated', GOOD.
    got = pg.rows_json("iot_v2", "SELECT tenant_id, device_id, metrics, source, quality, "
                       "to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
                       " AS ts FROM telemetry WHERE tenant_id = 'tenant-b' ORDER BY ts")
    assert len(got) == 1000
    for i, row in enumerate(got):
        assert row == {"tenant_id": "tenant-b", "device_id": batch[i]["deviceId"],
                       "metrics": batch[i]["data"], "source": "gw" if i % 2 else "migrated",
                       "quality": "GOOD", "ts": batch[i]["timestamp"]}, (i, row)


def shipped_iot_tables():
    """The tables section of the shipped conf/iot-v2.conf, as is (DSNs by dbname: the PG*
    environment of the cluster points the CLI at it)."""
    with open(os.path.join(helpers.REPO_ROOT, "conf/iot-v2.conf")) as f:
        text = f.read()
    start = text.index("\ntables = (")
    return text[start:text.index("\n);\n", start) + 4]


def test_iot_reading_decimals_reach_v2_unchanged_and_verify_equal(svc, dw, pg):
    """Readings with decimals (21.3, 0.1: jansson writes 21.300000000000001) mirrored through
    the shipped routes, one alone and a batch: V2 stores the numbers V1 stored, and `dualwrite
    verify --table telemetry` finds the tables equal."""
    d = ml.mirror_daemon(dw, svc["iot-v1"].url, svc["iot-v2"].url,
                         shipped_iot_routes() + shipped_iot_tables(), target="v2",
                         tenant={"header": "X-Tenant-ID", "default": "default_tenant_id"})
    data = {"temperature": 21.3, "humidity": 0.1, "pressure": 1013.25, "n": 3, "ratio": 1.0}
    r = ml.send_json(d.port, "POST", "/telemetry", {"deviceId": "dev-1", "data": data,
                                                   "protocol": "mqtt"})
    assert r.status == 201, r
    batch = [{"deviceId": "dev-2", "timestamp": "2025-01-01T00:00:0%dZ" % i,
              "data": {"temperature": 20 + i / 10, "v": 0.1 * i}, "protocol": "http"}
             for i in range(1, 6)]
    r = ml.send_json(d.port, "POST", "/telemetry/batch", batch)
    assert r.status == 201 and r.json() == {"count": 5}, r
    out = ml.wait_outcomes(d, lambda o: o["result"] == "delivered", 2, 10, "2 delivered")
    assert sorted(o["route"] for o in out) == ["telemetry-batch", "telemetry-ingest"], out

    r = subprocess.run([ml.cli_binary(), "verify", "-c", d.conf_path, "--table", "telemetry",
                        "--json"], env=ml._tool_env(pg.env), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode in (0, 1), r.stderr
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep["equal"] is True and rep["source_rows"] == 6 and rep["target_rows"] == 6, rep
    assert r.returncode == 0
    q = "SELECT device_id, %s::text FROM %s ORDER BY device_id, timestamp"
    v1 = pg.sql("iot_v1", q % ("data", "device_data"))
    v2 = pg.sql("iot_v2", q % ("metrics", "telemetry"))
    assert v1[0][1] == '{"n": 3, "ratio": 1.0, "humidity": 0.1, "pressure": 1013.25, ' \
        '"temperature": 21.3}', v1
    assert v2 == v1


# ---------------------------------------------------------------- 12. SIGTERM with mirrors in flight


def test_sigterm_with_mirrors_in_flight_queues_the_rest(svc, dw, pg):
    svc["gear-ops"].fault("slow", delay_ms=3000)
    d = ml.mirror_daemon(dw, svc["user-core"].url, svc["gear-ops"].url, ml.gear_routes(),
                         target_timeout_ms=6000, limits={"drain_timeout_ms": 2000})
    ids = []
    for n in range(4):
        t0 = time.monotonic()
        ids.append(create(d, n)["id"])
        assert time.monotonic() - t0 < 1.0 * helpers.SLOW, "client held by the slow mirror"
    d.stopped_by_test = True
    t0 = time.monotonic()
    rc = d.stop(signal.SIGTERM, timeout=10)
    took = time.monotonic() - t0
    assert rc == 0, "daemon exited %s after SIGTERM; log:\n%s" % (rc, d.log_text())
    assert took < 6.0 * helpers.SLOW, "drain took %.1f s, bound is 2 s" % took
    delivered = {o["key"] for o in ml.mirror_outcomes(d) if o["result"] == "delivered"}
    waiting = {r["key"] for r in ml.queue_list(d.conf_path)}
    st = ml.queue_stats(d.conf_path)
    assert st["dead"] == 0, st
    for i in ids:
        assert str(i) in delivered or str(i) in waiting, \
            "acknowledged write %s neither delivered nor queued; delivered %s, waiting %s; " \
            "log:\n%s" % (i, delivered, waiting, d.log_text())
    assert waiting, "with a 3 s target and a 2 s drain something must be left queued"
    svc["gear-ops"].fault("ok")
    ml.replay_until_drained(d.conf_path)
    wait_gear_ids(pg, ids)
    assert_tables_equal(pg)
    st = ml.queue_stats(d.conf_path)
    assert (st["pending"], st["queued"], st["dead"]) == (0, 0, 0), st


def test_circuit_breaker_queues_without_hammering_a_failing_target(svc, dw, make_backend):
    """After 5 retryable failures in a row the mirror stops sending to the target:
    later writes go straight to the queue (and are replayed), and once the target
    answers again a probe closes the circuit and writes are delivered directly."""
    target, up = down_until_up(make_backend)
    d = ml.mirror_daemon(dw, svc["user-core"].url, target.url, ml.gear_routes())
    ids = [create(d, n)["id"] for n in range(20)]
    wait_stats(d, lambda s: s["queued"] == 20 and s["pending"] == 0, 10, "20 queued")
    assert d.metric("dualwrite_mirror_circuit_open", upstream="gear_ops") == 1
    # Far fewer than 20 attempts reached the failing target.
    assert 5 <= len(target.requests) < 20, len(target.requests)
    out = ml.mirror_outcomes(d)
    assert any("circuit open" in o["line"] for o in out), [o["line"] for o in out]
    assert ml.mirror_total(d, route="equipment-create", result="queued") == 20
    # The target recovers; after the cooldown a probe closes the circuit.
    up.set()
    ml.replay_until_drained(d.conf_path)
    delivered = {json.loads(r.body)["id"] for r in target.requests if r.body}
    assert set(ids) <= delivered
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        create(d, 100)
        if d.metric("dualwrite_mirror_circuit_open", upstream="gear_ops") == 0:
            break
        time.sleep(0.3)
    assert d.metric("dualwrite_mirror_circuit_open", upstream="gear_ops") == 0
    d.wait_log("circuit closed")


def test_circuit_breaker_is_one_per_upstream_across_workers(svc, dw, make_backend):
    """With two workers the breaker is the upstream's, not each worker's: five failures
    in a row open it whichever workers' keys they were, so a failing target sees five
    sends, not five per worker, and the gauge says 1 (open), not how many workers."""
    target, _ = down_until_up(make_backend)
    d = ml.mirror_daemon(dw, svc["user-core"].url, target.url, ml.gear_routes(),
                         extra={"workers": 2})
    for n in range(BREAKER_FAILURES):
        # one at a time: each write's failure is noted before the next is sent
        assert d.metric("dualwrite_mirror_circuit_open", upstream="gear_ops") == 0, n
        create(d, n)
        ml.wait_outcomes(d, lambda o: o["result"] == "queued", n + 1, 10, "%d queued" % (n + 1))
    assert len(target.requests) == BREAKER_FAILURES, len(target.requests)
    assert d.metric("dualwrite_mirror_circuit_open", upstream="gear_ops") == 1
    d.wait_log("failed %d times in a row" % BREAKER_FAILURES)
    create(d, 99)
    out = ml.wait_outcomes(d, lambda o: o["result"] == "queued", BREAKER_FAILURES + 1, 10,
                           "the write after the opening queued")
    # queued unsent, or (a slow run past the 1 s cooldown) sent as the one probe
    assert ("circuit open" in out[-1]["line"]
            or len(target.requests) == BREAKER_FAILURES + 1), (out[-1]["line"],
                                                                 len(target.requests))


@pytest.mark.parametrize("mode", ["reset", "half-close"])
def test_client_gone_while_legacy_answers_still_mirrors(dw, make_backend, mode):
    """G2: the legacy acknowledged the write, so it is mirrored even though the
    client reset (or half-closed) its connection while the legacy was answering."""
    import socket
    import struct
    body = json.dumps(dict(ITEM, name="gone")).encode()

    def slow_legacy(req):
        return Reply(201, b'{"id": 77}', [("Content-Type", "application/json")], delay=1.0)
    legacy = make_backend(slow_legacy, name="legacy")
    target = json_backend(make_backend, "target", 201, {"ok": True})
    d = ml.mirror_daemon(dw, legacy.url, target.url, ml.gear_routes())
    s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
    s.sendall(b"POST /equipment HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    legacy.wait_requests(1, timeout=5)  # the write is at the legacy now
    if mode == "reset":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    else:
        s.shutdown(socket.SHUT_WR)
    out = ml.wait_outcomes(d, lambda o: o["result"] == "delivered", 1, 10, "delivered")
    assert out[0]["key"] == "77", out[0]["line"]
    treq = target.wait_requests(1, timeout=5)[0]
    assert json.loads(treq.body)["id"] == 77, treq
    if mode == "half-close":  # the client still gets its answer
        s.settimeout(5)
        got = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        s.close()
        assert got.startswith(b"HTTP/1.1 201"), got
        assert b"Connection: close" in got, got


def test_delete_with_response_pin_and_empty_answer_is_delivered(dw, make_backend):
    """conf/gear-ops.conf's delete: the legacy answers 204 with no body, and only the route's
    read-your-writes pin names $response (it does not evaluate: the upstream is pinned
    blind). The mirror needs nothing from the answer, so it is sent, not dead-lettered."""
    legacy = make_backend(lambda req: Reply(204, b""), name="legacy")
    target = json_backend(make_backend, "target", 204, {})
    routes = ml.gear_routes().replace('key       = "$path.id";\n      delivered = [ 404 ];',
                                      'key       = "$path.id";\n      delivered = [ 404 ];\n'
                                      '      pins      = [ "user:${$response.user_id}" ];')
    assert "pins" in routes
    d = ml.mirror_daemon(dw, legacy.url, target.url, routes)
    r = ml.send_json(d.port, "DELETE", "/equipment/9")
    assert r.status == 204, r
    out = ml.wait_outcomes(d, lambda o: o["route"] == "equipment-delete", 1, 10, "the delete")
    assert out[0]["result"] == "delivered", out[0]["line"]
    assert [t.target for t in target.wait_requests(1)] == ["/gear-items/9"]
    d.stop()
