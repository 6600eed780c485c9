#!/usr/bin/python3
"""replay — how long `dualwrite replay --once` takes to drain a queue, by --concurrency.

Runs dualwrited with the routes of conf/gear-ops.conf in front of a legacy that gives every
create its own id (tests/e2e/backends.py) while the new system answers 503, so each of N
creates waits in the replay queue under its own key. The daemon is stopped and the queue
directory kept. Then, for each --concurrency value, a copy of that queue is replayed once to
a new system that answers every write after DELAY_MS (as a real service behind a network
does), and the wall time is printed. Bounded: N writes, each waited for; 120 s per replay.
Loopback only.

    /usr/bin/python3 tests/bench/replay.py [N [DELAY_MS [CONCURRENCY ...]]]
                                              (defaults: 200 20 1 4 16; B=build by default)
"""

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
sys.dont_write_bytecode = True
os.environ.setdefault("DW_BUILD", os.environ.get("B", "build"))

import helpers  # noqa: E402
import mirrorlib as ml  # noqa: E402
from backends import Backend, Reply  # noqa: E402

JSON = [("Content-Type", "application/json")]


def fill(tmp, n):
    """A stopped daemon's config and a queue holding n creates, one key each."""
    ids = itertools.count(1)
    lock = threading.Lock()

    def legacy_handler(req):
        with lock:
            i = next(ids)
        body = json.dumps({"id": i, "created_at": "2026-12-03T00:00:00Z"})
        return Reply(201, body, JSON)

    legacy = Backend(legacy_handler, name="legacy")
    down = Backend(lambda req: Reply(503, b'{"error": "down"}', JSON), name="target")
    d = helpers.Daemon(tmp, {"legacy": legacy.url,
                             "gear_ops": {"url": down.url, "timeout_ms": 5000}},
                       name="fill")
    d.write_config(d.config_text() + ml.gear_routes())
    d.start()
    try:
        for i in range(n):
            r = ml.send_json(d.port, "POST", "/equipment",
                             {"user_id": 1 + i % 50, "name": "item %d" % i, "type": "tent",
                              "brand": "Acme"})
            assert r.status == 201, r
        deadline = time.monotonic() + 60
        while True:
            st = ml.queue_stats(d.conf_path)
            if st["queued"] == n and st["pending"] == 0:
                break
            assert time.monotonic() < deadline, "queue never held %d writes: %r" % (n, st)
            time.sleep(0.1)
    finally:
        d.stop()
        legacy.stop()
        down.stop()
    return d


def replay_once(d, saved, concurrency):
    shutil.rmtree(d.queue_dir)
    shutil.copytree(saved, d.queue_dir)
    argv = [ml.cli_binary(), "replay", "-c", d.conf_path, "--once",
            "--concurrency", str(concurrency)]
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    t1 = time.monotonic()
    return r, t1 - t0


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    delay_ms = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    levels = [int(a) for a in sys.argv[3:]] or [1, 4, 16]
    with tempfile.TemporaryDirectory() as tmp:
        d = fill(tmp, n)
        saved = os.path.join(tmp, "queue-filled")
        shutil.copytree(d.queue_dir, saved)
        target = Backend(lambda req: Reply(201, b'{"ok": true}', JSON, delay=delay_ms / 1000),
                         name="target")
        try:
            # the config names the 503 target's port; point it at the slow one
            with open(d.conf_path) as f:
                text = f.read()
            with open(d.conf_path, "w") as f:
                f.write(text.replace(d.upstreams["gear_ops"]["url"], target.url))
            print("replay: %d queued writes (one key each), new system answers in %d ms" % (
                n, delay_ms))
            first = None
            for c in levels:
                target.reset()
                r, secs = replay_once(d, saved, c)
                ok = r.returncode == 0 and "delivered %d," % n in r.stderr
                if not ok:
                    print("  --concurrency %-3d FAILED (exit %d): %s" % (
                        c, r.returncode, r.stderr[-500:]))
                    continue
                first = first or secs
                print("  --concurrency %-3d %6.2f s  %7.0f writes/s  %.1fx --concurrency %d" % (
                    c, secs, n / secs, first / secs, levels[0]))
        finally:
            target.stop()


if __name__ == "__main__":
    main()
