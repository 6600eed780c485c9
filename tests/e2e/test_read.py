"""End-to-end tests of read routes (SPEC §7.1; issue 11): weighted reads shifted by reload,
answers mapped back, fallback.

The real daemon runs in front of two recording raw-socket backends on 127.0.0.1
(backends.py): a legacy that serves a user's equipment list in the legacy's shape
(`type`, items named "legacy-item") and a new system that serves `/gear-items?user_id=`
in its own shape (`{"items": [... "category" ...]}`, items named "new-item"). Which side
served a read is told by the item names, so no test needs to know the bucket hash.
"Nothing else arrived" is checked after a marker request that must arrive. Every wait and
every loop is bounded.
"""

import json
import os
import subprocess
import sys
import threading
import time
from urllib.parse import unquote

sys.dont_write_bytecode = True

import helpers  # noqa: E402
import mirrorlib as ml  # noqa: E402
from backends import Reply  # noqa: E402

JSON = [("Content-Type", "application/json")]


def legacy_handler(req):
    path = req.target.split("?")[0]
    parts = path.split("/")
    if len(parts) == 4 and parts[1] == "user" and parts[3] == "equipment":
        uid = unquote(parts[2])
        body = [{"id": 1, "user_id": uid, "name": "legacy-item", "type": "bike",
                 "brand": "b", "created_at": "2024-05-01T00:00:00Z"}]
        return Reply(200, json.dumps(body), JSON)
    return Reply(200, json.dumps({"legacy": req.target}), JSON)


def new_items(uid, n=2):
    return {"items": [{"id": i + 1, "user_id": uid, "name": "new-item", "category": "bike",
                       "brand": "b", "status": "active", "created_at": "2024-05-01T00:00:00Z",
                       "updated_at": "2024-05-02T00:00:00Z"} for i in range(n)]}


def new_handler(req):
    path, _, query = req.target.partition("?")
    if path == "/gear-items" and query.startswith("user_id="):
        return Reply(200, json.dumps(new_items(unquote(query[len("user_id="):]))), JSON)
    return Reply(200, json.dumps({"new": req.target}), JSON)


def routes(weight, fallback=True, response=True, sticky=True):
    resp = """
      response = {
        each = "$response.items";
        body = { id = "$item.id"; user_id = "$item.user_id"; name = "$item.name";
                 type = "$item.category"; brand = "$item.brand"; created_at = "$item.created_at"; };
      };""" if response else ""
    return """routes = (
  {
    name  = "equipment-list";
    match = "GET /user/{user_id}/equipment";
    read = {
      upstream = "gear_ops";
      path     = "/gear-items?user_id={user_id}";
      weight   = %s;%s
      fallback = %s;%s
    };
  },
  {
    name  = "marker";
    match = "GET /marker/{id}";
    read = { upstream = "gear_ops"; weight = 100; };
  }
);
""" % (weight, '\n      sticky   = "$path.user_id";' if sticky else "",
       "true" if fallback else "false", resp)


def start(dw, make_backend, weight, new_url=None, new_timeout_ms=2000, new=None, **kw):
    legacy = make_backend(legacy_handler, name="legacy")
    if new is None and new_url is None:
        new = make_backend(new_handler, name="gear_ops")
    d = dw({"legacy": {"url": legacy.url, "timeout_ms": 5000},
            "gear_ops": {"url": new_url or new.url, "timeout_ms": new_timeout_ms}},
           start=False)
    d.extra["log_level"] = "info"
    d.write_config(d.config_text() + routes(weight, **kw))
    d.start()
    return d, legacy, new


def config(d, weight, **kw):
    return d.config_text() + routes(weight, **kw)


def side_of(resp):
    """Which side served a list read, checking the answer is in the legacy's shape."""
    assert resp.status == 200, resp
    doc = json.loads(resp.body)
    assert isinstance(doc, list) and doc, doc
    names = {it["name"] for it in doc}
    assert len(names) == 1, doc
    for it in doc:
        assert "type" in it and "category" not in it, doc
    return {"legacy-item": "legacy", "new-item": "new"}[names.pop()]


def get(port, path, conn=None):
    if conn is not None:
        return conn.request("GET", path, [("Host", "t")])
    return helpers.request(port, "GET", path, [("Host", "t"), ("Connection", "close")])


def read_total(d, side, reason, route="equipment-list"):
    return d.metric("dualwrite_read_total", route=route, side=side, reason=reason)


def marker(d, new):
    """A read that must reach the new system: after it, what the new system got is final."""
    n = len(new.requests)
    r = get(d.port, "/marker/m")
    assert r.status == 200 and json.loads(r.body) == {"new": "/marker/m"}, r
    new.wait_requests(n + 1)


# ---------------------------------------------------------------- weights


def test_weight_0_every_read_goes_to_the_legacy(dw, make_backend):
    d, legacy, new = start(dw, make_backend, 0)
    with helpers.Conn(d.port) as c:
        for i in range(40):
            assert side_of(get(d.port, "/user/%d/equipment" % i, c)) == "legacy"
    marker(d, new)
    assert new.targets() == ["/marker/m"]
    assert len(legacy.requests) == 40
    assert read_total(d, "legacy", "bucket") == 40
    assert read_total(d, "new", "bucket") == 0
    assert d.metric("dualwrite_read_weight", route="equipment-list") == 0
    assert d.metric("dualwrite_read_weight", route="marker") == 100
    d.finish()


def test_weight_100_serves_the_mapped_list_from_the_new_system(dw, make_backend):
    d, legacy, new = start(dw, make_backend, 100)
    r = helpers.request(d.port, "GET", "/user/u%207/equipment",
                        [("Host", "t"), ("X-Request-Id", "rid-1"), ("Connection", "close")])
    assert r.status == 200, r
    assert r.header("Content-Type") == "application/json"
    assert int(r.header("Content-Length")) == len(r.body)
    assert json.loads(r.body) == [
        {"id": i + 1, "user_id": "u 7", "name": "new-item", "type": "bike", "brand": "b",
         "created_at": "2024-05-01T00:00:00Z"} for i in range(2)]
    got = new.wait_requests(1)[0]
    assert got.method == "GET"
    assert got.target == "/gear-items?user_id=u%207"
    assert got.header("X-Request-Id") == "rid-1"
    assert got.header("X-Forwarded-For") == "127.0.0.1"
    assert got.header("X-Forwarded-Proto") == "http"
    # keep-alive: several mapped answers on one connection, each framed right
    with helpers.Conn(d.port) as c:
        for i in range(5):
            assert side_of(get(d.port, "/user/%d/equipment" % i, c)) == "new"
    # nothing of it reached the legacy: a pass-through request is its first
    assert helpers.request(d.port, "GET", "/other", [("Host", "t"), ("Connection", "close")]).status == 200
    assert legacy.targets() == ["/other"]
    assert read_total(d, "new", "bucket") == 6
    st = json.loads(d.admin("/status").body)
    eq = [x for x in st["routes"] if x["name"] == "equipment-list"][0]
    assert eq["read"]["weight"] == 100 and eq["read"]["effective_weight"] == 100
    assert eq["read_weight"] == 100
    d.finish()


def test_unmapped_answer_passes_unchanged(dw, make_backend):
    d, legacy, new = start(dw, make_backend, 100, response=False)
    r = get(d.port, "/user/9/equipment")
    assert r.status == 200 and json.loads(r.body) == new_items("9")
    d.finish()


def test_weight_30_splits_sticky_keys_and_a_key_keeps_its_side(dw, make_backend):
    d, legacy, new = start(dw, make_backend, 30)
    sides = {}
    with helpers.Conn(d.port) as c:
        for i in range(400):
            sides[i] = side_of(get(d.port, "/user/k%d/equipment" % i, c))
        for _ in range(2):
            for i in range(0, 400, 8):
                assert side_of(get(d.port, "/user/k%d/equipment" % i, c)) == sides[i], i
    share = sum(1 for s in sides.values() if s == "new") / len(sides)
    assert 0.22 <= share <= 0.38, share
    assert d.metric("dualwrite_read_weight", route="equipment-list") == 30
    d.finish()


def test_no_sticky_value_draws_per_read(dw, make_backend):
    d, legacy, new = start(dw, make_backend, 50, sticky=False)
    seen = set()
    with helpers.Conn(d.port) as c:
        for _ in range(60):
            seen.add(side_of(get(d.port, "/user/same/equipment", c)))
    assert seen == {"legacy", "new"}
    d.finish()


def test_ramp_by_sighup_under_a_read_loop_with_no_failed_request(dw, make_backend):
    d, legacy, new = start(dw, make_backend, 10)
    keys = ["r%d" % i for i in range(150)]
    stop = threading.Event()
    failures = []
    done = [0]

    def loop():
        deadline = time.monotonic() + 60
        i = 0
        try:
            with helpers.Conn(d.port) as c:
                while not stop.is_set() and time.monotonic() < deadline and done[0] < 20000:
                    r = get(d.port, "/user/%s/equipment" % keys[i % len(keys)], c)
                    side_of(r)
                    done[0] += 1
                    i += 1
        except Exception as e:  # noqa: BLE001 - any failure fails the test below
            failures.append(repr(e))

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for t in threads:
        t.start()
    prev = None
    try:
        for w in (10, 30, 50, 80, 100):
            if w != 10:
                d.reload(config(d, w))
            now = {}
            with helpers.Conn(d.port) as c:
                for k in keys:
                    now[k] = side_of(get(d.port, "/user/%s/equipment" % k, c))
            if prev:
                moved_back = [k for k in keys if prev[k] == "new" and now[k] != "new"]
                assert not moved_back, (w, moved_back)
            share = sum(1 for k in keys if now[k] == "new") / len(keys)
            assert abs(share - w / 100) <= 0.12, (w, share)
            assert d.metric("dualwrite_read_weight", route="equipment-list") == w
            prev = now
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures
    assert done[0] > 0
    assert all(s == "new" for s in prev.values())
    d.finish()


# ---------------------------------------------------------------- fallback


def test_fallback_when_the_new_system_is_down(dw, make_backend):
    down = helpers.free_port()
    d, legacy, _ = start(dw, make_backend, 100, new_url="http://127.0.0.1:%d" % down)
    for i in range(3):
        r = get(d.port, "/user/%d/equipment" % i)
        assert side_of(r) == "legacy"
        assert int(r.header("Content-Length")) == len(r.body)
    assert read_total(d, "legacy", "fallback") == 3
    assert read_total(d, "new", "bucket") == 0
    assert len(legacy.requests) == 3
    # pipelined: each falls back in turn, answered in order
    with helpers.Conn(d.port) as c:
        c.send(b"".join(helpers.build_request("GET", "/user/p%d/equipment" % i, [("Host", "t")])
                        for i in range(3)))
        for i in range(3):
            r = c.read_response()
            assert side_of(r) == "legacy" and json.loads(r.body)[0]["user_id"] == "p%d" % i
    assert read_total(d, "legacy", "fallback") == 6
    d.finish()


def failing_new(make_backend, reply):
    def handler(req):
        if req.target.startswith("/gear-items"):
            return reply
        return new_handler(req)
    return make_backend(handler, name="gear_ops")


def test_fallback_on_500_on_404_on_timeout_and_on_an_unmappable_answer(dw, make_backend):
    cases = [Reply(500, b'{"error": "boom"}', JSON),
             Reply(404, b'{"error": "no such user"}', JSON),
             Reply(200, b'{"error": "no items here"}', JSON),   # `each` finds no list
             Reply(200, b'not json', [("Content-Type", "text/plain")]),
             Reply(200, json.dumps(new_items("x")), JSON, framing="chunked", chunk_size=7,
                   delay=1.5)]  # slower than timeout_ms
    for n, reply in enumerate(cases):
        new = failing_new(make_backend, reply)
        d, legacy, _ = start(dw, make_backend, 100, new=new, new_timeout_ms=500)
        with helpers.Conn(d.port) as c:
            for i in range(2):
                r = get(d.port, "/user/%d/equipment" % i, c)
                assert side_of(r) == "legacy", (n, r)
        new.wait_requests(2)
        assert read_total(d, "legacy", "fallback") == 2, n
        d.finish()


def test_a_slow_chunked_answer_within_the_timeout_is_mapped(dw, make_backend):
    new = failing_new(make_backend, Reply(200, json.dumps(new_items("x", 50)), JSON,
                                          framing="chunked", chunk_size=100, delay=0.1))
    d, legacy, _ = start(dw, make_backend, 100, new=new)
    r = get(d.port, "/user/x/equipment")
    assert side_of(r) == "new" and len(json.loads(r.body)) == 50
    assert int(r.header("Content-Length")) == len(r.body)
    assert r.header("Transfer-Encoding") is None
    d.finish()


def test_a_close_delimited_answer_is_mapped_and_a_10_client_gets_it_whole(dw, make_backend):
    new = failing_new(make_backend, Reply(200, json.dumps(new_items("x", 3)), JSON,
                                          framing="close"))
    d, legacy, _ = start(dw, make_backend, 100, new=new)
    r = get(d.port, "/user/x/equipment")
    assert side_of(r) == "new" and len(json.loads(r.body)) == 3
    assert int(r.header("Content-Length")) == len(r.body)
    r = helpers.request(d.port, "GET", "/user/x/equipment", [("Host", "t")], version="HTTP/1.0")
    assert side_of(r) == "new" and int(r.header("Content-Length")) == len(r.body)
    d.finish()


def test_an_answer_over_the_body_limit_falls_back(dw, make_backend):
    new = failing_new(make_backend, Reply(200, json.dumps(new_items("x", 400)), JSON))
    legacy = make_backend(legacy_handler, name="legacy")
    d = dw({"legacy": {"url": legacy.url}, "gear_ops": {"url": new.url}},
           limits={"max_body_bytes": 4096}, start=False)
    d.write_config(d.config_text() + routes(100))
    d.start()
    assert side_of(get(d.port, "/user/x/equipment")) == "legacy"
    assert read_total(d, "legacy", "fallback") == 1
    d.finish()


def test_without_fallback_the_client_sees_502_or_the_new_systems_answer(dw, make_backend):
    down = helpers.free_port()
    d, legacy, _ = start(dw, make_backend, 100, new_url="http://127.0.0.1:%d" % down,
                         fallback=False)
    r = get(d.port, "/user/1/equipment")
    helpers.assert_json_error(r, 502)
    assert read_total(d, "new", "bucket") == 1
    assert read_total(d, "legacy", "fallback") == 0
    d.finish()

    new = failing_new(make_backend, Reply(404, b'{"error": "no such user"}', JSON))
    d, legacy, _ = start(dw, make_backend, 100, new=new, fallback=False)
    r = get(d.port, "/user/1/equipment")
    assert r.status == 404 and json.loads(r.body) == {"error": "no such user"}
    assert read_total(d, "new", "bucket") == 1
    assert not [x for x in legacy.requests if x.target.startswith("/user/")]
    d.finish()


def test_unmappable_without_fallback_is_a_502(dw, make_backend):
    new = failing_new(make_backend, Reply(200, b'{"error": "no items"}', JSON))
    d, legacy, _ = start(dw, make_backend, 100, new=new, fallback=False)
    r = get(d.port, "/user/1/equipment")
    helpers.assert_json_error(r, 502)
    assert "not mappable" in json.loads(r.body)["error"]
    assert not [x for x in legacy.requests if x.target.startswith("/user/")]
    d.finish()


# ---------------------------------------------------------------- configuration


def test_config_errors_name_file_and_line(dw, make_backend, tmp_path):
    legacy = make_backend(legacy_handler, name="legacy")
    new = make_backend(new_handler, name="gear_ops")
    d = dw({"legacy": {"url": legacy.url}, "gear_ops": {"url": new.url}}, start=False)
    text = d.config_text() + routes(33.333)
    path = os.path.join(str(tmp_path), "bad.conf")
    with open(path, "w") as f:
        f.write(text)
    line = text.splitlines().index("      weight   = 33.333;") + 1
    p = subprocess.run([helpers.daemon_binary(), "-t", "-c", path], capture_output=True,
                       text=True, timeout=20)
    assert p.returncode != 0
    assert '%s:%d: route "equipment-list": read.weight: 33.333' % (path, line) in p.stderr, p.stderr

    # a running daemon refuses it on reload and keeps its weights
    d.write_config(d.config_text() + routes(100))
    d.start()
    d.reload(text, expect="failed")
    assert side_of(get(d.port, "/user/1/equipment")) == "new"
    assert d.metric("dualwrite_read_weight", route="equipment-list") == 100
    d.finish()


# ---------------------------------------------------------------- the shipped Gear Ops configuration


def gear_conf_routes(weight):
    """The `routes = ( ... );` section of the shipped conf/gear-ops.conf, with the list
    route's weight set."""
    with open(os.path.join(helpers.REPO_ROOT, "conf", "gear-ops.conf")) as f:
        text = f.read()
    start_at = text.index("\nroutes = (")
    end = text.index("\n);", start_at) + 3
    routes_text = text[start_at:end] + "\n"
    shipped = '      path     = "/gear-items?user_id={id}";   # gear_ops answers a JSON array\n' \
              '      weight   = 0;\n'
    assert shipped in routes_text  # Phase 3 starts at 0
    return routes_text.replace(shipped, shipped.replace("= 0;", "= %s;" % weight))


pg = ml.pg_fixture()


def test_shipped_gear_ops_read_route_over_the_demo_services(dw, pg, tmp_path):
    with ml.demo_services(pg, tmp_path, ("user-core", "gear-ops")) as started:
        uc, go = started["user-core"], started["gear-ops"]
        d = dw({"user_core": {"url": uc.url}, "gear_ops": {"url": go.url}},
               default_upstream="user_core", start=False)
        d.extra["log_level"] = "info"
        d.write_config(d.config_text() + gear_conf_routes(0))
        d.start()
        for n in range(3):
            r = ml.send_json(d.port, "POST", "/equipment",
                             {"user_id": 42, "name": "item %d" % n, "type": "tent",
                              "brand": "MSR"})
            assert r.status == 201, r
        helpers.wait_for(lambda: len(pg.sql("gear_ops", "SELECT id FROM gear_items")) == 3,
                         20, "3 mirrored gear items")
        # delivered as far as the daemon knows: the user's list is no longer pinned
        ml.wait_outcomes(d, lambda o: o["result"] == "delivered", 3, 20, "3 delivered")
        legacy_answer = get(d.port, "/user/42/equipment")
        assert legacy_answer.status == 200
        want = json.loads(legacy_answer.body)
        assert [x["type"] for x in want] == ["tent"] * 3
        assert read_total(d, "legacy", "bucket") == 1

        d.reload(d.config_text() + gear_conf_routes(100))
        r = get(d.port, "/user/42/equipment")
        assert r.status == 200, r
        assert json.loads(r.body) == want  # gear_ops's rows, in user_core's shape
        assert int(r.header("Content-Length")) == len(r.body)
        assert read_total(d, "new", "bucket") == 1

        go.fault("down503")
        r = get(d.port, "/user/42/equipment")
        assert r.status == 200 and json.loads(r.body) == want
        assert read_total(d, "legacy", "fallback") == 1
        go.fault("ok")
        d.finish()
