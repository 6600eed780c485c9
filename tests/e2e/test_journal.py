"""End-to-end tests of a journal that cannot be written (issue 10, defects 2 and 4; SPEC §5
"G2 in detail").

A write the journal refuses is still sent live: it counts as delivered when the target takes
it, and as lost only when it is neither journaled nor delivered. While the journal refuses
writes, dualwrite_queue_writable is 0, /status says why, and the log says so once per change
of state (not once per write). In durability "fsync" a failed fdatasync is no acknowledgement:
those writes are lost unless delivered, and the journal is unwritable until a sync succeeds.

The faults are real, not simulated:
- disk full: the queue directory is a tmpfs of 1 MiB mounted by the test, filled with a file;
- fsync failure: the queue directory is an ext2 file system on a loop device whose backing
  file is sparse on a small tmpfs; once that tmpfs is full, write(2) into the file system
  still succeeds (page cache) but the writeback of fdatasync fails (ENOSPC/EIO).
Both need root (mount, losetup); the tests skip with the reason where that is not permitted.

Legacy and mirror target are recording raw-socket Backends (backends.py); no PostgreSQL.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest

sys.dont_write_bytecode = True

import helpers  # noqa: E402
import mirrorlib as ml  # noqa: E402
from backends import Reply  # noqa: E402

TEST_BOUND_S = 90

NOT_WRITABLE = "queue: journal not writable"
WRITABLE_AGAIN = "queue: journal writable again"


_bounded = helpers.bounded(TEST_BOUND_S)


def _run(*argv):
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30)


def _mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (euid %d)" % os.geteuid())
    r = _run("mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "tmpfs", path)
    if r.returncode != 0:
        pytest.skip("mount -t tmpfs not permitted here: %s" % r.stderr.strip())


def _umount(path):
    if _run("umount", path).returncode != 0:
        _run("umount", "-l", path)


def fill(directory):
    """Fill the file system of directory with one file, until ENOSPC; returns its path."""
    path = os.path.join(directory, "filler")
    with open(path, "wb", buffering=0) as f:
        block = b"\0" * 65536
        try:
            while True:
                f.write(block)
        except OSError:
            pass
        small = b"\0" * 512
        try:
            while True:
                f.write(small)
        except OSError:
            pass
    return path


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs for the queue directory (skips when mount is not permitted)."""
    mnt = str(tmp_path / "qfs")
    _mount_tmpfs(mnt, "1m")
    q = os.path.join(mnt, "queue")
    os.makedirs(q)
    yield q
    _umount(mnt)


@pytest.fixture
def failing_sync_fs(tmp_path):
    """(queue dir, backing dir): ext2 on a loop device over a sparse file on a 12 MiB
    tmpfs. Fill the backing dir and fdatasync in the queue dir fails; free it and it
    works again."""
    for tool in ("losetup", "mke2fs"):
        if not shutil.which(tool):
            pytest.skip("%s is not installed" % tool)
    back = str(tmp_path / "back")
    _mount_tmpfs(back, "12m")
    img = os.path.join(back, "img")
    with open(img, "wb") as f:
        f.truncate(48 << 20)
    r = _run("losetup", "-f", "--show", img)
    if r.returncode != 0:
        _umount(back)
        pytest.skip("losetup not permitted here: %s" % r.stderr.strip())
    loop = r.stdout.strip()
    mnt = str(tmp_path / "loopfs")
    os.makedirs(mnt)
    ok = False
    try:
        # 4 KiB blocks, one tmpfs page each: every data block the journal grows into
        # after the fill needs a page the full tmpfs cannot give, so the fdatasyncs keep
        # failing until the test frees it.
        r = _run("mke2fs", "-q", "-F", "-t", "ext2", "-b", "4096", "-N", "64", "-m", "0",
                 "-e", "continue", loop)
        assert r.returncode == 0, "mke2fs: %s" % r.stderr
        r = _run("mount", loop, mnt)
        if r.returncode != 0:
            pytest.skip("mounting a loop device not permitted here: %s" % r.stderr.strip())
        ok = True
        q = os.path.join(mnt, "queue")
        os.makedirs(q)
        yield q, back
    finally:
        if ok:
            _umount(mnt)
        _run("losetup", "-d", loop)
        _umount(back)


def counting_legacy(make_backend):
    """A legacy that creates ids 1, 2, 3, ... (each write its own ordering key)."""
    seen = [0]
    lock = threading.Lock()

    def handler(req):
        with lock:
            seen[0] += 1
            no = seen[0]
        return Reply(201, json.dumps({"id": no, "created_at": "2026-01-01T00:00:00Z"}).encode(),
                     [("Content-Type", "application/json")])
    return make_backend(handler, name="legacy")


def created(make_backend):
    b = make_backend(name="target")
    b.reply(201, b'{"ok":true}', [("Content-Type", "application/json")])
    return b


def write(d, n):
    doc = {"user_id": 42, "name": "item %d" % n, "type": "tent", "brand": "MSR"}
    r = ml.send_json(d.port, "POST", "/equipment", doc)
    assert r.status == 201, "POST /equipment through the sidecar: %r" % r
    return r.json()["id"]


def journal_status(d):
    r = d.admin("/status")
    assert r.status == 200, r
    return r.json()["queue"]["journal"]


def log_lines(d, text):
    return [ln for ln in d.log_text().splitlines() if text in ln]


def stop_expecting_losses(request, d):
    """Stop d (SIGTERM, exit 0) and check its log for what must never appear but the
    "lost" lines this test caused on purpose (conftest's clean stop forbids those)."""
    request.node._dw_daemons.remove(d)  # conftest's clean stop would refuse them
    d.finished = True
    rc = d.stop()
    assert rc == 0, "daemon exited %s; log:\n%s" % (rc, d.log_text())
    bad = [ln for ln in d.log_text().splitlines()
           if re.search(r"AddressSanitizer|LeakSanitizer|runtime error:|Assertion", ln)]
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------- disk full


def test_disk_full_healthy_target_delivers_every_write_and_says_so_once(
        small_tmpfs, dw, make_backend):
    legacy = counting_legacy(make_backend)
    target = created(make_backend)
    d = ml.mirror_daemon(dw, legacy.url, target.url, ml.gear_routes(),
                         queue={"path": small_tmpfs})
    write(d, 0)
    ml.wait_outcomes(d, lambda o: o["result"] == "delivered", 1, 10, "the first delivery")
    assert d.metric("dualwrite_queue_writable") == 1
    assert journal_status(d)["writable"] is True

    filler = fill(os.path.dirname(small_tmpfs))
    n = 60  # more than the last page of the segment can still take
    for i in range(1, n + 1):
        write(d, i)
    out = ml.wait_outcomes(d, lambda o: o["result"] == "delivered", n + 1, 20,
                           "every write delivered")
    assert len(target.wait_requests(n + 1, timeout=10)) == n + 1
    assert ml.mirror_total(d, result="lost") == 0
    assert ml.mirror_total(d, result="delivered") == n + 1
    assert any(o["seq"] == 0 for o in out), "no write went out without the journal"
    assert d.metric("dualwrite_queue_writable") == 0
    js = journal_status(d)
    assert js["writable"] is False, js
    assert "No space left on device" in js["error"], js
    assert js["writes_without_journal"] >= 1 and js["lost"] == 0, js
    assert d.admin("/ready").status == 200
    lines = log_lines(d, NOT_WRITABLE)
    assert len(lines) == 1, "one line per change of state, not per write:\n%s" % "\n".join(lines)
    assert "No space left on device" in lines[0], lines

    os.unlink(filler)
    write(d, n + 1)
    ml.wait_outcomes(d, lambda o: o["result"] == "delivered" and o["seq"] > 0, 2, 10,
                     "a journaled delivery after space came back")
    assert d.metric("dualwrite_queue_writable") == 1
    assert journal_status(d)["writable"] is True
    again = log_lines(d, WRITABLE_AGAIN)
    assert len(again) == 1 and " 0 lost" in again[0], again
    assert len(log_lines(d, NOT_WRITABLE)) == 1


def test_outcomes_the_full_disk_refused_are_recorded_once_it_has_room(
        small_tmpfs, dw, make_backend):
    """Writes journaled before the disk filled are delivered after: their outcomes cannot
    be written then, are kept, and go into the journal as soon as it has room - no record
    is left pending, to be sent once more after a restart."""
    k = 24
    release = threading.Event()
    seen = [0]
    lock = threading.Lock()

    def handler(req):
        with lock:
            seen[0] += 1
            no = seen[0]
        if no <= k:
            release.wait(10)  # answered only once the disk is full
        return Reply(201, b'{"ok":true}', [("Content-Type", "application/json")])
    legacy = counting_legacy(make_backend)
    target = make_backend(handler, name="target")
    d = ml.mirror_daemon(dw, legacy.url, target.url, ml.gear_routes(),
                         queue={"path": small_tmpfs}, target_timeout_ms=8000)
    for i in range(k):
        write(d, i)  # journaled; their sends wait in the target
    target.wait_requests(k, timeout=10)
    filler = fill(os.path.dirname(small_tmpfs))
    i = k
    while not log_lines(d, NOT_WRITABLE):  # until the segment's last page is used up too
        assert i < k + 200, "the journal never refused a write; log:\n%s" % d.log_text()
        write(d, i)
        i += 1
    release.set()
    ml.wait_outcomes(d, lambda o: o["result"] == "delivered", i, 20, "every write delivered")
    assert ml.queue_stats(d.conf_path)["pending"] > 0  # the refused outcomes
    os.unlink(filler)
    write(d, i)
    ml.wait_outcomes(d, lambda o: o["result"] == "delivered", i + 1, 10, "the last delivery")
    st = ml.queue_stats(d.conf_path)
    assert st["pending"] == 0 and st["queued"] == 0, st
    assert ml.mirror_total(d, result="lost") == 0
    assert d.metric("dualwrite_queue_writable") == 1


def test_disk_full_target_down_counts_each_write_lost_loudly(small_tmpfs, dw, make_backend,
                                                              request):
    legacy = counting_legacy(make_backend)
    dead_url = "http://127.0.0.1:%d" % helpers.free_port()  # nothing listens there
    d = ml.mirror_daemon(dw, legacy.url, dead_url, ml.gear_routes(),
                         queue={"path": small_tmpfs}, target_timeout_ms=500)
    filler = fill(os.path.dirname(small_tmpfs))
    n = 60
    for i in range(n):
        write(d, i)  # the client is served all the same (G1)
    out = ml.wait_outcomes(d, lambda o: o["result"] in ("lost", "queued"), n, 20,
                           "every write settled")
    lost = [o for o in out if o["result"] == "lost"]
    queued = [o for o in out if o["result"] == "queued"]
    assert lost, "disk full and target down, yet nothing lost?"
    assert all(o["seq"] == 0 for o in lost) and all(o["seq"] > 0 for o in queued), out
    assert ml.mirror_total(d, result="lost") == len(lost)
    assert ml.mirror_total(d, result="delivered") == 0
    for o in lost:
        assert "level=error" in o["line"], o  # not info: loud
        assert "No space left on device" in (o["reason"] or ""), o
    js = journal_status(d)
    assert js["writable"] is False and js["lost"] == len(lost), js
    assert len(log_lines(d, NOT_WRITABLE)) == 1
    os.unlink(filler)
    stop_expecting_losses(request, d)


# ---------------------------------------------------------------- fsync failure


def test_failed_fdatasync_is_no_acknowledgement(failing_sync_fs, dw, make_backend, request):
    qdir, back = failing_sync_fs
    legacy = counting_legacy(make_backend)
    target = created(make_backend)
    d = ml.mirror_daemon(dw, legacy.url, target.url, ml.gear_routes(),
                         queue={"path": qdir, "durability": "fsync"})
    write(d, 0)
    ml.wait_outcomes(d, lambda o: o["result"] == "delivered", 1, 10, "the first delivery")
    assert d.metric("dualwrite_queue_writable") == 1

    filler = fill(back)  # the loop device's writeback now fails ...
    i = 1
    while not log_lines(d, NOT_WRITABLE):  # ... once the journal leaves its last block
        assert i < 200, "fdatasync never failed; log:\n%s" % d.log_text()
        write(d, i)
        i += 1
    for _ in range(5):
        write(d, i)  # answers are released (G1) even though the sync failed
        i += 1
    n = i - 1
    ml.wait_outcomes(d, lambda o: o["result"] == "delivered", n + 1, 20,
                     "every write delivered live")
    assert ml.mirror_total(d, result="lost") == 0
    assert d.metric("dualwrite_queue_writable") == 0
    js = journal_status(d)
    assert js["writable"] is False and "fdatasync" in js["error"], js
    assert js["writes_without_journal"] >= 1 and js["lost"] == 0, js
    lines = log_lines(d, NOT_WRITABLE)
    assert len(lines) == 1 and "fdatasync" in lines[0], lines

    # The target goes away: a write whose sync failed and which is not delivered is lost,
    # even though its record may be in the page cache.
    target.stop()
    for _ in range(5):
        write(d, i)
        i += 1
    lost = ml.wait_outcomes(d, lambda o: o["result"] == "lost", 5, 20, "lost writes")
    assert all("not durably journaled" in (o["reason"] or "") for o in lost), lost
    assert ml.mirror_total(d, result="lost") == 5
    assert len(log_lines(d, NOT_WRITABLE)) == 1

    os.unlink(filler)  # a later sync succeeds: writable again
    deadline = time.monotonic() + 10
    while not log_lines(d, WRITABLE_AGAIN):
        assert time.monotonic() < deadline, "never writable again; log:\n%s" % d.log_text()
        write(d, i)
        i += 1
    assert d.metric("dualwrite_queue_writable") == 1
    assert journal_status(d)["writable"] is True
    again = log_lines(d, WRITABLE_AGAIN)
    m = re.search(r" (\d+) lost", again[0]) if len(again) == 1 else None
    assert m and int(m.group(1)) >= 5, again
    stop_expecting_losses(request, d)
