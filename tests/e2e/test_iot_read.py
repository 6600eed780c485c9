"""End-to-end: the read routes of the shipped conf/iot-v2.conf (SPEC §7.1; issue 11, item 9)
over the demo services on a throwaway PostgreSQL.

V1 (single tenant) answers GET /devices/{id}, GET /devices and GET /users/{id}; at a weight
above 0 V2 serves them from its own tables, scoped by the caller's tenant ($tenant in V2's
query), mapped back to V1's shape (templateId -> type, attributes -> config, camelCase
timestamps -> snake_case; tenantId and metadata left out). The devices and users come both
from mirrored writes (Phase 2) and from the history copied by `dualwrite backfill`, so the
mirror bodies and the table maps are checked too: the rows must read the same on both sides.

Which side answered is told by the read metrics, by V2's tenant scoping (a tenant's list on
V2 holds only its devices; V1 has no tenants) and by a V2 row changed behind the proxy's back.
Every wait is bounded; nothing listens beyond 127.0.0.1.
"""

import json
import os
import subprocess

import helpers
import mirrorlib as ml

TENANT = {"header": "X-Tenant-ID", "default": "default_tenant_id"}
SHIPPED_WEIGHT = "      weight   = 0;\n"


def shipped_sections(weight):
    """The routes and tables of conf/iot-v2.conf, every read route at `weight`."""
    with open(os.path.join(helpers.REPO_ROOT, "conf", "iot-v2.conf")) as f:
        text = f.read()
    start = text.index("\nroutes = (")
    routes = text[start:text.index("\n);", start) + 3] + "\n"
    assert routes.count(SHIPPED_WEIGHT) == 3, "three read routes, shipped at weight 0"
    routes = routes.replace(SHIPPED_WEIGHT, "      weight   = %s;\n" % weight)
    start = text.index("\ntables = (")
    tables = text[start:text.index("\n);", start) + 3] + "\n"
    return routes + tables


def get(port, path, tenant=None):
    hs = [("Host", "t"), ("Connection", "close")]
    if tenant:
        hs.append(("X-Tenant-ID", tenant))
    r = helpers.request(port, "GET", path, hs)
    assert r.status == 200, (path, r)
    assert int(r.header("Content-Length")) == len(r.body), r
    return json.loads(r.body)


def reads(d, side, reason):
    return sum(d.metric("dualwrite_read_total", route=route, side=side, reason=reason)
               for route in ("device-get", "device-list", "user-get"))


def as_v2_reads(doc):
    """V1's answer as V2's rows read back: a V1 config null is V2's attributes {} (the
    guide's device.config || {})."""
    if isinstance(doc, list):
        return [as_v2_reads(x) for x in doc]
    if "config" in doc and doc["config"] is None:
        return dict(doc, config={})
    return doc


pg = ml.pg_fixture()


def test_shipped_iot_read_routes_serve_v2_rows_in_v1_shape(dw, pg, tmp_path):
    with ml.demo_services(pg, tmp_path, ("iot-v1", "iot-v2")) as started:
        v1, v2 = started["iot-v1"], started["iot-v2"]
        pg.sql("iot_v2", "INSERT INTO tenants (id, name, slug, plan, status) "
               "VALUES ('tenant-b', 'B', 'b', 'PRO', 'ACTIVE')")
        # V1's history (never seen by the proxy): a device without config, one never updated.
        pg.sql("iot_v1", """
INSERT INTO devices (id, name, type, config, status, created_at, updated_at) VALUES
  ('dev-h1', 'Old thermostat', 'thermostat', '{"unit": "C"}', 'ACTIVE',
   '2024-01-01 10:00:00.123456+00', '2024-02-01 10:00:00.654321+00'),
  ('dev-h2', 'Old camera', 'camera', NULL, 'OFFLINE', '2024-01-02 10:00:00+00', NULL);
INSERT INTO users (id, email, name, role, created_at, updated_at) VALUES
  ('usr-h1', 'old@farm.example', 'Old user', 'ADMIN', '2024-01-01 00:00:00+00',
   '2024-01-05 00:00:00.5+00');""")

        d = dw({"v1": {"url": v1.url, "timeout_ms": 5000},
                "v2": {"url": v2.url, "timeout_ms": 2000}},
               default_upstream="v1", extra={"tenant": TENANT, "log_level": "info"},
               start=False)
        d.write_config(d.config_text() + shipped_sections(0))
        d.start()

        # Phase 2 traffic through the proxy: mirrored to V2 with V1's ids and timestamps.
        r = ml.send_json(d.port, "POST", "/devices",
                         {"name": "Greenhouse", "type": "thermostat", "config": {"unit": "F"}})
        assert r.status == 201, r
        d1 = r.json()["id"]
        r = ml.send_json(d.port, "POST", "/devices", {"name": "Barn cam", "type": "camera"})
        assert r.status == 201, r
        d2 = r.json()["id"]
        r = ml.send_json(d.port, "POST", "/devices", {"name": "B's gate", "type": "gateway"},
                         headers=[("X-Tenant-ID", "tenant-b")])
        assert r.status == 201, r
        db = r.json()["id"]
        r = ml.send_json(d.port, "PATCH", "/devices/%s" % d1,
                         {"name": "Greenhouse (north)", "config": {"unit": "C"}})
        assert r.status == 200, r
        r = ml.send_json(d.port, "POST", "/users", {"email": "ops@farm.example", "name": "Ops"})
        assert r.status == 201, r
        u1 = r.json()["id"]
        r = ml.send_json(d.port, "PATCH", "/users/%s" % u1, {"role": "ADMIN"})
        assert r.status == 200, r
        helpers.wait_for(lambda: d.metric("dualwrite_mirror_total", result="delivered") >= 6,
                         20, "the 6 writes delivered to V2")
        # Phase 2.3: the history, by the shipped table maps; then verify compares every row,
        # the mirrored ones included (the same ids, timestamps and status on both sides). The
        # one difference: the default tenant on V2 does not hold tenant-b's device.
        for table, diffs in (("devices", [(db, "missing")]), ("users", [])):
            out = subprocess.run([ml.cli_binary(), "backfill", "-c", d.conf_path,
                                  "--table", table], env=pg.env, capture_output=True,
                                 text=True, timeout=60)
            assert out.returncode == 0, out.stdout + out.stderr
            out = subprocess.run([ml.cli_binary(), "verify", "-c", d.conf_path,
                                  "--table", table, "--json"], env=pg.env,
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode in (0, 1), out.stdout + out.stderr
            rep = json.loads(out.stdout.strip().splitlines()[-1])
            assert [(x["key"], x["kind"]) for x in rep["differences"]] == diffs, rep

        devices = ["dev-h1", "dev-h2", d1, d2]
        paths = ["/devices/%s" % i for i in devices] + ["/devices", "/users/usr-h1",
                                                        "/users/%s" % u1]
        direct = {p: json.loads(helpers.request(v1.port, "GET", p, [("Connection", "close")]).body)
                  for p in paths}
        default_list = [x for x in direct["/devices"] if x["id"] != db]
        assert len(default_list) == 4 and len(direct["/devices"]) == 5

        # Weight 0 (as shipped): V1 answers every read, unchanged.
        for p in paths:
            assert get(d.port, p) == direct[p], p
        assert reads(d, "legacy", "bucket") == len(paths)
        assert reads(d, "new", "bucket") == 0

        # Weight 100: V2 serves them from its own tables, in V1's shape, for the caller's tenant.
        d.reload(d.config_text() + shipped_sections(100))
        for p in paths:
            if p == "/devices":
                assert get(d.port, p) == as_v2_reads(default_list)  # the default tenant's
            else:
                assert get(d.port, p) == as_v2_reads(direct[p]), p
        assert get(d.port, "/devices", tenant="tenant-b") == \
            as_v2_reads([x for x in direct["/devices"] if x["id"] == db])
        assert reads(d, "new", "bucket") == len(paths) + 1
        # Another tenant's device is not the default tenant's on V2 (404): V1 answers it.
        assert get(d.port, "/devices/%s" % db) == direct["/devices"][-1]
        assert d.metric("dualwrite_read_total", route="device-get", side="legacy",
                        reason="fallback") == 1
        assert get(d.port, "/devices/%s" % db, tenant="tenant-b")["id"] == db
        # A V2 row changed behind the proxy's back: what the client reads is V2's row.
        pg.sql("iot_v2", "UPDATE devices SET name = 'renamed on V2' WHERE id = '%s'" % d2)
        assert get(d.port, "/devices/%s" % d2)["name"] == "renamed on V2"
        assert [x["name"] for x in get(d.port, "/devices") if x["id"] == d2] == ["renamed on V2"]

        # V2 failing: every read falls back to V1 within the same request.
        v2.fault("down503")
        fell = d.metric("dualwrite_read_total", side="legacy", reason="fallback")
        for p in paths:
            assert get(d.port, p) == direct[p], p
        assert d.metric("dualwrite_read_total", side="legacy", reason="fallback") == \
            fell + len(paths)
        v2.fault("ok")

        # Back to 0: V1 again, whatever V2 holds.
        d.reload(d.config_text() + shipped_sections(0))
        assert get(d.port, "/devices/%s" % d2) == direct["/devices/%s" % d2]
        d.finish()
