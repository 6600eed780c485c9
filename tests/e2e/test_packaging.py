"""test_packaging — what an operator installs: `make install` lays out the
binaries, man pages, units, sysusers.d/tmpfiles.d files and examples; the man
pages are lint-clean; the units are sandboxed (systemd-analyze exposure <=
1.5) and reload through `dualwrited -t`; the Prometheus rules pass promtool
and fire at the plans' thresholds; the rules and the Grafana dashboard name
only metrics the daemon exports; `make deb` builds a package with the same
files that lintian passes without errors or warnings (about 30 s: the
binaries are built again with Debian's flags). Installing and purging that
package is opt-in (DW_TEST_DEB_INSTALL=1, as root): it changes the machine.

A tool that is missing (mandoc, promtool, systemd-analyze, dpkg-deb) skips
its test with the reason; `make deps` installs them.
"""

import json
import os
import re
import shutil
import subprocess

import pytest

import helpers
from helpers import parse_metrics, metric_sum, request, wait_for

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MANS = ["daemon/dualwrited.8", "tools/cli/dualwrite.1", "conf/dualwrite.conf.5"]
UNITS = ["systemd/dualwrited.service", "systemd/dualwrite-replay.service"]
MAX_EXPOSURE = 1.5

# What `make install PREFIX=/usr` must put where (relative to DESTDIR).
INSTALLED = [
    "usr/sbin/dualwrited",
    "usr/bin/dualwrite",
    "usr/share/man/man8/dualwrited.8",
    "usr/share/man/man1/dualwrite.1",
    "usr/share/man/man5/dualwrite.conf.5",
    "usr/lib/systemd/system/dualwrited.service",
    "usr/lib/systemd/system/dualwrite-replay.service",
    "usr/lib/systemd/system/dualwrite-replay.timer",
    "usr/lib/sysusers.d/dualwrite.conf",
    "usr/lib/tmpfiles.d/dualwrite.conf",
    "usr/share/doc/dualwrite/README",
    "usr/share/doc/dualwrite/MAPPING.md",
    "usr/share/doc/dualwrite/MIGRATION.md",
    "usr/share/doc/dualwrite/CUTOVER.md",
    "usr/share/doc/dualwrite/examples/gear-ops.conf",
    "usr/share/doc/dualwrite/examples/iot-v2.conf",
    "usr/share/doc/dualwrite/examples/dualwrited.conf",
    "usr/share/doc/dualwrite/examples/dualwrite-alerts.yml",
    "usr/share/doc/dualwrite/examples/dualwrite-dashboard.json",
    "etc/dualwrite/dualwrited.conf",
]

# Metric names a rule or panel may use before the daemon registers them
# (none today): anything a rule or a panel names must be registered in lib/
# or daemon/, so a typo fails.
NOT_YET_EXPORTED = set()

_REGISTER = re.compile(r'metrics_(?:counter|gauge_centi|gauge|histogram)\(\s*[^,()]+,\s*"(dualwrite_[a-z0-9_]+)"')


def run(cmd, **kw):
    kw.setdefault("cwd", ROOT)
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def need(tool):
    path = shutil.which(tool)
    if not path:
        pytest.skip("%s is not installed (make deps installs it)" % tool)
    return path


def registered_metrics():
    """Metric names registered in the daemon's and the library's source."""
    names, hist = set(), set()
    for d in ("lib", "daemon"):
        for fn in sorted(os.listdir(os.path.join(ROOT, d))):
            if fn.endswith(".c"):
                with open(os.path.join(ROOT, d, fn)) as f:
                    src = f.read()
                for m in _REGISTER.finditer(src):
                    names.add(m.group(1))
                    if m.group(0).startswith("metrics_histogram"):
                        hist.add(m.group(1))
    return names, hist


def family(name, hist):
    """dualwrite_x_bucket -> dualwrite_x when dualwrite_x is a histogram."""
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in hist:
            return name[: -len(suffix)]
    return name


def dashboard_exprs():
    with open(os.path.join(ROOT, "conf/dualwrite-dashboard.json")) as f:
        dash = json.load(f)
    exprs = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            exprs.append((p["title"], t["expr"]))
    for a in dash.get("annotations", {}).get("list", []):
        if a.get("expr"):
            exprs.append(("annotation " + a["name"], a["expr"]))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict) and q.get("query"):
            exprs.append(("variable " + v["name"], q["query"]))
    return dash, exprs


def rule_exprs():
    # The rules file is plain enough to read without a YAML library: every
    # expression is an `expr:` scalar or block.
    with open(os.path.join(ROOT, "conf/dualwrite-alerts.yml")) as f:
        text = f.read()
    out = []
    for m in re.finditer(r"- alert: (\S+)\n\s+expr: (\|\n((?:\s{10,}.*\n)+)|(.*)\n)", text):
        out.append((m.group(1), m.group(3) or m.group(4)))
    assert len(out) == text.count("- alert:"), "every alert has an expr this test reads"
    return out


# ---------------------------------------------------------------- install

@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("destdir"))
    r = run(["make", "--no-print-directory", "install", "PREFIX=/usr", "DESTDIR=" + dest,
             "B=" + helpers.build_dir()])
    assert r.returncode == 0, r.stdout
    return dest


def test_make_install_lays_out_every_file(installed):
    missing = [p for p in INSTALLED if not os.path.isfile(os.path.join(installed, p))]
    assert not missing, "not installed: %s" % missing
    for p in ("usr/sbin/dualwrited", "usr/bin/dualwrite"):
        assert os.access(os.path.join(installed, p), os.X_OK), p
    # The configuration may hold DSN passwords: not world-readable.
    assert os.stat(os.path.join(installed, "etc/dualwrite/dualwrited.conf")).st_mode & 0o007 == 0


def test_installed_units_point_at_installed_binaries(installed):
    unit_dir = os.path.join(installed, "usr/lib/systemd/system")
    with open(os.path.join(unit_dir, "dualwrited.service")) as f:
        unit = f.read()
    execs = re.findall(r"^Exec\w+=(\S+)", unit, re.M)
    assert execs and all(e in ("/usr/sbin/dualwrited", "/bin/kill") for e in execs), execs
    assert "/usr/local" not in unit
    # The reload checks the file first, then signals (HAProxy's unit does the same).
    reload = re.findall(r"^ExecReload=(.*)$", unit, re.M)
    assert reload == ["/usr/sbin/dualwrited -t -c /etc/dualwrite/dualwrited.conf",
                      "/bin/kill -HUP $MAINPID"], reload
    assert re.search(r"^Documentation=.*man:dualwrited\(8\)", unit, re.M)
    with open(os.path.join(unit_dir, "dualwrite-replay.service")) as f:
        assert "ExecStart=/usr/bin/dualwrite replay" in f.read()


def test_installed_configuration_is_valid(installed):
    # What the unit starts with as installed, and every example, pass -t.
    confs = [os.path.join(installed, "etc/dualwrite/dualwrited.conf")]
    ex = os.path.join(installed, "usr/share/doc/dualwrite/examples")
    confs += [os.path.join(ex, f) for f in sorted(os.listdir(ex)) if f.endswith(".conf")]
    for c in confs:
        r = run([os.path.join(installed, "usr/sbin/dualwrited"), "-t", "-c", c])
        assert r.returncode == 0 and "configuration ok" in r.stdout, (c, r.stdout)


def test_sysusers_and_tmpfiles(installed):
    with open(os.path.join(installed, "usr/lib/sysusers.d/dualwrite.conf")) as f:
        users = [ln.split() for ln in f if ln.strip() and not ln.startswith("#")]
    assert users and users[0][:2] == ["u", "dualwrite"], users
    with open(os.path.join(installed, "usr/lib/tmpfiles.d/dualwrite.conf")) as f:
        dirs = {ln.split()[1]: ln.split() for ln in f if ln.strip() and not ln.startswith("#")}
    assert dirs["/var/lib/dualwrite/queue"][:5] == ["d", "/var/lib/dualwrite/queue", "0750",
                                                    "dualwrite", "dualwrite"]
    assert "/var/lib/dualwrite" in dirs
    if shutil.which("systemd-sysusers"):
        # Parsed by systemd itself, against the DESTDIR, changing nothing.
        r = run(["systemd-sysusers", "--dry-run", "--root=" + installed,
                 os.path.join(installed, "usr/lib/sysusers.d/dualwrite.conf")])
        assert r.returncode == 0 and "dualwrite" in r.stdout, r.stdout


# ---------------------------------------------------------------- man pages

@pytest.mark.parametrize("page", MANS)
def test_man_page_lint_clean(page):
    need("mandoc")
    r = run(["mandoc", "-Tlint", page])
    # Cross references resolve only against installed pages (mandoc.db):
    # dualwrite(1) and friends are not installed where the test runs.
    findings = [ln for ln in r.stdout.splitlines()
                if "referenced manual not found" not in ln and "outdated mandoc.db" not in ln]
    assert not findings, "\n".join(findings)


CLI_COMMANDS = ["replay", "queue", "status", "reload", "guard", "backfill", "verify", "cutover"]


@pytest.mark.parametrize("command", CLI_COMMANDS)
def test_every_cli_option_is_in_the_man_page(command):
    """What `dualwrite COMMAND --help` offers, dualwrite(1) documents (the page uses
    -c for --config)."""
    need("mandoc")
    page = run(["mandoc", "-Tascii", os.path.join(ROOT, "tools/cli/dualwrite.1")]).stdout
    page = re.sub(r".\x08", "", page)  # overstrike (bold, underline) to plain text
    r = subprocess.run([os.path.join(helpers.build_dir(), "dualwrite"), command, "--help"],
                       capture_output=True, text=True, timeout=10)
    offered = set(re.findall(r"--[a-z][a-z-]*", r.stdout + r.stderr)) - {"--config"}
    assert offered, (command, r.returncode, r.stdout, r.stderr)
    missing = sorted(o for o in offered if o not in page)
    assert not missing, "dualwrite %s --help offers %s; dualwrite.1 does not say" % (
        command, missing)


# ---------------------------------------------------------------- systemd

@pytest.mark.parametrize("unit", UNITS)
def test_unit_exposure(unit):
    need("systemd-analyze")
    r = run(["systemd-analyze", "security", "--offline=true", "--no-pager", unit])
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout
    assert float(m.group(1)) <= MAX_EXPOSURE, r.stdout


# ---------------------------------------------------------------- Prometheus

def test_alert_rules_pass_promtool():
    need("promtool")
    r = run(["promtool", "check", "rules", "conf/dualwrite-alerts.yml"])
    assert r.returncode == 0, r.stdout
    # ... and fire at the plans' thresholds, not below them.
    r = run(["promtool", "test", "rules", "tests/promtool/dualwrite-alerts.test.yml"])
    assert r.returncode == 0, r.stdout


def test_dashboard_queries_parse(tmp_path):
    need("promtool")
    dash, exprs = dashboard_exprs()
    assert dash["uid"] and dash["panels"]
    # promtool checks PromQL only inside rule files: wrap each query in a
    # recording rule, with Grafana's variables given plain values.
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (title, e) in enumerate(exprs):
        if title.startswith("variable "):
            continue  # label_values() is Grafana's, not PromQL
        e = e.replace("$__rate_interval", "5m").replace("$instance", ".*")
        lines += ["      - record: panel_%d" % i, "        expr: %s" % json.dumps(e)]
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    r = run(["promtool", "check", "rules", str(rules)])
    assert r.returncode == 0, r.stdout


def test_rules_and_dashboard_name_only_exported_metrics():
    exported, hist = registered_metrics()
    # The registrations the daemon makes at start are found (guards the regex).
    for n in ("dualwrite_requests_total", "dualwrite_mirror_total", "dualwrite_queue_depth",
              "dualwrite_request_duration_seconds", "dualwrite_config_reloads_total"):
        assert n in exported, n
    _, dexprs = dashboard_exprs()
    unknown = []
    for where, e in rule_exprs() + dexprs:
        for name in re.findall(r"\bdualwrite_[a-z0-9_]+", e):
            if family(name, hist | NOT_YET_EXPORTED) not in exported | NOT_YET_EXPORTED:
                unknown.append("%s: %s" % (where, name))
    assert not unknown, "not exported by dualwrited: %s" % unknown


def test_registered_metrics_match_a_live_scrape(dw, make_backend):
    # The source scan above is the list the rules are checked against; a
    # scrape after traffic shows it misses nothing the daemon really exports.
    legacy = make_backend(name="legacy")
    new = make_backend(name="new")
    legacy.reply(201, b'{"id": 7}', [("Content-Type", "application/json")])
    new.reply(201, b"{}", [("Content-Type", "application/json")])
    d = dw({"legacy": legacy.url, "new": new.url}, extra={"routes": [{
        "name": "create", "match": "POST /things",
        "mirror": {"upstream": "new", "key": "$response.id", "body": {"id": "$response.id"}}}]})
    r = request(d.port, "POST", "/things", headers=[("Host", "x"), ("Content-Type", "application/json")],
                body=b'{"a": 1}')
    assert r.status == 201
    wait_for(lambda: metric_sum(d.metrics(), "dualwrite_mirror_total", result="delivered") >= 1,
             10, "the mirror delivered")
    exported, hist = registered_metrics()
    scraped = {family(n, hist) for n, _, _ in parse_metrics(d.metrics())}
    assert scraped - exported == set(), "exported but not found in the source scan"


# ---------------------------------------------------------------- .deb

@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    for tool in ("dpkg-deb", "dpkg-buildflags", "dpkg-shlibdeps"):
        need(tool)
    out = str(tmp_path_factory.mktemp("deb"))
    # Its own build directory (Debian's flags), so parallel runs do not meet.
    env = dict(os.environ, B=os.path.join(out, "build"))
    r = run(["make", "--no-print-directory", "deb", "DEB_OUT=" + out], env=env, timeout=900)
    assert r.returncode == 0, r.stdout
    debs = [f for f in os.listdir(out) if f.endswith(".deb")]
    assert len(debs) == 1, debs
    return os.path.join(out, debs[0]), r.stdout


def test_make_deb_lists_expected_files(deb):
    path, _ = deb
    listing = run(["dpkg-deb", "-c", path]).stdout
    files = {ln.split()[5].lstrip(".") for ln in listing.splitlines() if ln.strip()}
    want = set()
    for p in INSTALLED:
        p = "/" + p
        if "/man/man" in p:
            p += ".gz"  # Debian ships man pages compressed
        # bookworm keeps units in /lib (dpkg and the /usr merge)
        want.add(p.replace("/usr/lib/systemd/", "/lib/systemd/"))
    want |= {"/usr/share/doc/dualwrite/copyright", "/usr/share/doc/dualwrite/changelog.Debian.gz"}
    assert want - files == set(), listing
    info = run(["dpkg-deb", "-I", path]).stdout
    for f in ("postinst", "prerm", "postrm", "conffiles", "md5sums"):
        assert f in info, info
    assert re.search(r"^ Depends: .*libevent", info, re.M), info


def test_make_deb_is_lintian_clean(deb):
    need("lintian")
    _, out = deb
    # build.sh prints lintian's findings after "deb: lintian:"; errors and
    # warnings fail, pedantic and info tags are reported only.
    findings = out.split("deb: lintian:", 1)[-1]
    bad = [ln for ln in findings.splitlines() if re.match(r"[EW]: ", ln)]
    assert not bad, findings


@pytest.mark.skipif(os.environ.get("DW_TEST_DEB_INSTALL") != "1" or os.geteuid() != 0,
                    reason="installs and purges the package on this machine: "
                           "DW_TEST_DEB_INSTALL=1 as root")
def test_deb_installs_and_purges_cleanly(deb):
    path, _ = deb
    r = run(["dpkg", "-i", path])
    try:
        assert r.returncode == 0, r.stdout
        st = os.stat("/etc/dualwrite/dualwrited.conf")
        assert st.st_mode & 0o777 == 0o640, oct(st.st_mode)
        assert os.path.isdir("/var/lib/dualwrite/queue")
        r = run(["/usr/sbin/dualwrited", "-t", "-c", "/etc/dualwrite/dualwrited.conf"])
        assert "configuration ok" in r.stdout, r.stdout
    finally:
        r = run(["dpkg", "--purge", "dualwrite"])
    assert r.returncode == 0, r.stdout
    for p in ("/usr/sbin/dualwrited", "/etc/dualwrite", "/var/lib/dualwrite",
              "/lib/systemd/system/dualwrited.service",
              "/etc/systemd/system/multi-user.target.wants/dualwrited.service"):
        assert not os.path.lexists(p), p
