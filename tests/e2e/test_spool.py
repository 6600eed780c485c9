"""End-to-end tests of the replay queue's own promises (issue 10; SPEC §5 "G2 in detail").

Real dualwrited, real queue files on disk, recording raw-socket backends (backends.py) as
legacy and mirror target, the real CLI to inspect the queue:

- a dead letter does not pin the queue: with queue.max_bytes = 1 MiB, one dead letter and
  then several MiB of healthy mirrors lose nothing, also across a restart;
- damage is never silent: a segment cut at a frame boundary while the daemon is stopped is
  named on start (missing seqs) and counted; the queue directory removed under a running
  daemon is noticed within 2 s, the records it held are no longer called queued, and new
  writes are journaled again.

Every test is bounded by an alarm; every loop and wait is bounded in count and time.
"""

import itertools
import json
import os
import shutil
import struct
import sys

sys.dont_write_bytecode = True

import helpers  # noqa: E402
import mirrorlib as ml  # noqa: E402
from backends import Reply  # noqa: E402

TEST_BOUND_S = 120


_bounded = helpers.bounded(TEST_BOUND_S)


JSON = [("Content-Type", "application/json")]


def counting_legacy(make_backend):
    """A legacy answering every create with the next id (1, 2, ...)."""
    ids = itertools.count(1)

    def handler(req):
        body = {"id": next(ids), "created_at": "2026-01-01T00:00:00Z"}
        return Reply(201, json.dumps(body).encode(), JSON)
    return make_backend(handler, name="legacy")


def healthy_target(make_backend):
    return make_backend(lambda req: Reply(201, b'{"ok": true}', JSON), name="target")


def create(d, name):
    r = ml.send_json(d.port, "POST", "/equipment",
                     {"user_id": 42, "name": name, "type": "tent", "brand": "MSR"})
    assert r.status == 201, "POST /equipment through the sidecar: %r" % r
    return r.json()["id"]


def wait_received(d, target, n):
    """The target got n mirrors (bounded); a short message when not."""
    try:
        helpers.wait_for(lambda: len(target.requests) >= n, 30, "%d mirrors" % n, interval=0.1)
    except AssertionError:
        raise AssertionError("the target got %d of %d mirrors; lost=%d" % (
            len(target.requests), n, lost(d))) from None
    return [json.loads(q.body)["id"] for q in target.requests]


def lost(d):
    return d.metric("dualwrite_mirror_total", result="lost")


def damaged(d):
    return d.metric("dualwrite_queue_damaged_total")


def status_queue(d):
    r = d.admin("/status")
    assert r.status == 200, r
    return json.loads(r.body)["queue"]


def segments(queue_dir):
    return sorted(os.path.join(queue_dir, f) for f in os.listdir(queue_dir)
                  if f.startswith("seg-") and f.endswith(".log"))


def frames(path):
    """[(offset, end, type, seq)] of the frames of a segment file."""
    with open(path, "rb") as f:
        data = f.read()
    out, pos = [], 0
    while pos + 21 <= len(data):
        magic, length, _crc, typ, seq = struct.unpack_from("<IIIBQ", data, pos)
        assert magic == 0x31515744, "no frame at %d of %s" % (pos, path)
        out.append((pos, pos + 21 + length, typ, seq))
        pos += 21 + length
    return out


def finish_with_damage(d):
    """Stop d (clean exit 0) and check its log for sanitizer reports only: the damage
    these tests make is meant to be reported, in words the clean-log check forbids."""
    d.stopped_by_test = True
    assert d.stop() == 0, d.log_text()
    d.finished = True
    if d.logf:
        d.logf.close()
        d.logf = None
    bad = [ln for ln in d.log_text().splitlines()
           if "Sanitizer" in ln or "runtime error:" in ln or "Assertion" in ln]
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------- a dead letter does not pin


def test_one_dead_letter_does_not_make_every_later_mirror_lost(dw, make_backend):
    legacy, target = counting_legacy(make_backend), healthy_target(make_backend)
    d = ml.mirror_daemon(dw, legacy.url, target.url, ml.gear_routes(),
                         queue={"max_bytes": 1048576})
    # The dead letter: a body that is not JSON cannot be mapped.
    r = ml.send_json(d.port, "POST", "/equipment", body=b"not json",
                     headers=[("Content-Type", "text/plain")])
    assert r.status == 201, r
    ml.wait_outcomes(d, lambda o: o["result"] == "dead", 1, 5, "the dead letter")

    # Then healthy writes of ~4 KiB records: 3.5 MiB in all, 3.5 times max_bytes.
    name = "tent " * 800
    sent = [create(d, "%d %s" % (i, name)) for i in range(900)]
    assert sorted(wait_received(d, target, len(sent))) == sorted(sent)
    assert lost(d) == 0, [ln for ln in d.log_text().splitlines() if "lost" in ln][:5]
    st = ml.queue_stats(d.conf_path)
    assert (st["dead"], st["queued"]) == (1, 0), st
    assert sum(os.path.getsize(s) for s in segments(d.queue_dir)) < 4 * 1048576

    # Across a restart: the dead letter is still there, and still pins nothing.
    assert d.stop() == 0
    _restart(d)
    more = [create(d, "%d %s" % (i, name)) for i in range(900, 1800)]
    assert sorted(wait_received(d, target, len(sent) + len(more))) == sorted(sent + more)
    assert lost(d) == 0
    st = ml.queue_stats(d.conf_path)
    assert (st["dead"], st["queued"]) == (1, 0), st
    dead = ml.queue_list(d.conf_path, dead=True)
    assert len(dead) == 1 and "json" in dead[0]["line"].lower(), dead


def _restart(d):
    if d.logf:
        d.logf.close()
        d.logf = None
    d.start()


# ---------------------------------------------------------------- damage is never silent


def test_segment_cut_at_a_frame_boundary_is_named_on_start(dw, make_backend):
    legacy = counting_legacy(make_backend)
    down = "http://127.0.0.1:%d" % helpers.free_port()  # nothing listens: mirrors queue
    d = ml.mirror_daemon(dw, legacy.url, down, ml.gear_routes(), target_timeout_ms=500)
    for i in range(10):
        create(d, "item %d" % i)
    helpers.wait_for(lambda: status_queue(d)["queued"] == 10, 15, "10 queued")
    assert d.stop() == 0
    seg = segments(d.queue_dir)[-1]
    records = [f for f in frames(seg) if f[2] == 4]
    assert len(records) == 10, frames(seg)
    # Cut right after the 6th record's frame: a clean log, 4 records short.
    cut = records[5][1]
    with open(seg, "r+b") as f:
        f.truncate(cut)
    lost_seqs = [f[3] for f in records[6:]]

    _restart(d)
    log = d.log_text()
    want = "records %d..%d (4) are missing" % (lost_seqs[0], lost_seqs[-1])
    assert want in log, log[-3000:]
    assert damaged(d) >= 4
    assert status_queue(d)["queued"] == 6
    finish_with_damage(d)


def test_queue_directory_removed_under_a_running_daemon(dw, make_backend):
    legacy = counting_legacy(make_backend)
    down = "http://127.0.0.1:%d" % helpers.free_port()
    d = ml.mirror_daemon(dw, legacy.url, down, ml.gear_routes(), target_timeout_ms=500,
                         queue={"durability": "fsync"})
    ids = [create(d, "item %d" % i) for i in range(5)]
    helpers.wait_for(lambda: status_queue(d)["queued"] == 5, 15, "5 queued")
    assert damaged(d) == 0

    shutil.rmtree(d.queue_dir)
    # Noticed within 2 s (the daemon's 1 s tick), also without anyone asking /metrics.
    helpers.wait_for(lambda: "was removed or replaced under the running process"
                     in d.log_text(), 2.0, "the log to say the queue directory was removed")
    assert damaged(d) >= 5
    log = d.log_text()
    for lid in ids:
        assert "key gear_ops/%d" % lid in log, (lid, log[-3000:])
    q = status_queue(d)
    assert (q["queued"], q["pending"]) == (0, 0), q  # not called queued any more

    # New writes are journaled again, in a directory made again.
    create(d, "after")
    helpers.wait_for(lambda: status_queue(d)["queued"] == 1, 15, "the new write queued")
    assert segments(d.queue_dir), os.listdir(d.queue_dir)
    st = ml.queue_stats(d.conf_path)
    assert st["queued"] == 1, st
    finish_with_damage(d)
