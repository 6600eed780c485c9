"""End-to-end tests of read-your-writes (SPEC §7.2) and shadow comparison (SPEC §7.3).

The real daemon runs in front of two recording backends on 127.0.0.1 (backends.py): a
legacy serving Gear Ops' old API (POST /equipment answers the new item's id; GET
/equipment/{id} one item; GET /user/{id}/equipment a user's list) and a new system serving
/gear-items in its own shape. Which side served a read is told by the item names
("legacy-item" / "new-item"), so no test needs to know the bucket hash: every read route is
at weight 100 (the new system serves every read that is not pinned).

The relation for the list: the list route's key is "user:${$path.id}" and the create's
mirror pins "user:${$request.user_id}" besides its ordering key (the item id).

Every wait is on an event (a log line, a request arriving, a counter) and bounded.
"""

import json
import sys
import threading
import time
from urllib.parse import unquote

sys.dont_write_bytecode = True

import helpers  # noqa: E402
import mirrorlib  # noqa: E402
from backends import Reply  # noqa: E402

JSON = [("Content-Type", "application/json")]


def item(iid, uid, name, shape):
    it = {"id": iid, "user_id": uid, "name": name, "brand": "b",
          "created_at": "2024-05-01T00:00:00Z"}
    if shape == "legacy":
        it["type"] = "bike"
    else:
        it.update(category="bike", status="active", updated_at="2024-05-02T00:00:00Z")
    return it


class Legacy:
    """The legacy: every write is taken; reads answer legacy-item (after read_delay)."""

    def __init__(self, read_delay=0.0):
        self.next_id = 42
        self.read_delay = read_delay

    def __call__(self, req):
        path = req.target.split("?")[0]
        parts = path.split("/")
        if req.method == "POST" and path == "/equipment":
            doc = json.loads(req.body or b"{}")
            iid = self.next_id
            self.next_id += 1
            return Reply(201, json.dumps(item(iid, doc.get("user_id"), "legacy-item", "legacy")),
                         JSON)
        if len(parts) == 3 and parts[1] == "equipment":
            return Reply(200, json.dumps(item(int(parts[2]), "7", "legacy-item", "legacy")), JSON,
                         delay=self.read_delay)
        if len(parts) == 4 and parts[1] == "user":
            uid = unquote(parts[2])
            return Reply(200, json.dumps([item(1, uid, "legacy-item", "legacy")]), JSON)
        return Reply(200, json.dumps({"legacy": req.target}), JSON)


class New:
    """The new system: reads answer new-item; writes answer 503 while `down` is set, and
    wait for `release` while `hold` is set."""

    def __init__(self, read_name="new-item", read_status=200, read_delay=0.0):
        self.down = threading.Event()
        self.hold = threading.Event()
        self.release = threading.Event()
        self.writes = []
        self.read_name = read_name
        self.read_status = read_status
        self.read_delay = read_delay
        self.reject = False

    def __call__(self, req):
        path, _, query = req.target.partition("?")
        if req.method in ("POST", "PUT", "DELETE"):
            if self.down.is_set():
                return Reply(503, "down", [("Content-Type", "text/plain")])
            if self.reject:
                return Reply(400, "no", [("Content-Type", "text/plain")])
            if self.hold.is_set():
                self.release.wait(20)
            self.writes.append(req.target)
            return Reply(201, req.body or b"{}", JSON)
        if path == "/gear-items" and query.startswith("user_id="):
            uid = unquote(query[len("user_id="):])
            return Reply(self.read_status, json.dumps([item(1, uid, self.read_name, "new")]), JSON,
                         delay=self.read_delay)
        if path.startswith("/gear-items/"):
            return Reply(self.read_status,
                         json.dumps(item(int(path.split("/")[2]), "7", self.read_name, "new")),
                         JSON, delay=self.read_delay)
        return Reply(200, json.dumps({"new": req.target}), JSON)


MAP_ONE = """{ id = "$response.id"; user_id = "$response.user_id"; name = "$response.name";
                 type = "$response.category"; brand = "$response.brand";
                 created_at = "$response.created_at"; }"""
MAP_EACH = """{ id = "$item.id"; user_id = "$item.user_id"; name = "$item.name";
                 type = "$item.category"; brand = "$item.brand"; created_at = "$item.created_at"; }"""


def routes(weight=100, shadow=0, compare="", pins=True):
    sh = "shadow = %s; %s" % (shadow, compare) if shadow else ""
    return """routes = (
  { name = "equipment-list"; match = "GET /user/{id}/equipment";
    read = { upstream = "gear_ops"; path = "/gear-items?user_id={id}"; weight = %(w)s;
             sticky = "$path.id"; key = "user:${$path.id}"; %(sh)s
             response = { each = "$response"; body = %(each)s; }; }; },
  { name = "equipment-get"; match = "GET /equipment/{id}";
    read = { upstream = "gear_ops"; path = "/gear-items/{id}"; weight = %(w)s;
             sticky = "$path.id"; %(sh)s
             response = { body = %(one)s; }; }; },
  { name = "equipment-create"; match = "POST /equipment";
    mirror = { upstream = "gear_ops"; path = "/gear-items"; key = "$response.id";
               %(pins)s
               body = { id = "$response.id"; user_id = "$request.user_id";
                        name = "$request.name"; category = "$request.type"; }; }; },
  { name = "marker"; match = "GET /marker/{id}"; read = { upstream = "gear_ops"; weight = 100; }; }
);
""" % {"w": weight, "sh": sh, "each": MAP_EACH, "one": MAP_ONE,
       "pins": 'pins = [ "user:${$request.user_id}" ];' if pins else ""}


def start(dw, make_backend, new_handler=None, new_timeout_ms=2000, legacy_handler=None, **kw):
    legacy = make_backend(legacy_handler or Legacy(), name="legacy")
    nh = new_handler or New()
    new = make_backend(nh, name="gear_ops")
    d = mirrorlib.mirror_daemon(dw, legacy.url, new.url, routes(**kw),
                                target_timeout_ms=new_timeout_ms)
    return d, legacy, new, nh


def get(d, path):
    return helpers.request(d.port, "GET", path, [("Host", "t"), ("Connection", "close")])


def side_of(resp):
    assert resp.status == 200, resp
    doc = json.loads(resp.body)
    items = doc if isinstance(doc, list) else [doc]
    names = {it["name"] for it in items}
    assert len(names) == 1, doc
    for it in items:
        assert "type" in it and "category" not in it, doc
    return {"legacy-item": "legacy", "new-item": "new"}[names.pop()]


def create(d, uid):
    r = mirrorlib.send_json(d.port, "POST", "/equipment", {"user_id": uid, "name": "n",
                                                           "type": "bike"})
    assert r.status == 201, r
    return json.loads(r.body)["id"]


def read_total(d, route, side, reason):
    return d.metric("dualwrite_read_total", route=route, side=side, reason=reason)


def status_read(d, route):
    st = json.loads(d.admin("/status").body)
    return [x for x in st["routes"] if x["name"] == route][0]["read"]


def wait_side(d, path, side, timeout=10):
    """Read path until the given side serves it (the pin is given back on the queue's
    1 s tick after a replay): bounded."""
    last = []
    deadline = time.monotonic() + timeout * helpers.SLOW
    while time.monotonic() < deadline:
        s = side_of(get(d, path))
        if s == side:
            return
        last.append(s)
        time.sleep(0.05)
    raise AssertionError("%s not served by %s within %ss (%s)" % (path, side, timeout, last[-3:]))


# ---------------------------------------------------------------- read-your-writes


def test_pinned_while_the_target_is_down_then_new_after_replay_also_across_a_restart(
        dw, make_backend):
    d, legacy, new, nh = start(dw, make_backend)
    nh.down.set()
    iid = create(d, "7")
    mirrorlib.wait_outcomes(d, lambda o: o["result"] == "queued", 1, 10, "queued")
    # the item's own read (ordering key) and the user's list (the pins relation)
    assert side_of(get(d, "/equipment/%d" % iid)) == "legacy"
    assert side_of(get(d, "/user/7/equipment")) == "legacy"
    # other keys still go to the new system
    assert side_of(get(d, "/equipment/%d" % (iid + 100))) == "new"
    assert side_of(get(d, "/user/8/equipment")) == "new"
    assert read_total(d, "equipment-get", "legacy", "pinned") == 1
    assert read_total(d, "equipment-list", "legacy", "pinned") == 1
    rd = status_read(d, "equipment-list")
    assert rd["pinned_keys"] == 2 and rd["blind_writes"] == 0, rd  # "42" and "user:7"
    # runtime state: a reload keeps it
    d.reload(d.config_text() + routes())
    assert side_of(get(d, "/user/7/equipment")) == "legacy"
    assert status_read(d, "equipment-list")["pinned_keys"] == 2

    # A restart finds the write in the queue: its key stays pinned; the queue does not keep
    # pins, so every key its route's pins could name ("user:*") is pinned until it is
    # delivered; other items' reads go on to the new system.
    d.stop()
    d.start()
    assert side_of(get(d, "/equipment/%d" % iid)) == "legacy"
    assert side_of(get(d, "/user/7/equipment")) == "legacy"
    assert side_of(get(d, "/user/8/equipment")) == "legacy"
    assert side_of(get(d, "/equipment/%d" % (iid + 100))) == "new"
    rd = status_read(d, "equipment-list")
    assert rd["prefix_pins"] == 1 and rd["blind_writes"] == 0, rd
    d.wait_log("read-your-writes: 1 waiting writes pin their keys")

    nh.down.clear()
    mirrorlib.replay_until_drained(d.conf_path)
    wait_side(d, "/equipment/%d" % iid, "new")
    assert side_of(get(d, "/user/7/equipment")) == "new"
    assert side_of(get(d, "/user/8/equipment")) == "new"
    rd = status_read(d, "equipment-list")
    assert rd["pinned_keys"] == 0 and rd["blind_writes"] == 0 and rd["prefix_pins"] == 0, rd
    d.finish()


def test_pinned_while_in_flight_until_delivered(dw, make_backend):
    d, legacy, new, nh = start(dw, make_backend)
    nh.hold.set()
    try:
        iid = create(d, "9")  # the client's answer does not wait for the mirror
        new.wait_requests(1)  # the mirror is on the wire, held by the new system
        assert side_of(get(d, "/equipment/%d" % iid)) == "legacy"
        assert side_of(get(d, "/user/9/equipment")) == "legacy"
        assert side_of(get(d, "/user/10/equipment")) == "new"
    finally:
        nh.release.set()
    mirrorlib.wait_outcomes(d, lambda o: o["result"] == "delivered", 1, 10, "delivered")
    # given back as soon as it is delivered, not on a tick
    assert side_of(get(d, "/equipment/%d" % iid)) == "new"
    assert side_of(get(d, "/user/9/equipment")) == "new"
    d.finish()


def test_a_dead_letter_stays_pinned_until_purged(dw, make_backend):
    d, legacy, new, nh = start(dw, make_backend)
    nh.reject = True  # the new system refuses the write for good (400): dead-lettered
    iid = create(d, "7")
    mirrorlib.wait_outcomes(d, lambda o: o["result"] == "dead", 1, 10, "dead")
    assert side_of(get(d, "/equipment/%d" % iid)) == "legacy"
    assert side_of(get(d, "/user/7/equipment")) == "legacy"
    out = mirrorlib.cli(d.conf_path, "queue", "purge", "--dead")
    assert out.returncode == 0, out.stderr
    wait_side(d, "/equipment/%d" % iid, "new")
    assert side_of(get(d, "/user/7/equipment")) == "new"
    d.finish()


def test_without_pins_the_list_is_not_pinned_by_an_item_write(dw, make_backend):
    """What the relation is for: without `pins`, only the item's own key is pinned."""
    d, legacy, new, nh = start(dw, make_backend, pins=False)
    nh.down.set()
    iid = create(d, "7")
    mirrorlib.wait_outcomes(d, lambda o: o["result"] == "queued", 1, 10, "queued")
    assert side_of(get(d, "/equipment/%d" % iid)) == "legacy"
    assert side_of(get(d, "/user/7/equipment")) == "new"
    nh.down.clear()
    mirrorlib.replay_until_drained(d.conf_path)
    wait_side(d, "/equipment/%d" % iid, "new")
    d.finish()


# ---------------------------------------------------------------- shadow

IGNORE_NAME = 'compare = { ignore = [ "name" ]; unordered = true; };'


def shadow_counts(d, route="equipment-get"):
    return {r: d.metric("dualwrite_shadow_total", route=route, result=r)
            for r in ("match", "mismatch", "error", "skipped")}


def wait_shadow(d, n, route="equipment-get", timeout=10):
    """The shadow outcomes of route once they add up to n (they settle after the client's
    answer): bounded."""
    deadline = time.monotonic() + timeout * helpers.SLOW
    while True:
        c = shadow_counts(d, route)
        if sum(c.values()) >= n:
            return c
        if time.monotonic() > deadline:
            raise AssertionError("shadow outcomes %r did not reach %d" % (c, n))
        time.sleep(0.02)


def test_shadow_match_with_the_ignore_list_and_status(dw, make_backend):
    # the new system's items are named differently: equal once "name" is ignored
    d, legacy, new, nh = start(dw, make_backend, weight=0, shadow=100, compare=IGNORE_NAME, pins=False)
    for i in range(5):
        assert side_of(get(d, "/equipment/%d" % i)) == "legacy"
    assert side_of(get(d, "/user/3/equipment")) == "legacy"
    assert wait_shadow(d, 5) == {"match": 5, "mismatch": 0, "error": 0, "skipped": 0}
    assert wait_shadow(d, 1, "equipment-list")["match"] == 1
    # the shadow went to the new system with the route's path
    assert sorted(r.target for r in new.requests) == sorted(
        ["/gear-items/%d" % i for i in range(5)] + ["/gear-items?user_id=3"])
    rd = status_read(d, "equipment-get")
    assert rd["shadow"] == {"match": 5, "mismatch": 0, "error": 0, "skipped": 0}, rd
    assert rd["shadow_percent"] == 100
    assert "shadow mismatch" not in d.log_text()
    d.finish()


def test_shadow_mismatch_is_counted_and_logged_with_the_differing_paths(dw, make_backend):
    d, legacy, new, nh = start(dw, make_backend, weight=0, shadow=100, pins=False)
    assert side_of(get(d, "/equipment/5")) == "legacy"
    assert wait_shadow(d, 1) == {"match": 0, "mismatch": 1, "error": 0, "skipped": 0}
    log = d.wait_log("shadow mismatch route=equipment-get")
    line = [ln for ln in log.splitlines() if "shadow mismatch" in ln][0]
    assert "path=/equipment/5 differ=$.name" in line, line
    # served by the new system, shadowed to the legacy: the same comparison
    d2, legacy2, new2, nh2 = start(dw, make_backend, weight=100, shadow=100, pins=False)
    assert side_of(get(d2, "/user/8/equipment")) == "new"
    assert wait_shadow(d2, 1, "equipment-list")["mismatch"] == 1
    log = d2.wait_log("shadow mismatch route=equipment-list")
    assert "path=/user/8/equipment differ=$[0].name" in log, log
    assert legacy2.targets() == ["/user/8/equipment"]
    d.finish()
    d2.finish()


def test_shadow_error_when_the_new_system_fails_and_skipped_when_pinned(dw, make_backend):
    d, legacy, new, nh = start(dw, make_backend, New(read_status=500), weight=0, shadow=100,
                               compare=IGNORE_NAME)
    assert side_of(get(d, "/equipment/5")) == "legacy"
    assert wait_shadow(d, 1) == {"match": 0, "mismatch": 0, "error": 1, "skipped": 0}
    # a read whose key has a write not yet delivered is not shadowed
    nh.down.set()
    iid = create(d, "7")
    mirrorlib.wait_outcomes(d, lambda o: o["result"] == "queued", 1, 10, "queued")
    assert side_of(get(d, "/equipment/%d" % iid)) == "legacy"
    assert wait_shadow(d, 2) == {"match": 0, "mismatch": 0, "error": 1, "skipped": 1}
    d.finish()


class ClosesReused(New):
    """A new system whose keep-alive timer fires just as the next read arrives: a second
    read on a connection finds it closed, unanswered."""

    def __init__(self):
        super().__init__()
        self.conns = set()

    def __call__(self, req):
        if req.method == "GET" and req.conn_no in self.conns:
            return Reply(action="close")
        self.conns.add(req.conn_no)
        return super().__call__(req)


def test_a_shadow_whose_pooled_connection_was_closed_under_it_goes_once_more(dw, make_backend):
    """A read is safe to send twice: a pooled connection closed before any byte of the
    answer sends the shadow again on a new connection; it matches, not an error."""
    d, legacy, new, nh = start(dw, make_backend, ClosesReused(), weight=0, shadow=100,
                               compare=IGNORE_NAME, pins=False)
    n = 6
    for i in range(n):  # one at a time: each finds the last one's connection in the pool
        assert side_of(get(d, "/equipment/%d" % i)) == "legacy"
        wait_shadow(d, i + 1)
    assert wait_shadow(d, n) == {"match": n, "mismatch": 0, "error": 0, "skipped": 0}
    assert len(new.requests) > n, "no pooled connection was reused: nothing was tested"
    d.finish()


def test_a_slow_shadow_side_never_delays_the_client(dw, make_backend):
    # new system slow (2 s) as the shadow side of legacy-served reads
    d, legacy, new, nh = start(dw, make_backend, New(read_delay=2.0), weight=0, shadow=100,
                               new_timeout_ms=5000, compare=IGNORE_NAME, pins=False)
    t0 = time.monotonic()
    for i in range(3):
        assert side_of(get(d, "/equipment/%d" % i)) == "legacy"
    assert time.monotonic() - t0 < 1.5
    assert wait_shadow(d, 3)["match"] == 3
    # legacy slow (2 s) as the shadow side of new-served reads
    d2, legacy2, new2, nh2 = start(dw, make_backend, legacy_handler=Legacy(read_delay=2.0),
                                   weight=100, shadow=100, compare=IGNORE_NAME, pins=False)
    t0 = time.monotonic()
    assert side_of(get(d2, "/equipment/1")) == "new"
    assert time.monotonic() - t0 < 1.5
    assert wait_shadow(d2, 1)["match"] == 1
    d.finish()
    d2.finish()


def test_shadow_work_is_bounded_past_the_cap_it_is_skipped(dw, make_backend):
    d, legacy, new, nh = start(dw, make_backend, New(read_delay=2.0), weight=0, shadow=100,
                               new_timeout_ms=5000, compare=IGNORE_NAME, pins=False)
    n = 200
    with helpers.Conn(d.port) as c:
        t0 = time.monotonic()
        for i in range(n):
            r = c.request("GET", "/equipment/%d" % i, [("Host", "t")])
            assert side_of(r) == "legacy"
        fast = time.monotonic() - t0 < 2.0
    counts = wait_shadow(d, n, timeout=20)
    if fast:  # one connection, one worker, all in flight at once: 64 started, the rest not
        assert counts == {"match": 64, "mismatch": 0, "error": 0, "skipped": n - 64}, counts
    assert counts["skipped"] > 0, counts
    assert counts["match"] + counts["skipped"] == n, counts
    d.finish()


def test_shadow_mismatches_past_the_hourly_bound_pause_the_ramp(dw, make_backend):
    """SPEC 7.3: more than shadow_mismatches_per_hour mismatches pause the
    upstream: a reload raising its weight is refused, one keeping it is not."""
    legacy = make_backend(Legacy(), name="legacy")
    new = make_backend(New(), name="gear_ops")
    guards = "guards = { shadow_mismatches_per_hour = 2; };\n"
    d = mirrorlib.mirror_daemon(dw, legacy.url, new.url,
                                routes(weight=0, shadow=100, pins=False) + guards)
    for i in range(3):
        assert side_of(get(d, "/equipment/%d" % (i + 1))) == "legacy"
    assert wait_shadow(d, 3)["mismatch"] == 3
    helpers.wait_for(lambda: status_read(d, "equipment-get")["guard"]["state"] == "paused",
                     5, "the upstream to be paused")
    d.wait_log("shadow_mismatches")
    d.reload(d.config_text() + routes(weight=10, shadow=100, pins=False) + guards,
             expect="failed")
    assert status_read(d, "equipment-get")["weight"] == 0
    d.reload(d.config_text() + routes(weight=0, shadow=50, pins=False) + guards)
    assert status_read(d, "equipment-get")["guard"]["state"] == "paused"
    d.finish()


class LegacyBareDelete(Legacy):
    """A legacy whose DELETE answers 204 with no body (user_core's): a pin on
    $response cannot be worked out."""

    def __call__(self, req):
        if req.method == "DELETE":
            return Reply(204, b"")
        return Legacy.__call__(self, req)


def test_a_pin_that_cannot_be_worked_out_pins_its_prefix_never_dead(dw, make_backend):
    """The mirror itself needs only the path: a pin on the legacy's answer that
    has no JSON body must not dead-letter the delete (the shipped gear-ops
    delete route). It pins every key that begins with the pin's literal text
    ("user:": every user's list) until the delete is delivered, and no other:
    another item's read still goes to the new system."""
    legacy = make_backend(LegacyBareDelete(), name="legacy")
    nh = New()
    new = make_backend(nh, name="gear_ops")
    delete = routes().replace("routes = (", """routes = (
  { name = "equipment-delete"; match = "DELETE /equipment/{id}";
    mirror = { upstream = "gear_ops"; path = "/gear-items/{id}"; key = "$path.id";
               pins = [ "user:${$response.user_id}" ]; }; },""", 1)
    nh.down.set()  # the delete is a write New refuses while down: it queues
    d = mirrorlib.mirror_daemon(dw, legacy.url, new.url, delete)
    r = helpers.request(d.port, "DELETE", "/equipment/9", [("Host", "t"), ("Connection", "close")])
    assert r.status == 204, r
    mirrorlib.wait_outcomes(d, lambda o: o["result"] == "queued", 1, 10, "queued")
    assert d.metric("dualwrite_mirror_total", route="equipment-delete", result="dead") == 0
    assert side_of(get(d, "/equipment/9")) == "legacy"         # its own key
    assert side_of(get(d, "/user/7/equipment")) == "legacy"    # any user's list: "user:*"
    assert side_of(get(d, "/user/8/equipment")) == "legacy"
    assert side_of(get(d, "/equipment/10")) == "new"           # another item goes on
    rd = status_read(d, "equipment-list")
    assert rd["prefix_pins"] == 1 and rd["blind_writes"] == 0, rd

    nh.down.clear()
    mirrorlib.replay_until_drained(d.conf_path)
    wait_side(d, "/user/8/equipment", "new")
    assert side_of(get(d, "/equipment/9")) == "new"
    assert "DELETE /gear-items/9" in ["%s %s" % (q.method, q.target) for q in new.requests]
    d.finish()
