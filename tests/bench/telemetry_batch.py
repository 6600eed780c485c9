#!/usr/bin/python3
"""telemetry_batch — proxy CPU and bytes journaled per 1,000-row telemetry batch (issue 13).

Runs dualwrited with the routes of conf/iot-v2.conf in front of a recording legacy and mirror
target (tests/e2e/backends.py, both answering 201 at once), sends N batches of ROWS readings to
POST /telemetry/batch one after the other, and reports dualwrited's CPU (utime + stime from
/proc) per batch and the growth of its queue directory per batch; then the same N batches
through a daemon without routes (pass-through: no parse, map, journal or mirror) for the
baseline. Bounded: N batches, each waited for, 60 s per request at most. Loopback only.

    /usr/bin/python3 tests/bench/telemetry_batch.py [N [ROWS]]     (B=build by default)
"""

import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
sys.dont_write_bytecode = True
os.environ.setdefault("DW_BUILD", os.environ.get("B", "build"))

import helpers  # noqa: E402
import mirrorlib as ml  # noqa: E402
from backends import Backend  # noqa: E402
from test_mapping import batch, iot_conf_routes  # noqa: E402


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dir_bytes(path):
    total = 0
    for base, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(base, name)).st_size
            except FileNotFoundError:
                pass
    return total


def run(tmp, routes, n, body, mirrored):
    legacy, target = Backend(name="legacy"), Backend(name="target")
    for b in (legacy, target):
        b.reply(201, b'{"ok": true}', [("Content-Type", "application/json")])
    d = helpers.Daemon(tmp, {"legacy": legacy.url, "v2": {"url": target.url,
                                                          "timeout_ms": 5000}},
                       name="mirrored" if mirrored else "plain")
    d.extra["tenant"] = {"header": "X-Tenant-ID", "default": "default_tenant_id"}
    d.extra["limits"] = {"max_body_bytes": 4 * 1048576}
    d.write_config(d.config_text() + routes)
    d.start()
    try:
        # one warm-up batch, not counted
        ml.send_json(d.port, "POST", "/telemetry/batch", body=body,
                     headers=[("Content-Type", "application/json"), ("X-Tenant-ID", "acme")],
                     timeout=60)
        if mirrored:
            target.wait_requests(1, timeout=60)
        q0, c0, t0 = dir_bytes(d.queue_dir), cpu_s(d.pid), time.monotonic()
        for i in range(n):
            r = ml.send_json(d.port, "POST", "/telemetry/batch", body=body,
                             headers=[("Content-Type", "application/json"),
                                      ("X-Tenant-ID", "acme")], timeout=60)
            assert r.status == 201, r
        if mirrored:
            target.wait_requests(n + 1, timeout=120)
        c1, t1 = cpu_s(d.pid), time.monotonic()
        q1 = dir_bytes(d.queue_dir)
        sent = len(target.requests[-1].body) if mirrored else 0
        return {"cpu_ms": (c1 - c0) * 1000 / n, "wall_ms": (t1 - t0) * 1000 / n,
                "journal_bytes": (q1 - q0) / n, "mirror_body": sent,
                "mirror_requests": len(target.requests) - 1 if mirrored else 0}
    finally:
        d.stop()
        legacy.stop()
        target.stop()


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    body = json.dumps(batch(rows)).encode()
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "m"))
        os.makedirs(os.path.join(tmp, "p"))
        m = run(os.path.join(tmp, "m"), iot_conf_routes(), n, body, True)
        p = run(os.path.join(tmp, "p"), "", n, body, False)
    print("telemetry batch: %d batches of %d rows, request body %d bytes" % (n, rows, len(body)))
    print("  mirrored:     %.2f ms CPU/batch (%.2f ms wall), %d mirror requests, "
          "journal +%.0f bytes/batch, mirror body %d bytes" % (
              m["cpu_ms"], m["wall_ms"], m["mirror_requests"], m["journal_bytes"],
              m["mirror_body"]))
    print("  pass-through: %.2f ms CPU/batch (%.2f ms wall)" % (p["cpu_ms"], p["wall_ms"]))
    print("  mapping + journal + mirror: %.2f ms CPU/batch" % (m["cpu_ms"] - p["cpu_ms"]))


if __name__ == "__main__":
    main()
