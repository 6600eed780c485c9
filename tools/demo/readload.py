#!/usr/bin/env python3
"""readload.py — the demo's read loop (Phase 3): N GETs against 127.0.0.1:PORT over a few
keep-alive connections, bounded in count and time, and a one-line tally.

    readload.py --port P --count N --path '/user/{1000-3999}/equipment' --path '/equipment/{1-99}'
                [--conns 4] [--seed S] [--header 'X-Tenant-ID: t'] [--keys id,name,type]
                [--forbid category] [--max-seconds 60]

Each read takes the next --path template in turn; "{A-B}" in it is replaced by a number drawn
(seeded, so a step is repeatable) from A..B. An answer counts as an error unless it is a 200
whose body is JSON: an object, or a list of objects, each holding every --keys field and no
--forbid field (the legacy's shape, whichever side served it). A connection failure is an
error too (the read is retried once on a fresh connection only when a reused connection was
closed before any answer byte, as any HTTP client does). Prints

    reads=N ok=N errors=E retried=T seconds=S rate=R/s [first error: ...]

and exits 0 when E = 0, 1 otherwise, 2 on bad usage or when --max-seconds ran out.
"""

import argparse
import http.client
import json
import random
import re
import sys
import threading
import time

RANGE = re.compile(r"\{(\d+)-(\d+)\}")


def compile_path(t):
    m = RANGE.search(t)
    if not m:
        return lambda rng: t
    lo, hi = int(m.group(1)), int(m.group(2))
    if hi < lo:
        raise ValueError("empty range in %r" % t)
    head, tail = t[:m.start()], t[m.end():]
    return lambda rng: "%s%d%s" % (head, rng.randint(lo, hi), tail)


def shape_error(body, keys, forbid):
    try:
        doc = json.loads(body)
    except ValueError as e:
        return "not JSON (%s)" % e
    items = doc if isinstance(doc, list) else [doc]
    for it in items:
        if not isinstance(it, dict):
            return "not an object: %.80r" % (it,)
        for k in keys:
            if k not in it:
                return "no %r in %.120s" % (k, json.dumps(it))
        for k in forbid:
            if k in it:
                return "%r (not the legacy's shape) in %.120s" % (k, json.dumps(it))
    return None


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.errors = 0
        self.retried = 0
        self.first = None

    def add(self, err):
        with self.lock:
            if err is None:
                self.ok += 1
            else:
                self.errors += 1
                if self.first is None:
                    self.first = err


def worker(args, paths, headers, jobs, tally, deadline, seed):
    rng = random.Random(seed)
    conn = None
    for i in jobs:
        if time.monotonic() > deadline:
            return
        path = paths[i % len(paths)](rng)
        err = None
        for attempt in (1, 2):
            fresh = conn is None
            if fresh:
                conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    err = "GET %s: %d %.120r" % (path, resp.status, body)
                else:
                    e = shape_error(body, args.keys, args.forbid)
                    err = None if e is None else "GET %s: %s" % (path, e)
                if resp.will_close:
                    conn.close()
                    conn = None
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn.close()
                conn = None
                err = "GET %s: %s" % (path, e)
                if fresh:
                    break
                with tally.lock:
                    tally.retried += 1
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                conn = None
                err = "GET %s: %s" % (path, e)
                break
        tally.add(err)
    if conn is not None:
        conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--path", action="append", required=True)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--keys", default="")
    ap.add_argument("--forbid", default="")
    ap.add_argument("--max-seconds", type=float, default=60)
    args = ap.parse_args()
    if not 1 <= args.count <= 1000000 or not 1 <= args.conns <= 64 or args.max_seconds <= 0:
        ap.error("--count 1..1000000, --conns 1..64, --max-seconds > 0")
    args.keys = [k for k in args.keys.split(",") if k]
    args.forbid = [k for k in args.forbid.split(",") if k]
    try:
        paths = [compile_path(p) for p in args.path]
    except ValueError as e:
        ap.error(str(e))
    headers = {"Host": "demo", "Accept": "application/json"}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep:
            ap.error("--header NAME: VALUE")
        headers[name.strip()] = value.strip()

    tally = Tally()
    t0 = time.monotonic()
    deadline = t0 + args.max_seconds
    threads = []
    for c in range(args.conns):
        jobs = range(c, args.count, args.conns)
        t = threading.Thread(target=worker, daemon=True,
                             args=(args, paths, headers, jobs, tally, deadline,
                                   args.seed * 1000 + c))
        t.start()
        threads.append(t)
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 15)
    secs = time.monotonic() - t0
    done = tally.ok + tally.errors
    line = "reads=%d ok=%d errors=%d retried=%d seconds=%.1f rate=%.0f/s" % (
        done, tally.ok, tally.errors, tally.retried, secs, done / secs if secs > 0 else 0)
    if tally.first:
        line += " first error: " + tally.first
    print(line, flush=True)
    if done < args.count:
        print("readload: stopped after %d of %d reads (--max-seconds %g)" % (
            done, args.count, args.max_seconds), file=sys.stderr)
        return 2
    return 0 if tally.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
