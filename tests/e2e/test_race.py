"""The Phase 1/2 race (issue 13 item 4; README "Phase 2"): live writes through the sidecar while
`dualwrite backfill` copies the history, the mirror target killed and restarted once, then
`dualwrite replay` and `dualwrite verify` — equal without --repair, and not one dead letter.

Real processes on loopback: a throwaway PostgreSQL (tests/pg.sh), the demo services user-core
(legacy) and gear-ops (new) from build/dw-demo-backend, build/dualwrited in front of user-core
with the routes of conf/gear-ops.conf, and build/dualwrite for backfill, replay, queue and
verify. The history is DW_RACE_ROWS rows (default 100000). The writers aim at the keys around
the backfill's position (read from its checkpoint), where the races are: updates and deletes
of history rows the backfill has not copied yet or holds in an uncommitted batch, and creates
queued during the outage that the backfill copies before they are replayed. Every wait is
bounded; the test has an alarm.
"""

import json
import os
import random
import re
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True

import helpers  # noqa: E402
import mirrorlib as ml  # noqa: E402

ROWS = int(os.environ.get("DW_RACE_ROWS", "100000"))
RATE = int(os.environ.get("DW_RACE_RATE", "10000"))  # backfill rows/s: the race lasts ~ROWS/RATE s
WRITERS = 3
TEST_BOUND_S = 180


_bounded = helpers.bounded(TEST_BOUND_S)


pg = ml.pg_fixture()
svc = ml.gear_services_fixture()


class Writers:
    """WRITERS threads of live traffic through the sidecar; thread i owns the keys = i mod
    WRITERS (one writer per key, so the legacy's order of a key's writes is the order its
    writer sent them). Each picks, mostly, history keys just ahead of the backfill's
    position, else anywhere, else the rows it created."""

    def __init__(self, port, pg):
        self.port, self.pg = port, pg
        self.stop = threading.Event()
        self.frontier = [0]
        self.counts = {"create": 0, "update": 0, "delete": 0}
        self.errors = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(WRITERS)]

    def start(self):
        for t in self.threads:
            t.start()

    def join(self):
        self.stop.set()
        for t in self.threads:
            t.join(60)
            assert not t.is_alive(), "a writer did not stop"

    def count(self, what):
        with self.lock:
            self.counts[what] += 1

    def pick(self, rnd, i, mine):
        f = self.frontier[0]
        roll = rnd.random()
        if roll < 0.7:
            k = rnd.randint(f + 1, f + 2500)        # the next batches: fetched, not committed
        elif roll < 0.85:
            k = rnd.randint(1, ROWS)
        elif mine:
            return rnd.choice(mine)
        else:
            k = rnd.randint(1, ROWS)
        k -= (k - i) % WRITERS
        return k if 1 <= k <= ROWS else None

    def run(self, i):
        rnd = random.Random(1000 + i)
        mine = []       # keys this writer created (they are = i mod WRITERS only by chance)
        gone = set()
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                op = rnd.random()
                if op < 0.2:
                    r = ml.send_json(self.port, "POST", "/equipment",
                                     {"user_id": 7, "name": "live %d-%d" % (i, n),
                                      "type": "tent", "brand": "B%d" % (n % 5)})
                    assert r.status == 201, r
                    mine.append(r.json()["id"])
                    self.count("create")
                    continue
                k = self.pick(rnd, i, mine)
                if k is None or k in gone:
                    continue
                if op < 0.8:
                    r = ml.send_json(self.port, "PUT", "/equipment/%d" % k,
                                     {"name": "upd %d-%d" % (i, n), "type": "stove",
                                      "brand": None if n % 4 == 0 else "U%d" % n})
                    assert r.status == 200, r
                    self.count("update")
                else:
                    r = ml.send_json(self.port, "DELETE", "/equipment/%d" % k)
                    assert r.status == 204, r
                    gone.add(k)
                    if k in mine:
                        mine.remove(k)
                    self.count("delete")
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(e)


def test_live_writes_during_backfill_with_target_restart_verify_equal(pg, svc, dw, tmp_path):
    pg.sql("user_core", """
INSERT INTO old_equipment (id, user_id, name, type, brand, created_at)
SELECT g, g %% 97, 'item ' || g, (ARRAY['tent','stove','rope'])[g %% 3 + 1],
       CASE WHEN g %% 7 = 0 THEN NULL ELSE 'brand' || g %% 10 END,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute'
FROM generate_series(1, %d) g;
SELECT setval('old_equipment_id_seq', %d);
ANALYZE old_equipment;""" % (ROWS, ROWS))
    d = ml.mirror_daemon(dw, svc["user-core"].url, svc["gear-ops"].url,
                         ml.gear_routes() + ml.table_map(pg), start=False)
    d.extra["workers"] = 2
    d.write_config(d.config_text() + ml.gear_routes() + ml.table_map(pg))
    d.start()
    conf = d.conf_path
    t0 = time.monotonic()
    bf = ml.cli_popen(conf, "backfill", "--table", "equipment", "--batch", "1000",
                      "--rate", RATE)
    w = Writers(d.port, pg)
    w.start()
    kills = 0
    try:
        killed_at = None
        while bf.poll() is None:
            w.frontier[0] = ml.checkpoint(pg)
            if not kills and w.frontier[0] >= ROWS * 0.4:
                svc["gear-ops"].kill()
                kills, killed_at = 1, time.monotonic()
            if killed_at and time.monotonic() - killed_at > 1.5:
                svc["gear-ops"].restart()
                killed_at = None
            assert not w.errors, w.errors
            assert time.monotonic() - t0 < TEST_BOUND_S - 60, "backfill is taking too long"
            time.sleep(0.1)
        if killed_at:
            svc["gear-ops"].restart()
    finally:
        w.join()
    out, err = bf.communicate(timeout=30)
    assert bf.returncode == 0, err
    assert not w.errors, w.errors
    assert kills == 1, "the backfill ended before the kill point; raise DW_RACE_ROWS"
    writes = sum(w.counts.values())

    # Every write the sidecar took has its outcome: delivered, queued (or dead).
    def settled():
        st = ml.queue_stats(conf)
        return st["pending"] == 0 and d.metric("dualwrite_mirror_total") >= writes
    helpers.wait_for(settled, 30, "every mirror settled", interval=0.2)
    before = ml.queue_stats(conf)
    runs = ml.replay_until_drained(conf, timeout=60)
    replayed = before["queued"]
    after = ml.queue_stats(conf)
    dead = [o for o in ml.mirror_outcomes(d) if o["result"] == "dead"]

    r = subprocess.run([ml.cli_binary(), "verify", "-c", conf, "--table", "equipment", "--json"],
                       env=ml._tool_env(pg.env), capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 1), r.stderr
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    m = re.search(r"(\d+) deleted on the source meanwhile", out)
    removed = int(m.group(1)) if m else 0
    print("race: %d rows of history, %d writes (%d creates, %d updates, %d deletes) in %.1f s, "
          "kills=%d, replayed=%d, backfill removed=%d, dead letters=%d, verify: %s, %d differences "
          "(source %d rows, target %d)" % (
              ROWS, writes, w.counts["create"], w.counts["update"], w.counts["delete"],
              time.monotonic() - t0, kills, replayed, removed, after["dead"],
              "equal" if rep["equal"] else "NOT equal", len(rep["differences"]),
              rep["source_rows"], rep["target_rows"]))
    print("backfill: " + out.strip())
    assert replayed > 0, "nothing was queued: the restart did not overlap the traffic"
    assert after["dead"] == 0 and not dead, "dead letters: %s\n%s" % (
        [o["line"] for o in dead[:10]], ml.cli(conf, "queue", "list", "--dead").stdout[-3000:])
    assert after["queued"] == 0 and after["pending"] == 0, after
    assert rep["differences"] == [] and rep["pending"] == [], rep["differences"][:20]
    assert rep["equal"] is True and r.returncode == 0, rep
    assert runs[-1].returncode == 0
