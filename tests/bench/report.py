#!/usr/bin/env python3
"""report.py - the closing table of tests/bench/bench.sh, from the files of one run.

usage: report.py RESULTS_DIR      (bench-results/bench-<stamp>/)

Reads what bench.sh left there: the peer harness's raw TSVs (peers-pass/, peers-mem/,
peers-mirror/), spool.tsv (bench_spool), pg.tsv (pgbench), data.tsv (key, value lines),
notes.txt and machine.txt. Prints plain-text tables and writes summary.json beside them.
Every ratio pairs the candidate with a peer measured in the same run and repetition (the
machine is shared; absolute figures drift, paired ratios much less). Python 3 stdlib only.
"""
import csv
import glob
import json
import os
import statistics
import sys


def fnum(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def fmt(x, nd=0):
    if x is None:
        return "-"
    return "%.*f" % (nd, x)


def ratio(a, b):
    return a / b if a is not None and b else None


def table(hdr, rows):
    w = [max(len(str(c)) for c in col) for col in zip(hdr, *rows)]

    def line(r):
        return "  ".join(str(c).rjust(w[i]) if i else str(c).ljust(w[i]) for i, c in enumerate(r))
    out = [line(hdr), "  ".join("-" * x for x in w)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def load_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def raw_rows(d, pattern):
    rows = []
    for p in sorted(glob.glob(os.path.join(d, pattern))):
        if p.endswith("-summary.tsv"):
            continue
        rows += load_tsv(p)
    return rows


def clean(r):
    return r.get("noisy", "0") in ("0", "")


def per_rep(rows):
    """scenario -> {rep: row}: the last clean attempt of each repetition, else its last."""
    out = {}
    for r in rows:
        d = out.setdefault(r["scenario"], {})
        cur = d.get(r["rep"])
        if cur is None or clean(r) or not clean(cur):
            d[r["rep"]] = r
    return out


def med_col(reps, col):
    v = [fnum(r.get(col)) for r in reps.values()]
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def paired(per, a, b, col):
    """median, min, max over repetitions of a/b on column col (same repetition)."""
    ra, rb = per.get(a, {}), per.get(b, {})
    reps = [k for k in ra if k in rb]
    both = [k for k in reps if clean(ra[k]) and clean(rb[k])]
    v = [ratio(fnum(ra[k].get(col)), fnum(rb[k].get(col))) for k in (both or reps)]
    v = [x for x in v if x is not None]
    if not v:
        return None
    return statistics.median(v), min(v), max(v)


def fmt_pair(p, nd=2):
    if p is None:
        return "-"
    if p[1] == p[2]:
        return "%.*fx" % (nd, p[0])
    return "%.*fx (%.*f..%.*f)" % (nd, p[0], nd, p[1], nd, p[2])


def errors(reps):
    n = 0
    for r in reps.values():
        for c in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"):
            n += int(fnum(r.get(c)) or 0)
    return n


def scen_summary(per, name):
    reps = per.get(name, {})
    return {
        "reps": len(reps),
        "noisy_reps": sum(1 for r in reps.values() if not clean(r)),
        "rps": med_col(reps, "rps"),
        "p50_ms": med_col(reps, "p50_ms"),
        "p99_ms": med_col(reps, "p99_ms"),
        "cpu_us_per_req": med_col(reps, "proxy_cpu_us_per_req"),
        "mirror_ratio": med_col(reps, "mirror_ratio"),
        "errors": errors(reps),
        "sanity": ",".join(sorted({r.get("sanity_code", "") for r in reps.values()})),
    }


def section_pass(d, out, js):
    rows = raw_rows(os.path.join(d, "peers-pass"), "peers-*.tsv")
    if not rows:
        return
    per = per_rep(rows)
    peers = [s for s in ("nginx", "haproxy", "h2o") if s in per]
    hdr = ["pass-through (POST)", "reps", "req/s", "p50 ms", "p99 ms", "CPU us/req", "errors",
           "candidate req/s vs it", "candidate CPU/req vs it"]
    tab = []
    js["passthrough"] = {}
    for s in peers + ["candidate-fast"]:
        x = scen_summary(per, s)
        pr = pc = None
        if s != "candidate-fast":
            pr = paired(per, "candidate-fast", s, "rps")
            pc = paired(per, "candidate-fast", s, "proxy_cpu_us_per_req")
        x["candidate_rps_ratio"] = pr
        x["candidate_cpu_ratio"] = pc
        js["passthrough"][s] = x
        tab.append([s if s != "candidate-fast" else "dualwrited", "%d%s" % (x["reps"], "!" * (x["noisy_reps"] > 0)),
                    fmt(x["rps"]), fmt(x["p50_ms"], 2), fmt(x["p99_ms"], 2), fmt(x["cpu_us_per_req"], 1),
                    str(x["errors"]), fmt_pair(pr), fmt_pair(pc)])
    out.append(table(hdr, tab))


def section_mem(d, out, js):
    rows = raw_rows(os.path.join(d, "peers-mem"), "mem-*.tsv")
    if not rows:
        return
    by = {}
    for r in rows:
        by[(r["peer"], r["conns"])] = r
    conns = sorted({r["conns"] for r in rows}, key=int)
    peers = [p for p in ("nginx", "haproxy", "h2o", "candidate") if any((p, c) in by for c in conns)]
    hdr = ["idle keep-alive memory", "conns", "ok", "RSS MiB", "RSS B/conn", "PSS B/conn",
           "dualwrited B/conn vs it"]
    tab = []
    js["memory"] = []
    for c in conns:
        cand = by.get(("candidate", c))
        for p in peers:
            r = by.get((p, c))
            if not r:
                continue
            rb = fnum(r["rss_per_conn_b"])
            rr = ratio(fnum(cand["rss_per_conn_b"]), rb) if cand and p != "candidate" else None
            js["memory"].append({"peer": p, "conns": int(c), "ok": int(r["ok"]), "rss_kb": fnum(r["rss_kb"]),
                                 "rss_per_conn_b": rb, "pss_per_conn_b": fnum(r["pss_per_conn_b"]),
                                 "candidate_ratio": rr})
            tab.append([p if p != "candidate" else "dualwrited", c, r["ok"],
                        fmt(fnum(r["rss_kb"]) / 1024, 1), fmt(rb), fmt(fnum(r["pss_per_conn_b"])),
                        ("%.2fx" % rr) if rr is not None else "-"])
    out.append(table(hdr, tab))


def section_mirror(d, out, js):
    rows = raw_rows(os.path.join(d, "peers-mirror"), "peers-*.tsv")
    if not rows:
        return
    per = per_rep(rows)
    hdr = ["mirror target", "proxy", "reps", "req/s", "p50 ms", "p99 ms", "CPU us/req",
           "mirror/legacy", "errors", "dualwrited/nginx req/s", "p99 ratio"]
    tab = []
    js["mirror"] = {}
    for kind in ("fast", "slow", "down", "hang"):
        ref, cand = "nginx-mirror-" + kind, "candidate-" + kind
        if ref not in per and cand not in per:
            continue
        xr, xc = scen_summary(per, ref), scen_summary(per, cand)
        pr = paired(per, cand, ref, "rps")
        pp = paired(per, cand, ref, "p99_ms")
        js["mirror"][kind] = {"nginx": xr, "dualwrited": xc, "rps_ratio": pr, "p99_ratio": pp}
        for who, x, a, b in (("nginx mirror", xr, "", ""), ("dualwrited", xc, fmt_pair(pr), fmt_pair(pp))):
            tab.append([kind, who, "%d%s" % (x["reps"], "!" * (x["noisy_reps"] > 0)), fmt(x["rps"]),
                        fmt(x["p50_ms"], 2), fmt(x["p99_ms"], 2), fmt(x["cpu_us_per_req"], 1),
                        fmt(x["mirror_ratio"], 3), str(x["errors"]), a or "", b or ""])
    out.append(table(hdr, tab))


def runs_as_reps(d):
    """The raw rows of one harness run per file (REPS=1 each), the run's index as "rep"."""
    rows = []
    files = [p for p in sorted(glob.glob(os.path.join(d, "peers-*.tsv"))) if not p.endswith("-summary.tsv")]
    for i, p in enumerate(files, 1):
        for r in load_tsv(p):
            r["rep"] = "%d.%s" % (i, r["rep"])
            rows.append(r)
    return rows


def new_share(x):
    """The share of GETs the new system answered: the harness's mirror/legacy (requests each
    origin received) r gives r / (1 + r)."""
    r = x.get("mirror_ratio")
    return r / (1 + r) if r is not None else None


def section_read(d, out, js):
    """Phase 3's read route (half of the GETs mapped from the new system) vs dualwrited's own
    pass-through GET (CPU per request, run i with run i) and vs nginx-get (same run)."""
    gp = runs_as_reps(os.path.join(d, "peers-getpass"))
    rd = runs_as_reps(os.path.join(d, "peers-read"))
    if not gp and not rd:
        return
    pgp, prd = per_rep(gp), per_rep(rd)
    both = {"getpass": pgp.get("candidate-get", {}), "read": prd.get("candidate-get", {})}
    cpu = paired(both, "read", "getpass", "proxy_cpu_us_per_req")
    rps_read = paired(prd, "candidate-get", "nginx-get", "rps")
    p99_read = paired(prd, "candidate-get", "nginx-get", "p99_ms")
    rps_pass = paired(pgp, "candidate-get", "nginx-get", "rps")
    p99_pass = paired(pgp, "candidate-get", "nginx-get", "p99_ms")
    ng = per_rep([dict(r, rep=k + r["rep"]) for k, rows in (("p", gp), ("r", rd))
                  for r in rows if r["scenario"] == "nginx-get"]).get("nginx-get", {})  # both kinds of run
    xs = [("nginx-get", scen_summary({"n": ng}, "n"), None, None, None),
          ("dualwrited GET pass-through", scen_summary(pgp, "candidate-get"), rps_pass, p99_pass, None),
          ("dualwrited GET read 50% new", scen_summary(prd, "candidate-get"), rps_read, p99_read, cpu)]
    js["read"] = {"cpu_ratio_vs_passthrough": cpu, "rps_ratio_vs_nginx_get": rps_read,
                  "p99_ratio_vs_nginx_get": p99_read, "passthrough_rps_ratio_vs_nginx_get": rps_pass,
                  "passthrough_p99_ratio_vs_nginx_get": p99_pass}
    hdr = ["read route (GET)", "runs", "req/s", "p50 ms", "p99 ms", "CPU us/req", "new share",
           "errors", "req/s vs nginx-get", "p99 vs nginx-get", "CPU/req vs pass-through"]
    tab = []
    for name, x, a, b, c in xs:
        js["read"][name] = dict(x, new_share=new_share(x) if name.endswith("new") else None)
        tab.append([name, "%d%s" % (x["reps"], "!" * (x["noisy_reps"] > 0)), fmt(x["rps"]),
                    fmt(x["p50_ms"], 2), fmt(x["p99_ms"], 2), fmt(x["cpu_us_per_req"], 1),
                    fmt(new_share(x), 3) if name.endswith("new") else "",
                    str(x["errors"]), fmt_pair(a) if a else "", fmt_pair(b) if b else "",
                    fmt_pair(c) if c else ""])
    out.append("bars (issue 11): CPU/req <= 1.15x pass-through; req/s >= 1x and p99 <= 1x nginx-get\n"
               + table(hdr, tab))


def section_json(d, out, js):
    p = os.path.join(d, "json.tsv")
    if not os.path.exists(p):
        return
    rows = [ln.rstrip("\n").split("\t") for ln in open(p) if ln.strip()]
    if len(rows) < 2:
        return
    out.append("")
    out.append("JSON for the mapping (build/bench/bench_json; us per operation, best of 3 rounds):")
    out.append(table(rows[0], rows[1:]))
    js["json"] = [dict(zip(rows[0], r)) for r in rows[1:]]


def section_spool(d, out, js):
    sp = os.path.join(d, "spool.tsv")
    pg = os.path.join(d, "pg.tsv")
    srows = load_tsv(sp) if os.path.exists(sp) and os.path.getsize(sp) else []
    prows = load_tsv(pg) if os.path.exists(pg) and os.path.getsize(pg) else []
    if not srows and not prows:
        return
    proc = next((fnum(r["records_per_s"]) for r in srows if r["mode"] == "process"), None)
    fs = {r["k"]: r for r in srows if r["mode"] == "fsync"}
    pgk = {r["k"]: r for r in prows}
    ks = sorted(set(fs) | set(pgk), key=int)
    hdr = ["writers K", "spool process rec/s", "spool fsync rec/s", "fdatasync us", "pg commits/s",
           "spool-fsync / pg"]
    tab = []
    js["spool"] = {"process_records_per_s": proc, "by_k": []}
    for k in ks:
        f = fs.get(k, {})
        rf, tps = fnum(f.get("records_per_s")), fnum(pgk.get(k, {}).get("tps"))
        rr = ratio(rf, tps)
        js["spool"]["by_k"].append({"k": int(k), "spool_fsync_records_per_s": rf,
                                    "sync_us_mean": fnum(f.get("sync_us_mean")),
                                    "pg_tps": tps, "ratio": rr})
        tab.append([k, fmt(proc), fmt(rf), fmt(fnum(f.get("sync_us_mean"))), fmt(tps),
                    ("%.2fx" % rr) if rr is not None else "-"])
    out.append(table(hdr, tab))
    ro = [(r["mode"], r["k"], r["records"], fnum(r.get("reopen_s"))) for r in srows if r.get("reopen_s")]
    if ro:
        js["spool"]["reopen"] = [{"mode": m, "k": int(k), "records": int(n), "seconds": t} for m, k, n, t in ro]
        out.append("spool reopen as owner (daemon restart with that backlog): " + "; ".join(
            "%s records %s s (%.1f us/record)" % (n, fmt(t, 2), 1e6 * t / int(n) if int(n) else 0)
            for m, k, n, t in ro))


def section_data(kv, out, js, pre="", title=None):
    """The backfill vs \\copy table (pre "t": telemetry), then verify (Gear only)."""
    sizes = sorted({int(k.split("_")[1]) for k in kv if k.startswith((pre + "backfill_", pre + "copy_"))
                    and k.split("_")[1].isdigit()})
    if not sizes:
        return
    hdr = ["rows", "backfill s", "backfill rows/s", "\\copy pipe s", "\\copy rows/s",
           "backfill / \\copy", "backfill peak RSS MiB"]
    tab = []
    name = pre + "backfill"
    js[name] = []
    for n in sizes:
        bs, cs = fnum(kv.get(pre + "backfill_%d_seconds" % n)), fnum(kv.get(pre + "copy_%d_seconds" % n))
        ok_b = kv.get(pre + "backfill_%d_rows" % n) == str(n)
        ok_c = kv.get(pre + "copy_%d_rows" % n) == str(n)
        br = n / bs if bs and ok_b else None
        cr = n / cs if cs and ok_c else None
        rss = fnum(kv.get(pre + "backfill_%d_maxrss_kb" % n))
        js[name].append({"rows": n, "backfill_s": bs, "backfill_rows_per_s": br, "copy_s": cs,
                               "copy_rows_per_s": cr, "ratio": ratio(br, cr), "maxrss_kb": rss,
                               "reported": kv.get(pre + "backfill_%d_reported" % n)})
        tab.append([str(n), fmt(bs, 2) + ("" if ok_b else " FAILED"), fmt(br), fmt(cs, 2) + ("" if ok_c else " FAILED"),
                    fmt(cr), ("%.2fx" % ratio(br, cr)) if ratio(br, cr) else "-",
                    fmt(rss / 1024, 1) if rss else "-"])
    out.append((title + "\n" if title else "") + table(hdr, tab))
    if pre:
        return
    n = kv.get("verify_rows")
    vs = fnum(kv.get("verify_%s_seconds" % n))
    if vs is not None:
        c, s = fnum(kv.get("scan_count_%s_seconds" % n)), fnum(kv.get("scan_select_%s_seconds" % n))
        ex = kv.get("verify_%s_exit" % n)
        rss = fnum(kv.get("verify_%s_maxrss_kb" % n))
        js["verify"] = {"rows": int(n), "verify_s": vs, "exit": ex, "maxrss_kb": rss,
                        "scan_count_s": c, "scan_select_s": s,
                        "vs_count": ratio(vs, c), "vs_select": ratio(vs, s)}
        hdr = ["verify of N equal rows", "seconds", "verify / this"]
        tab = [["dualwrite verify (exit %s, peak RSS %s MiB)" % (ex, fmt(rss / 1024, 1) if rss else "-"),
                fmt(vs, 2), "1.00x"],
               ["count(*) on both tables", fmt(c, 2), ("%.1fx" % ratio(vs, c)) if ratio(vs, c) else "-"],
               ["SELECT * on both -> /dev/null", fmt(s, 2), ("%.1fx" % ratio(vs, s)) if ratio(vs, s) else "-"]]
        out.append("N = %s rows\n" % n + table(hdr, tab))


def harness_events(d):
    """Lines of the peer harness's logs about the candidate failing to start or to answer."""
    ev = []
    logs = [os.path.join(d, "peers-%s.log" % n) for n in ("pass", "mem", "mirror")]
    logs += sorted(glob.glob(os.path.join(d, "peers-getpass-*.log")) + glob.glob(os.path.join(d, "peers-read-*.log")))
    for q in logs:
        if not os.path.exists(q):
            continue
        name = os.path.basename(q)[len("peers-"):-len(".log")]
        for line in open(q, errors="replace"):
            if "candidate" in line and any(w in line for w in (
                    "failed to start", "did not listen", "sanity request returned", "wrk exited non-zero",
                    "no wrk result", "did not become ready")):
                ev.append("peers-%s: %s" % (name, line.strip()))
    return ev


def log_volume(d):
    vol = []
    for name in ("pass", "mem", "mirror"):
        q = os.path.join(d, "peers-%s" % name, "daemon", "log-volume.tsv")
        if os.path.exists(q):
            for line in open(q):
                f = line.rstrip("\n").split("\t")
                if len(f) == 3:
                    vol.append("%s %s: %s lines, %.1f MiB" % (name, f[0], f[1], int(f[2]) / 1048576))
    return vol


def problems(js):
    """What the lead must look at: candidate errors, non-2xx answers, lost mirrors, failed runs."""
    p = list(harness_events(js["dir"]))
    cands = [("pass-through", js.get("passthrough", {}).get("candidate-fast"))]
    cands += [("mirror-" + k, v.get("dualwrited")) for k, v in js.get("mirror", {}).items()]
    cands += [("read: " + n, js.get("read", {}).get(n))
              for n in ("dualwrited GET pass-through", "dualwrited GET read 50% new")]
    for name, x in cands:
        if not x:
            continue
        if x["reps"] == 0:
            p.append("%s: dualwrited produced no measurement (did not start or wrk failed)" % name)
        if x["errors"]:
            p.append("%s: %d wrk errors (connect/read/write/status/timeout) against dualwrited" % (name, x["errors"]))
        if x["sanity"] and any(not c.startswith("2") for c in x["sanity"].split(",")):
            p.append("%s: sanity request answered HTTP %s" % (name, x["sanity"]))
    r = js.get("read", {}).get("dualwrited GET read 50% new")
    if r and r.get("new_share") is not None and not 0.4 <= r["new_share"] <= 0.6:
        p.append("read: the new system answered %.3f of the GETs, not about half (route not matched?)"
                 % r["new_share"])
    f = js.get("mirror", {}).get("fast", {}).get("dualwrited")
    if f and f["mirror_ratio"] is not None and f["mirror_ratio"] < 0.99:
        p.append("mirror-fast: only %.3f of legacy writes reached the fast mirror during the run" % f["mirror_ratio"])
    v = js.get("verify")
    if v and v["exit"] != "0":
        p.append("verify of %d equal rows exited %s" % (v["rows"], v["exit"]))
    for b in js.get("backfill", []) + js.get("tbackfill", []):
        if b["backfill_rows_per_s"] is None:
            p.append("backfill of %d rows failed or copied a different count" % b["rows"])
    return p


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    d = sys.argv[1]
    kv = {}
    p = os.path.join(d, "data.tsv")
    if os.path.exists(p):
        with open(p) as f:
            for line in f:
                if "\t" in line:
                    k, v = line.rstrip("\n").split("\t", 1)
                    kv[k] = v
    js = {"dir": d}
    out = []
    hdr = ""
    for name in ("machine.txt", "notes.txt"):
        q = os.path.join(d, name)
        if os.path.exists(q) and os.path.getsize(q):
            hdr += open(q).read()
    if hdr:
        out.append(hdr.rstrip())
    section_pass(d, out, js)
    section_mem(d, out, js)
    section_mirror(d, out, js)
    section_read(d, out, js)
    section_spool(d, out, js)
    section_json(d, out, js)
    section_data(kv, out, js)
    section_data(kv, out, js, "t", "telemetry backfill (IoT: device_data -> telemetry, key (device_id, timestamp))")
    probs = problems(js)
    js["problems"] = probs
    if probs:
        out.append("PROBLEMS\n" + "\n".join("  " + p for p in probs))
    vol = log_volume(d)
    js["daemon_log_volume"] = vol
    if vol:
        out.append("dualwrited log volume (last repetition of each scenario):\n" +
                   "\n".join("  " + v for v in vol))
    js["kv"] = kv
    print("\n\n".join(out))
    print("\n(ratios are candidate / reference from the same run and repetition; median (min..max);"
          " '!' = a repetition measured while the machine was busy; CPU us/req from /proc)")
    with open(os.path.join(d, "summary.json"), "w") as f:
        json.dump(js, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
