"""End-to-end tests of the mapping operators on mirrors (SPEC §3, §9; issue 13).

The real daemon runs the routes of the shipped conf/iot-v2.conf (its telemetry routes map a
JSON array element by element with `each`/`$item`, `??` and literals) in front of a recording
raw-socket legacy and mirror target (backends.py), all on 127.0.0.1: a telemetry batch of
1,000 rows is one mirrored request with the tenant on every row; after a target outage it is
one queued record, replayed as one request with the same body; a body that is not a list is
dead-lettered with the reason and never sent. "Nothing else arrived" is always checked after a
marker write that must arrive. Every wait is bounded.
"""

import json
import os
import sys
import threading

sys.dont_write_bytecode = True

import helpers  # noqa: E402
import mirrorlib as ml  # noqa: E402
from backends import Reply  # noqa: E402

TENANT = {"header": "X-Tenant-ID", "default": "default_tenant_id"}
ROWS = 1000


def iot_conf_routes():
    """The `routes = ( ... );` section of the shipped conf/iot-v2.conf, as is."""
    with open(os.path.join(helpers.REPO_ROOT, "conf", "iot-v2.conf")) as f:
        text = f.read()
    start = text.index("\nroutes = (")
    end = text.index("\n);", start) + 3
    return text[start:end] + "\n"


def batch(n=ROWS):
    rows = []
    for i in range(n):
        r = {"deviceId": "dev-%d" % (i % 17), "timestamp": "2024-05-01T00:%02d:%02d.%03dZ"
             % (i // 3600 % 60, i // 60 % 60, i % 1000), "data": {"temp": 20 + i % 7 * 0.5,
                                                                 "seq": i},
             "protocol": "mqtt" if i % 2 else "http"}
        if i % 3 == 0:
            r["source"] = "gateway-%d" % (i % 5)
        elif i % 3 == 1:
            r["source"] = None
        rows.append(r)
    return rows


def mapped(rows, tenant):
    """What the guide's migrateTelemetry makes of rows."""
    return [{"tenantId": tenant, "deviceId": r["deviceId"], "timestamp": r["timestamp"],
             "metrics": r["data"], "protocol": r["protocol"],
             "source": r.get("source") or "migrated", "quality": "GOOD"} for r in rows]


def daemon(dw, make_backend, target):
    legacy = make_backend(name="legacy")
    legacy.reply(201, b'{"ok": true}', [("Content-Type", "application/json")])
    d = ml.mirror_daemon(dw, legacy.url, target.url, iot_conf_routes(), target="v2",
                         tenant=TENANT)
    return d, legacy


def post(d, path, doc, tenant=None, body=None):
    hs = [("X-Tenant-ID", tenant)] if tenant else []
    r = ml.send_json(d.port, "POST", path, doc, headers=hs, body=body, timeout=30)
    assert r.status == 201 and r.body == b'{"ok": true}', r
    return r


MARKER = {"deviceId": "marker", "timestamp": "2024-05-02T00:00:00Z", "data": {},
          "protocol": "http"}


def test_telemetry_batch_is_one_mirrored_request_with_tenant_on_every_row(dw, make_backend):
    target = make_backend(name="target")
    target.reply(201, b'{"count": 1000}', [("Content-Type", "application/json")])
    d, legacy = daemon(dw, make_backend, target)
    rows = batch()
    post(d, "/telemetry/batch", rows, tenant="acme")
    assert json.loads(legacy.wait_requests(1, timeout=10)[0].body) == rows
    m = target.wait_requests(1, timeout=10)[0]
    assert (m.method, m.target) == ("POST", "/telemetry/batch"), m
    assert m.header("X-Dualwrite-Route") == "telemetry-batch", m
    got = json.loads(m.body)
    assert isinstance(got, list) and len(got) == ROWS, len(got)
    assert got == mapped(rows, "acme")
    # The marker (one reading) must arrive; by then nothing else did: one request per batch.
    post(d, "/telemetry", MARKER)
    reqs = target.wait_requests(2, timeout=10)
    assert [r.target for r in reqs] == ["/telemetry/batch", "/telemetry"], reqs
    assert json.loads(reqs[1].body)["tenantId"] == "default_tenant_id", reqs[1]
    assert json.loads(reqs[1].body)["source"] == "migrated", reqs[1]
    out = ml.wait_outcomes(d, lambda o: o["result"] == "delivered", 2, 10, "2 delivered")
    assert sorted(o["route"] for o in out) == ["telemetry-batch", "telemetry-ingest"], out
    assert ml.mirror_total(d, route="telemetry-batch", result="delivered") == 1


def test_telemetry_batch_queued_in_an_outage_is_replayed_as_one_record(dw, make_backend):
    up = threading.Event()

    def handler(req):
        if up.is_set():
            return Reply(201, b'{"ok": true}', [("Content-Type", "application/json")])
        return Reply(503, b'{"error": "down"}', [("Content-Type", "application/json")])
    target = make_backend(handler, name="target")
    d, _ = daemon(dw, make_backend, target)
    rows = batch()
    post(d, "/telemetry/batch", rows, tenant="acme")
    ml.wait_outcomes(d, lambda o: o["result"] == "queued", 1, 20, "batch queued")
    st = ml.queue_stats(d.conf_path)
    assert (st["queued"], st["dead"]) == (1, 0), st
    listed = ml.queue_list(d.conf_path)
    assert [(q["route"], q["method"], q["path"]) for q in listed] == \
        [("telemetry-batch", "POST", "/telemetry/batch")], listed
    failed = list(target.requests)
    assert failed and all(r.target == "/telemetry/batch" for r in failed), failed
    idem = failed[0].header("Idempotency-Key")
    assert idem and all(r.header("Idempotency-Key") == idem for r in failed), failed
    up.set()
    ml.replay_until_drained(d.conf_path)
    later = target.requests[len(failed):]
    assert len(later) == 1, "the batch was replayed as %d requests" % len(later)
    assert later[0].header("Idempotency-Key") == idem, later[0]
    assert later[0].body == failed[0].body
    assert json.loads(later[0].body) == mapped(rows, "acme")
    st = ml.queue_stats(d.conf_path)
    assert (st["pending"], st["queued"], st["dead"]) == (0, 0, 0), st


def test_batch_that_is_not_a_list_is_served_and_dead_lettered(dw, make_backend):
    target = make_backend(name="target")
    target.reply(201, b'{"ok": true}', [("Content-Type", "application/json")])
    d, legacy = daemon(dw, make_backend, target)
    post(d, "/telemetry/batch", {"rows": batch(2)})
    out = ml.wait_outcomes(d, lambda o: o["result"] == "dead", 1, 10, "dead")
    assert out[0]["route"] == "telemetry-batch", out[0]["line"]
    assert 'each: "$request" is an object, not a list' in (out[0]["reason"] or ""), out[0]
    dead = ml.wait_dead(d.conf_path, 1)
    assert len(dead) == 1 and dead[0]["route"] == "telemetry-batch", dead
    assert "not a list" in ml.queue_show(d.conf_path, dead[0]["seq"])
    # A row that cannot be mapped fails its whole batch too (never a partial batch).
    post(d, "/telemetry/batch", [MARKER, 5])
    out = ml.wait_outcomes(d, lambda o: o["result"] == "dead", 2, 10, "2 dead")
    assert "each: element 1 is a number, not an object" in (out[1]["reason"] or ""), out[1]
    # The marker arrives; nothing was sent for the two dead batches.
    post(d, "/telemetry", MARKER)
    reqs = target.wait_requests(1, timeout=10)
    assert [r.target for r in reqs] == ["/telemetry"], reqs
    assert len(legacy.requests) == 3
