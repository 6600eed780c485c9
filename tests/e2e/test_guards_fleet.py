"""End-to-end test of guards shared by a fleet (issue 11 item 11): two sidecars on one
PostgreSQL queue (queue.postgres), each with its own spool; the reads that fail reach only
the first, which trips; the second, which saw no failure, rolls its reads back within 2 s.
A reset on either host clears both; the row in "<queue.table>_guards" follows.

A module-scoped throwaway cluster (tests/pg.sh, as test_pgqueue.py). Every wait is bounded.
"""

import sys
import time

sys.dont_write_bytecode = True

import helpers  # noqa: E402
import mirrorlib as ml  # noqa: E402
import test_guards as tg  # noqa: E402
from backends import Reply  # noqa: E402
from test_pgqueue import pg  # noqa: E402,F401  (the module's cluster fixture)

TABLE = "fleetq"


def sidecar(dw, legacy, new, pg, name):
    d = dw({"legacy": {"url": legacy.url, "timeout_ms": 5000},
            "gear_ops": {"url": new.url, "timeout_ms": 2000}}, start=False, name=name)
    d.extra["log_level"] = "info"
    d.extra["queue"] = {"path": d.queue_dir, "postgres": pg.dsn, "table": TABLE}
    d.guards = {}
    d.mirror = False
    d.write_config(tg.conf(d, 100))
    d.start()
    return d


def test_a_trip_on_one_sidecar_rolls_back_the_fleet(dw, make_backend, pg):
    legacy = make_backend(tg.legacy_handler, name="legacy")
    sw = tg.Switch()
    new = make_backend(sw, name="gear_ops")
    a = sidecar(dw, legacy, new, pg, "a")
    b = sidecar(dw, legacy, new, pg, "b")
    assert tg.reads(b, 2) == ["new"] * 2
    # only A sees the failures
    sw.reply = Reply(500, b'{"error": "boom"}', tg.JSON)
    tg.reads(a, 10, expect="legacy")
    tg.wait_guard(a, "tripped")
    t0 = time.monotonic()
    rd = tg.wait_guard(b, "tripped", timeout=5.0)
    dt = time.monotonic() - t0
    print("fleet: A tripped -> B at weight 0: %.3f s" % dt)
    assert dt < 2.0, dt
    assert rd["effective_weight"] == 0 and rd["guard"]["reason"] == "read_error_rate", rd
    b.wait_log('guard: upstream "gear_ops" (fleet): tripped: read_error_rate')
    rows = pg.sql("SELECT upstream, state, reason FROM %s_guards" % TABLE)
    assert rows == [["gear_ops", "tripped", "read_error_rate"]], rows
    sw.reply = None
    n = len(new.requests)
    tg.reads(b, 3, prefix="b", expect="legacy")
    assert len(new.requests) == n
    # B restarts: still tripped (its own latch file, and the row)
    b.stop()
    b.start()
    assert tg.route_read(b)["guard"]["state"] == "tripped"
    # a reset on B clears the fleet: A follows within 2 s
    out = ml.cli(b.conf_path, "guard", "reset", "gear_ops")
    assert out.returncode == 0, (out.stdout, out.stderr)
    t0 = time.monotonic()
    rd = tg.wait_guard(a, "ok", timeout=5.0)
    print("fleet: reset on B -> A ok: %.3f s" % (time.monotonic() - t0))
    assert rd["effective_weight"] == 100, rd
    helpers.wait_for(lambda: pg.sql("SELECT count(*) FROM %s_guards" % TABLE) == [["0"]], 5,
                     "the fleet's row deleted")
    assert tg.reads(a, 2, prefix="a2") == ["new"] * 2
    assert tg.reads(b, 2, prefix="b2") == ["new"] * 2
    a.finish()
    b.finish()

