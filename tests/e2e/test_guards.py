"""End-to-end tests of the rollback guards and their commands (SPEC §7.3, §7.4; issue 11
items 7 and 8): each trigger (read error rate, read p99, mirror first-attempt failure
rate) trips the upstream and its reads go to the legacy with no client error; the trip is
latched across reloads and restarts, cleared by `dualwrite guard reset` or a reload that
changes the route's weight; a paused upstream refuses a reload that raises its weight;
`dualwrite reload` prints weights before -> after and exits 1 when refused.

Configurations use a short window and a small min_requests so a trip takes a few reads.
Every wait polls /status or the metrics with a bounded deadline.
"""

import json
import os
import signal
import sys
import time

sys.dont_write_bytecode = True

import helpers  # noqa: E402
import mirrorlib as ml  # noqa: E402
from backends import Reply  # noqa: E402
from test_read import legacy_handler, new_handler, side_of, get  # noqa: E402

JSON = [("Content-Type", "application/json")]
GUARD_FILE = "guards.json"


def guards_block(**over):
    g = {"window_s": 10, "min_requests": 10, "read_error_rate": 1.0, "read_p99_ms": 500,
         "mirror_failure_rate": 5.0, "shadow_mismatches_per_hour": 5}
    g.update(over)
    return "guards = {\n%s\n};\n" % "\n".join("  %s = %s;" % (k, v) for k, v in g.items())


def routes(weight, mirror=False):
    m = """,
  {
    name  = "equipment-create";
    match = "POST /user/{user_id}/equipment";
    mirror = { upstream = "gear_ops"; path = "/gear-items"; key = "$path.user_id";
               body = { user_id = "$path.user_id"; name = "$request.name"; }; };
  }""" if mirror else ""
    return """routes = (
  {
    name  = "equipment-list";
    match = "GET /user/{user_id}/equipment";
    read = {
      upstream = "gear_ops";
      path     = "/gear-items?user_id={user_id}";
      weight   = %s;
      sticky   = "$path.user_id";
      response = {
        each = "$response.items";
        body = { id = "$item.id"; user_id = "$item.user_id"; name = "$item.name";
                 type = "$item.category"; brand = "$item.brand"; created_at = "$item.created_at"; };
      };
    };
  }%s
);
""" % (weight, m)


class Switch:
    """A new-system handler the test can turn failing and back."""

    def __init__(self, reply=None):
        self.reply = reply  # None: serve normally

    def __call__(self, req):
        if req.method == "POST":
            return self.reply or Reply(201, b"{}", JSON)
        return self.reply or new_handler(req)


def start(dw, make_backend, weight=100, new_reply=None, mirror=False, new_timeout_ms=2000,
          **guards):
    legacy = make_backend(lambda req: legacy_handler(req) if req.method == "GET"
                          else Reply(201, b'{"ok": true}', JSON), name="legacy")
    sw = Switch(new_reply)
    new = make_backend(sw, name="gear_ops")
    d = dw({"legacy": {"url": legacy.url, "timeout_ms": 5000},
            "gear_ops": {"url": new.url, "timeout_ms": new_timeout_ms}}, start=False)
    d.extra["log_level"] = "info"
    d.guards = guards
    d.mirror = mirror
    d.write_config(conf(d, weight))
    d.start()
    return d, legacy, new, sw


def conf(d, weight, **over):
    g = dict(d.guards)
    g.update(over)
    return d.config_text() + guards_block(**g) + routes(weight, mirror=d.mirror)


def status(d):
    r = d.admin("/status")
    assert r.status == 200, r
    return json.loads(r.body)


def route_read(d, name="equipment-list"):
    return [x for x in status(d)["routes"] if x["name"] == name][0]["read"]


def wait_guard(d, state, timeout=5.0):
    return helpers.wait_for(
        lambda: (route_read(d)["guard"]["state"] == state and route_read(d)),
        timeout, "guard state %s; status: %s" % (state, status(d)))


def reads(d, n, prefix="u", expect=None):
    """n reads, every one answered 200 in the legacy's shape (no client error)."""
    sides = []
    with helpers.Conn(d.port) as c:
        for i in range(n):
            s = side_of(get(d.port, "/user/%s%d/equipment" % (prefix, i), c))
            if expect:
                assert s == expect, (i, s)
            sides.append(s)
    return sides


def cli(d, *args):
    return ml.cli(d.conf_path, *args)


def trip_by_errors(d, new, sw):
    """The new system answers 500: reads still succeed (the legacy answers), and the
    guard trips on the read error rate. Returns seconds from the read that crossed
    the minimum to the effective weight 0."""
    sw.reply = Reply(500, b'{"error": "boom"}', JSON)
    reads(d, 10, expect="legacy")
    t0 = time.monotonic()
    rd = wait_guard(d, "tripped")
    dt = time.monotonic() - t0
    assert rd["effective_weight"] == 0 and rd["weight"] == 100, rd
    assert rd["guard"]["reason"] == "read_error_rate", rd
    return dt


# ---------------------------------------------------------------- triggers


def test_read_error_rate_trips_and_reads_go_to_the_legacy(dw, make_backend):
    d, legacy, new, sw = start(dw, make_backend)
    assert reads(d, 3) == ["new"] * 3
    dt = trip_by_errors(d, new, sw)
    print("trigger -> weight 0: %.3f s" % dt)
    assert dt < 2.0, dt
    assert d.metric("dualwrite_guard_trips_total", upstream="gear_ops",
                    reason="read_error_rate") == 1
    assert d.metric("dualwrite_read_weight", route="equipment-list") == 0
    assert d.metric("dualwrite_read_weight_configured", route="equipment-list") == 100
    assert d.metric("dualwrite_guard_state", upstream="gear_ops") == 2
    log = d.wait_log('guard: upstream "gear_ops": tripped: read_error_rate 76.92 > 1.00 (percent of 13 reads')
    assert "serves from the legacy" in log
    # from now on the new system is not even asked, whatever it would answer
    sw.reply = None
    n = len(new.requests)
    reads(d, 5, prefix="g", expect="legacy")
    assert len(new.requests) == n
    assert d.metric("dualwrite_read_total", route="equipment-list", side="legacy",
                    reason="guard") == 5
    up = status(d)["upstreams"]["gear_ops"]["guard"]
    assert up["state"] == "tripped" and up["window"]["reads"] >= 10, up
    # the latch is on disk beside the queue
    with open(os.path.join(d.queue_dir, GUARD_FILE)) as f:
        doc = json.load(f)
    assert doc["version"] == 1
    assert doc["upstreams"]["gear_ops"]["state"] == "tripped"
    assert doc["upstreams"]["gear_ops"]["reason"] == "read_error_rate"
    d.finish()


def test_a_4xx_is_not_a_failure_for_the_guard(dw, make_backend):
    """15 answers 404 (the legacy serves them by fallback) and then one slow read: the
    guard trips on p99, not on the error rate, which would win had the 404s counted."""
    d, legacy, new, sw = start(dw, make_backend, read_p99_ms=100, min_requests=10)
    sw.reply = Reply(404, b'{"error": "no such user"}', JSON)
    reads(d, 15, expect="legacy")
    sw.reply = Reply(200, json.dumps({"items": []}), JSON, delay=0.3)
    helpers.request(d.port, "GET", "/user/slow/equipment", [("Host", "t"), ("Connection", "close")])
    rd = wait_guard(d, "tripped")
    assert rd["guard"]["reason"] == "read_p99_ms", rd
    d.finish()


def test_read_p99_trips(dw, make_backend):
    d, legacy, new, sw = start(dw, make_backend, read_p99_ms=100, min_requests=5)
    slow = {"items": [{"id": 1, "user_id": "x", "name": "new-item", "category": "bike",
                       "brand": "b", "created_at": "c"}]}
    sw.reply = Reply(200, json.dumps(slow), JSON, delay=0.25)
    reads(d, 5, expect="new")  # slow but answered: the client gets the new system's answer
    t0 = time.monotonic()
    rd = wait_guard(d, "tripped")
    print("p99: trigger -> weight 0: %.3f s" % (time.monotonic() - t0))
    assert rd["guard"]["reason"] == "read_p99_ms" and rd["effective_weight"] == 0, rd
    assert rd["guard"]["measured"] >= 250, rd
    assert d.metric("dualwrite_guard_trips_total", upstream="gear_ops", reason="read_p99_ms") == 1
    reads(d, 3, prefix="p", expect="legacy")
    d.finish()


def test_mirror_failure_rate_trips(dw, make_backend):
    d, legacy, new, sw = start(dw, make_backend, mirror=True, min_requests=10)
    sw.reply = Reply(503, b'{"error": "down"}', JSON)  # reads would fail too: not read here
    for i in range(12):
        r = ml.send_json(d.port, "POST", "/user/m%d/equipment" % i, {"name": "n%d" % i})
        assert r.status == 201, r
    rd = wait_guard(d, "tripped")
    assert rd["guard"]["reason"] == "mirror_failure_rate" and rd["effective_weight"] == 0, rd
    assert d.metric("dualwrite_guard_trips_total", upstream="gear_ops",
                    reason="mirror_failure_rate") == 1
    sw.reply = None
    reads(d, 3, expect="legacy")
    d.finish()


# ---------------------------------------------------------------- latch and clears


def test_trip_survives_reload_and_restart_and_reset_clears_it(dw, make_backend):
    d, legacy, new, sw = start(dw, make_backend)
    trip_by_errors(d, new, sw)
    sw.reply = None
    # a reload that leaves the weight alone keeps the trip
    d.reload(conf(d, 100, min_requests=11))
    rd = route_read(d)
    assert rd["guard"]["state"] == "tripped" and rd["effective_weight"] == 0, rd
    reads(d, 3, expect="legacy")
    # so does a restart: the latch is read back before the first read
    d.stop()
    d.start()
    rd = route_read(d)
    assert rd["guard"]["state"] == "tripped" and rd["effective_weight"] == 0, rd
    assert rd["guard"]["reason"] == "read_error_rate", rd
    reads(d, 3, prefix="r", expect="legacy")
    out = cli(d, "guard", "status")
    assert out.returncode == 0, out
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("gear_ops")][0]
    assert "tripped" in line and "read_error_rate" in line, out.stdout
    # the operator resets it: the configured weight applies again
    out = cli(d, "guard", "reset", "gear_ops")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "reset" in out.stdout
    rd = route_read(d)
    assert rd["guard"]["state"] == "ok" and rd["effective_weight"] == 100, rd
    assert reads(d, 3, prefix="s") == ["new"] * 3
    assert not os.path.exists(os.path.join(d.queue_dir, GUARD_FILE))
    d.wait_log('guard: upstream "gear_ops" reset')
    out = cli(d, "guard", "reset", "gear_ops")
    assert out.returncode == 0 and "nothing to reset" in out.stdout, out
    assert cli(d, "guard", "reset", "nosuch").returncode == 2
    d.finish()


def test_a_reload_that_changes_the_weight_clears_the_trip(dw, make_backend):
    d, legacy, new, sw = start(dw, make_backend)
    trip_by_errors(d, new, sw)
    sw.reply = None
    d.reload(conf(d, 50))
    rd = route_read(d)
    assert rd["guard"]["state"] == "ok" and rd["effective_weight"] == 50, rd
    d.wait_log("the reload changed the read weight of route \"equipment-list\"")
    assert not os.path.exists(os.path.join(d.queue_dir, GUARD_FILE))
    # the failures that tripped it were forgotten: no new trip from them
    sides = reads(d, 40, prefix="w")
    assert "new" in sides
    assert route_read(d)["guard"]["state"] == "ok"
    d.finish()


def write_latch(d, state, reason="shadow_mismatches_per_hour"):
    doc = {"version": 1, "upstreams": {"gear_ops": {
        "state": state, "reason": reason, "measured": 6, "limit": 5, "sample": 6,
        "window_s": 3600, "since_ms": int(time.time() * 1000),
        "detail": "%s: %s 6.00 > 5.00 (6 mismatches in 3600 s)" % (state, reason)}}}
    with open(os.path.join(d.queue_dir, GUARD_FILE), "w") as f:
        json.dump(doc, f)


def test_a_paused_upstream_refuses_a_reload_that_raises_its_weight(dw, make_backend):
    d, legacy, new, sw = start(dw, make_backend, weight=10)
    d.stop()
    write_latch(d, "paused")
    d.start()
    rd = route_read(d)
    assert rd["guard"]["state"] == "paused" and rd["effective_weight"] == 10, rd
    d.write_config(conf(d, 30))
    failed = d.metric("dualwrite_config_reloads_total", result="failed")
    out = cli(d, "reload")
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "paused" in out.stderr and "refused" in out.stderr, out.stderr
    assert d.metric("dualwrite_config_reloads_total", result="failed") == failed + 1
    rd = route_read(d)
    assert rd["weight"] == 10 and rd["effective_weight"] == 10, rd
    d.wait_log("reload rejected, keeping the running configuration")
    # lowering is allowed, and the pause stays
    d.write_config(conf(d, 5))
    out = cli(d, "reload")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "10 -> 5" in out.stdout, out.stdout
    rd = route_read(d)
    assert rd["weight"] == 5 and rd["guard"]["state"] == "paused", rd
    # reset, then the raise goes through
    assert cli(d, "guard", "reset", "gear_ops").returncode == 0
    d.write_config(conf(d, 30))
    out = cli(d, "reload")
    assert out.returncode == 0 and "5 -> 30" in out.stdout, (out.stdout, out.stderr)
    d.finish()


def test_a_pause_holds_weights_but_keeps_serving(dw, make_backend):
    """The pause from the file holds weights but keeps serving the new system."""
    d, legacy, new, sw = start(dw, make_backend, weight=100)
    d.stop()
    write_latch(d, "paused")
    d.start()
    assert reads(d, 3) == ["new"] * 3
    assert d.metric("dualwrite_guard_state", upstream="gear_ops") == 1
    d.finish()


def test_an_unreadable_latch_file_trips_every_new_system_upstream(dw, make_backend):
    d, legacy, new, sw = start(dw, make_backend)
    d.stop()
    with open(os.path.join(d.queue_dir, GUARD_FILE), "w") as f:
        f.write("{not json")
    d.start()
    rd = route_read(d)
    assert rd["guard"]["state"] == "tripped" and rd["guard"]["reason"] == "latch_unreadable", rd
    assert rd["effective_weight"] == 0
    d.wait_log("every new-system upstream is treated as tripped")
    assert os.path.exists(os.path.join(d.queue_dir, GUARD_FILE + ".unreadable"))
    reads(d, 2, expect="legacy")
    assert cli(d, "guard", "reset", "gear_ops").returncode == 0
    assert reads(d, 2, prefix="x") == ["new"] * 2
    d.finish()


# ---------------------------------------------------------------- commands


def test_reload_prints_weights_before_and_after(dw, make_backend):
    d, legacy, new, sw = start(dw, make_backend, weight=10)
    gen = status(d)["generation"]
    d.write_config(conf(d, 30))
    out = cli(d, "reload")
    assert out.returncode == 0, (out.stdout, out.stderr)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("equipment-list")][0]
    assert "gear_ops" in line and "10 -> 30" in line, out.stdout
    assert status(d)["generation"] == gen + 1
    assert route_read(d)["effective_weight"] == 30
    # an invalid file is refused before anything is signalled
    with open(d.conf_path, "a") as f:
        f.write("routes = 3;\n")
    out = cli(d, "reload")
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert status(d)["generation"] == gen + 1
    assert d.metric("dualwrite_config_reloads_total", result="failed") == 0
    d.finish()


def test_status_shows_weights_and_guards_at_a_glance(dw, make_backend):
    d, legacy, new, sw = start(dw, make_backend)
    trip_by_errors(d, new, sw)
    out = cli(d, "status")
    assert out.returncode == 0, out
    rows = [ln.split() for ln in out.stdout.splitlines()]
    row = [r for r in rows if r and r[0] == "equipment-list"][0]
    # ROUTE MIRROR AUTHORITY READ WEIGHT EFFECTIVE GUARD ...
    assert row[1:7] == ["-", "-", "gear_ops", "100.00", "0.00", "tripped"], out.stdout
    up = [r for r in rows if r and r[0] == "gear_ops"][0]
    assert up[1] == "tripped" and int(up[2]) >= 10, out.stdout
    out = cli(d, "status", "--json")
    doc = json.loads(out.stdout)
    assert doc["upstreams"]["gear_ops"]["guard"]["state"] == "tripped"
    assert "guard" not in doc["upstreams"]["legacy"]
    d.finish()


STATUS_ROUTES = """routes = (
  {
    name  = "equipment-list";
    match = "GET /user/{user_id}/equipment";
    read = {
      upstream = "gear_ops";
      path     = "/gear-items?user_id={user_id}";
      weight   = 0;
      sticky   = "$path.user_id";
      shadow   = 100;
      response = {
        each = "$response.items";
        body = { id = "$item.id"; user_id = "$item.user_id"; name = "$item.name";
                 type = "$item.category"; brand = "$item.brand"; created_at = "$item.created_at"; };
      };
    };
  },
  {
    name  = "equipment-create";
    match = "POST /user/{user_id}/equipment";
    mirror = { upstream = "archive"; path = "/items"; key = "$path.user_id";
               body = { user_id = "$path.user_id"; name = "$request.name"; }; };
  },
  {
    name  = "equipment-delete";
    match = "DELETE /user/{user_id}/equipment";
    mirror = { upstream = "archive"; path = "/items/{user_id}"; key = "$path.user_id"; };
  },
  {
    name  = "equipment-rename";
    match = "PUT /user/{user_id}/equipment";
    authority = "new";
    mirror  = { upstream = "gear_ops"; path = "/gear-items"; key = "$path.user_id";
                body = { name = "$request.name"; }; };
    reverse = { upstream = "legacy"; path = "/user/{user_id}/equipment"; key = "$path.user_id";
                body = { name = "$response.name"; }; };
  }
);
"""


def test_status_shows_authority_shadow_counts_and_queue_per_upstream(dw, make_backend):
    """SPEC §7.4: per route the write authority and the shadow counts, per upstream the
    queue depth and the oldest record's age; in the table and in --json."""
    legacy = make_backend(lambda req: legacy_handler(req) if req.method == "GET"
                          else Reply(201, b'{"ok": true}', JSON), name="legacy")
    new = make_backend(new_handler, name="gear_ops")  # its lists differ: every shadow mismatches
    # the archive takes no create (503: they wait in the queue) and refuses deletes (dead)
    archive = make_backend(lambda req: Reply(503, b"{}", JSON) if req.method == "POST"
                           else Reply(422, b'{"error": "no"}', JSON), name="archive")
    d = dw({"legacy": {"url": legacy.url, "timeout_ms": 5000},
            "gear_ops": {"url": new.url, "timeout_ms": 2000},
            "archive": {"url": archive.url, "timeout_ms": 2000}}, start=False)
    d.extra["log_level"] = "info"
    d.write_config(d.config_text() + STATUS_ROUTES)
    d.start()
    assert reads(d, 3, expect="legacy") == ["legacy"] * 3
    for uid in ("u1", "u2"):
        r = ml.send_json(d.port, "POST", "/user/%s/equipment" % uid, {"name": "tent"})
        assert r.status == 201, r
    assert ml.send_json(d.port, "DELETE", "/user/u3/equipment").status == 201

    def settled():
        st = status(d)
        q = st["upstreams"]["archive"].get("queue", {})
        shadow = route_read(d)["shadow"]
        return (q.get("depth") == 2 and q.get("dead") == 1 and shadow["mismatch"] == 3
                and st)
    st = helpers.wait_for(settled, 10, "2 waiting and 1 dead for archive, 3 shadow mismatches")
    ups = st["upstreams"]
    assert ups["archive"]["queue"]["queued"] + ups["archive"]["queue"]["pending"] == 2, ups
    assert ups["archive"]["queue"]["oldest_age_s"] >= 0
    for name in ("legacy", "gear_ops"):
        assert ups[name]["queue"] == {"depth": 0, "queued": 0, "pending": 0, "dead": 0,
                                      "oldest_age_s": 0}, ups[name]
    assert st["queue"]["depth"] == 2 and st["queue"]["dead"] == 1, st["queue"]
    auth = {r["name"]: r.get("authority") for r in st["routes"]}
    assert auth == {"equipment-list": None, "equipment-create": "legacy",
                    "equipment-delete": "legacy", "equipment-rename": "new"}, auth

    out = cli(d, "status")
    assert out.returncode == 0, out
    lines = out.stdout.splitlines()
    rows = {ln.split()[0]: ln.split() for ln in lines if ln.startswith("  ") and ln.split()}
    head = [ln for ln in lines if ln.split()[:1] == ["ROUTE"]][0].split()
    assert head[:7] == ["ROUTE", "MIRROR", "AUTHORITY", "READ", "WEIGHT", "EFFECTIVE",
                        "GUARD"], out.stdout
    assert head[7:11] == ["MATCH", "MISMATCH", "ERROR", "SKIPPED"], out.stdout
    # ROUTE MIRROR AUTHORITY READ WEIGHT EFFECTIVE GUARD MATCH MISMATCH ERROR SKIPPED
    assert rows["equipment-list"][1:11] == ["-", "-", "gear_ops", "0.00", "0.00", "ok",
                                            "0", "3", "0", "0"], out.stdout
    assert rows["equipment-create"][1:11] == ["archive", "legacy"] + ["-"] * 8, out.stdout
    assert rows["equipment-rename"][1:3] == ["gear_ops", "new"], out.stdout
    # the columns line up: each header starts where its cells start
    route_lines = [ln for ln in lines if ln.split()[:1] in (["ROUTE"], ["equipment-list"],
                                                             ["equipment-rename"])]
    for col in ("AUTHORITY", "READ ", "GUARD"):
        at = route_lines[0].index(col)
        assert all(ln[at - 1] == " " and ln[at] != " " for ln in route_lines[1:]), out.stdout
    # UPSTREAM GUARD READS ERR% P99 MIRRORS FAIL% MISMATCH QUEUE DEAD OLDEST URL
    uhead = [ln for ln in lines if ln.split()[:1] == ["UPSTREAM"]][0].split()
    assert uhead[-4:] == ["QUEUE", "DEAD", "OLDEST", "URL"], out.stdout
    arch = rows["archive"]
    assert arch[-4:-2] == ["2", "1"] and arch[-1] == archive.url, out.stdout
    assert arch[-2].endswith("s") and int(arch[-2][:-1]) >= 0, out.stdout
    assert rows["legacy"][-4:] == ["0", "0", "-", legacy.url], out.stdout
    assert rows["gear_ops"][1] == "ok" and rows["gear_ops"][-4:-1] == ["0", "0", "-"], out.stdout

    doc = json.loads(cli(d, "status", "--json").stdout)
    assert doc["upstreams"]["archive"]["queue"]["depth"] == 2
    assert [r for r in doc["routes"] if r["name"] == "equipment-list"][0][
        "read"]["shadow"]["mismatch"] == 3
    assert "unconfigured_upstreams" not in doc["queue"], doc["queue"]

    # a reload that drops the archive: what still waits for it is shown all the same
    del d.upstreams["archive"]
    routes_text = STATUS_ROUTES.split("  {\n    name  = \"equipment-create\"")[0]
    d.reload(d.config_text() + routes_text.rstrip().rstrip(",") + "\n);\n")
    st = status(d)
    assert "archive" not in st["upstreams"], st["upstreams"]
    other = st["queue"]["unconfigured_upstreams"]["archive"]
    assert other["depth"] == 2 and other["dead"] == 1, st["queue"]
    d.finish()
