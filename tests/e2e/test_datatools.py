"""End-to-end tests of `dualwrite backfill` and `dualwrite verify` against a throwaway PostgreSQL.

A module-scoped fixture starts a cluster with tests/pg.sh (mirrorlib.PgCluster; two databases, the
legacy "dw_src" and the new "dw_tgt"), each test recreates the seed schemas it needs — Gear
Operations (old_equipment -> gear_items) and IoT V1 -> V2 (devices -> devices, with the tenant
injected) — writes a configuration file and runs the binary ($DW_BUILD/dualwrite, default
build/). The source DSN is explicit ("dbname=dw_src"); the target DSN is empty so libpq's PG*
environment is used, as an operator would. Runs in well under a minute on two cores.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import mirrorlib as ml

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("DW_BUILD", "build"))
if not BUILD.is_absolute():
    BUILD = ROOT / BUILD
DW = BUILD / "dualwrite"
SRC_DB, TGT_DB = "dw_src", "dw_tgt"

GEAR_SRC = """
DROP TABLE IF EXISTS old_equipment;
CREATE TABLE old_equipment (id bigserial PRIMARY KEY, user_id bigint, name text, type text,
                            brand text, created_at timestamptz);
"""
GEAR_TGT = """
DROP TABLE IF EXISTS gear_items, dualwrite_backfill_checkpoint;
CREATE TABLE gear_items (id bigint PRIMARY KEY, user_id bigint NOT NULL, name text NOT NULL,
                         category text, brand text, status text NOT NULL DEFAULT 'active',
                         role text NOT NULL DEFAULT 'personal', created_at timestamptz,
                         updated_at timestamptz);
"""
GEAR_COLUMNS = """id = "$row.id"; user_id = "$row.user_id"; name = "$row.name";
                category = "$row.type"; brand = "$row.brand"; status = "active"; role = "personal";
                created_at = "$row.created_at"; updated_at = "$row.created_at";"""

IOT_SRC = """
DROP TABLE IF EXISTS devices;
CREATE TABLE devices (id text PRIMARY KEY, name text, type text, config jsonb, status text,
                      created_at timestamptz);
"""
IOT_TGT = """
DROP TABLE IF EXISTS devices, dualwrite_backfill_checkpoint;
CREATE TABLE devices (id text PRIMARY KEY, tenant_id text, name text, template_id text,
                      attributes jsonb, metadata jsonb, status text, created_at timestamptz);
"""
IOT_COLUMNS = """id = "$row.id"; tenant_id = "$tenant"; name = "$row.name";
                template_id = "$row.type"; attributes = "$row.config";
                metadata = { migratedFrom = "v1"; originalType = "$row.type"; };
                status = "$row.status"; created_at = "$row.created_at";"""


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def pg():
    """A running cluster; yields the PG* environment (target database as PGDATABASE)."""
    if not DW.exists():
        pytest.fail(f"{DW} not built (set DW_BUILD to the build directory)")
    c = ml.PgCluster(databases=(SRC_DB, TGT_DB))
    c.env["PGDATABASE"] = TGT_DB
    try:
        yield c.env
    finally:
        c.stop()


def sql(env, db, text):
    """Run SQL with psql; returns the rows of the last statement as lists of strings."""
    return ml.psql(env, db, text, timeout=120)


def scalar(env, db, text):
    return sql(env, db, text)[0][0]


def write_conf(tmp_path, name, src_table, tgt_table, columns, key="id", src_dsn=None,
               tgt_dsn="", tenant="default_tenant_id", queue=None):
    src_dsn = f"dbname={SRC_DB}" if src_dsn is None else src_dsn
    queue = queue or str(tmp_path / "queue")
    p = tmp_path / f"{name}.conf"
    p.write_text(f"""
listen = "127.0.0.1:18080";
upstreams = {{ legacy = {{ url = "http://127.0.0.1:18000"; }};
              gear_ops = {{ url = "http://127.0.0.1:18002"; }}; }};
default_upstream = "legacy";
queue = {{ path = "{queue}"; }};
tenant = {{ header = "X-Tenant-ID"; default = "{tenant}"; }};
tables = (
  {{ name = "{name}";
    source = {{ dsn = "{src_dsn}"; table = "{src_table}"; key = "{key}"; }};
    target = {{ dsn = "{tgt_dsn}"; table = "{tgt_table}"; key = "{key}"; }};
    columns = {{ {columns} }};
  }}
);
""")
    return p


def dw(env, *args, timeout=120):
    return subprocess.run([str(DW), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout)


def gear(env, tmp_path, rows=0, columns=GEAR_COLUMNS, **kw):
    sql(env, SRC_DB, GEAR_SRC)
    sql(env, TGT_DB, GEAR_TGT)
    if rows:
        sql(env, SRC_DB, f"""
INSERT INTO old_equipment (user_id, name, type, brand, created_at)
SELECT g % 97, 'item ' || g, (ARRAY['tent','stove','rope'])[g % 3 + 1],
       CASE WHEN g % 7 = 0 THEN NULL ELSE 'brand' || g % 10 END,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute'
FROM generate_series(1, {rows}) g;
ANALYZE old_equipment;""")
    return write_conf(tmp_path, "equipment", "old_equipment", "gear_items", columns, **kw)


def verify_json(env, conf, table="equipment", *extra):
    r = dw(env, "verify", "-c", conf, "--table", table, "--json", *extra)
    assert r.returncode in (0, 1), r.stderr
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    assert len(lines) == 1, r.stdout
    return r.returncode, json.loads(lines[0])


def diff_set(report):
    return {(d["key"], d["kind"], tuple(sorted(d["fields"]))) for d in report["differences"]}


def target_count(env, table="gear_items"):
    return int(scalar(env, TGT_DB, f"SELECT count(*) FROM {table}"))


def checkpoint_rows(env):
    if scalar(env, TGT_DB, "SELECT to_regclass('dualwrite_backfill_checkpoint') IS NULL") == "t":
        return "0"
    return scalar(env, TGT_DB, "SELECT count(*) FROM dualwrite_backfill_checkpoint")

# ---------------------------------------------------------------- backfill: mapping


def test_gear_backfill_maps_every_field(pg, tmp_path):
    conf = gear(pg, tmp_path)
    sql(pg, SRC_DB, r"""
INSERT INTO old_equipment (id, user_id, name, type, brand, created_at) VALUES
 (1, 10, 'Tent 2p', 'tent', 'MSR', '2024-03-01 12:34:56.789+02'),
 (2, 11, E'tab\there, new\nline, back\\slash', 'stove', NULL, NULL),
 (3, 12, 'Zelt „Über“ ✓', 'rope', '', '1999-12-31 23:59:59+00'),
 (1000000000000, -1, 'big key', NULL, 'B', '2024-01-01 00:00:00+00');""")
    r = dw(pg, "backfill", "-c", conf, "--table", "equipment")
    assert r.returncode == 0, r.stderr
    assert re.search(r"backfill equipment: 4 rows in [\d.]+ s \(\d+ rows/s\), 0 skipped", r.stdout)
    # Newlines are made visible on both sides alike, so psql's line output stays one row per line.
    src = sql(pg, SRC_DB, """SELECT id, user_id, replace(name, E'\\n', '<NL>'), coalesce(type, '<null>'),
        coalesce(brand, '<null>'), coalesce(created_at::text, '<null>') FROM old_equipment ORDER BY id""")
    tgt = sql(pg, TGT_DB, """SELECT id, user_id, replace(name, E'\\n', '<NL>'), coalesce(category, '<null>'),
        coalesce(brand, '<null>'), status, role, coalesce(created_at::text, '<null>'),
        coalesce(updated_at::text, '<null>') FROM gear_items ORDER BY id""")
    assert len(tgt) == 4
    for s, t in zip(src, tgt):
        sid, uid, name, typ, brand, created = s
        assert t == [sid, uid, name, typ, brand, "active", "personal", created, created]


def test_iot_backfill_maps_every_field(pg, tmp_path):
    sql(pg, SRC_DB, IOT_SRC)
    sql(pg, TGT_DB, IOT_TGT)
    sql(pg, SRC_DB, """
INSERT INTO devices VALUES
 ('dev-1', 'Boiler', 'sensor', '{"interval": 30, "unit": "C", "tags": ["a", 1.5, null]}', 'online', '2024-02-01 10:00:00+00'),
 ('dev-2', 'Gate', 'gateway', NULL, 'offline', NULL),
 ('dev"3', 'Odd \\ key', 'sensor', '{}', NULL, '2024-02-02 00:00:00+00');""")
    conf = write_conf(tmp_path, "devices", "devices", "devices", IOT_COLUMNS, tenant="tenant-A")
    r = dw(pg, "backfill", "-c", conf, "--table", "devices")
    assert r.returncode == 0, r.stderr
    rows = sql(pg, TGT_DB, """SELECT id, tenant_id, name, template_id, coalesce(attributes::text, '<null>'),
        metadata::text, coalesce(status, '<null>'), coalesce(created_at::text, '<null>')
        FROM devices ORDER BY id""")
    src = {r[0]: r for r in sql(pg, SRC_DB, """SELECT id, name, type, coalesce(config::text, '<null>'),
        coalesce(status, '<null>'), coalesce(created_at::text, '<null>') FROM devices""")}
    assert len(rows) == 3
    for t in rows:
        s = src[t[0]]
        assert t[1] == "tenant-A"
        assert t[2] == s[1] and t[3] == s[2] and t[4] == s[3] and t[6] == s[4] and t[7] == s[5]
        assert json.loads(t[5]) == {"migratedFrom": "v1", "originalType": s[2]}
    code, rep = verify_json(pg, conf, "devices")
    assert code == 0 and rep["equal"] is True, rep


# ---------------------------------------------------------------- backfill: volume, resume, safety


def test_backfill_100k_rows_then_verify_equal(pg, tmp_path):
    conf = gear(pg, tmp_path, rows=100_000)
    r = dw(pg, "backfill", "-c", conf, "--table", "equipment", "--batch", "2000")
    assert r.returncode == 0, r.stderr
    assert "backfill equipment: 100000 rows" in r.stdout
    assert target_count(pg) == 100_000
    ck = sql(pg, TGT_DB, "SELECT last_key, rows_copied, finished_at IS NOT NULL FROM dualwrite_backfill_checkpoint WHERE table_name = 'equipment'")
    assert ck == [["100000", "100000", "t"]]
    code, rep = verify_json(pg, conf)
    assert code == 0, rep
    assert rep["equal"] is True and rep["source_rows"] == 100_000 and rep["target_rows"] == 100_000
    assert rep["differences"] == [] and rep["sample"] == {"rows": 100, "differ": 0}
    # A finished backfill is not run again unless asked.
    r = dw(pg, "backfill", "-c", conf, "--table", "equipment")
    assert r.returncode == 0
    assert "already complete (100000 rows); --restart to run again" in r.stdout
    r = dw(pg, "backfill", "-c", conf, "--table", "equipment", "--restart", "--batch", "5000")
    assert r.returncode == 0, r.stderr
    assert "100000 rows" in r.stdout and "100000 skipped (already present)" in r.stdout
    assert target_count(pg) == 100_000


def test_backfill_killed_midway_resumes_without_gaps_or_duplicates(pg, tmp_path):
    conf = gear(pg, tmp_path, rows=30_000)
    p = subprocess.Popen([str(DW), "backfill", "-c", str(conf), "--table", "equipment",
                          "--rate", "10000", "--batch", "500"], env=pg,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.2)
    assert p.poll() is None, "backfill finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    done = target_count(pg)
    assert 0 < done < 30_000
    last, copied = sql(pg, TGT_DB, "SELECT last_key, rows_copied FROM dualwrite_backfill_checkpoint")[0]
    # The checkpoint is exactly what was committed: rows 1..last, nothing else.
    assert int(copied) == done
    assert scalar(pg, TGT_DB, "SELECT count(*) = max(id) AND min(id) = 1 FROM gear_items") == "t"
    assert int(last) == done
    r = dw(pg, "backfill", "-c", conf, "--table", "equipment")
    assert r.returncode == 0, r.stderr
    assert f"{30_000 - done} rows" in r.stdout and "0 skipped" in r.stdout
    assert target_count(pg) == 30_000
    assert scalar(pg, TGT_DB, "SELECT count(DISTINCT id) FROM gear_items") == "30000"
    code, rep = verify_json(pg, conf)
    assert code == 0 and rep["equal"], rep


def test_dual_written_rows_are_not_overwritten(pg, tmp_path):
    conf = gear(pg, tmp_path, rows=20_000)
    # Delivered by the dual-write before the backfill started (newer than the history).
    sql(pg, TGT_DB, """INSERT INTO gear_items (id, user_id, name, category, status, role)
                       VALUES (5, 555, 'dual-written', 'new-cat', 'retired', 'team'),
                              (15000, 1, 'also new', NULL, 'active', 'personal')""")
    p = subprocess.Popen([str(DW), "backfill", "-c", str(conf), "--table", "equipment",
                          "--rate", "20000", "--batch", "500"], env=pg,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    # ... and one delivered while it runs, ahead of the backfill's position.
    sql(pg, TGT_DB, """INSERT INTO gear_items (id, user_id, name, status, role)
                       VALUES (19999, 7, 'during', 'active', 'team')""")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "20000 rows" in out and "3 skipped (already present)" in out
    rows = sql(pg, TGT_DB, "SELECT id, user_id, name, coalesce(category, '-'), status, role FROM gear_items WHERE id IN (5, 15000, 19999) ORDER BY id")
    assert rows == [["5", "555", "dual-written", "new-cat", "retired", "team"],
                    ["15000", "1", "also new", "-", "active", "personal"],
                    ["19999", "7", "during", "-", "active", "team"]]
    assert target_count(pg) == 20_000


# ---------------------------------------------------------------- errors: nothing written


@pytest.mark.parametrize("case", ["bad_dsn", "missing_table", "missing_source_column",
                                  "missing_target_column", "type_mismatch"])
def test_bad_mapping_is_a_clear_error_and_writes_nothing(pg, tmp_path, case):
    cols, kw, want = GEAR_COLUMNS, {}, None
    if case == "bad_dsn":
        kw["src_dsn"], want = "dbname=no_such_db", "no_such_db"
    elif case == "missing_table":
        conf = gear(pg, tmp_path, rows=10)
        conf = write_conf(tmp_path, "equipment", "old_equipmnt", "gear_items", cols)
        want = "old_equipmnt"
    elif case == "missing_source_column":
        cols, want = cols.replace('"$row.type"', '"$row.kind"'), "kind"
    elif case == "missing_target_column":
        cols, want = cols.replace('role = "personal"', 'rolle = "personal"'), "rolle"
    elif case == "type_mismatch":
        cols, want = cols.replace('user_id = "$row.user_id"', 'user_id = "$row.name"'), \
            "gear_items.user_id (bigint)"
    if case != "missing_table":
        conf = gear(pg, tmp_path, rows=10, columns=cols, **kw)
    for cmd in (["backfill"], ["verify"]):
        r = dw(pg, *cmd, "-c", conf, "--table", "equipment")
        if case == "type_mismatch" and cmd == ["verify"]:
            continue  # verify reads only; the cast error surfaces there as a query error
        assert r.returncode in (1, 2), (cmd, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and want in lines[0] and "equipment" in lines[0], r.stderr
    assert target_count(pg) == 0
    assert checkpoint_rows(pg) == "0"


def test_unknown_table_name_and_usage_errors_exit_2(pg, tmp_path):
    conf = gear(pg, tmp_path, rows=3)
    r = dw(pg, "backfill", "-c", conf, "--table", "nope")
    assert r.returncode == 2 and "nope" in r.stderr
    assert dw(pg, "backfill", "-c", conf).returncode == 2
    assert dw(pg, "verify", "-c", conf, "--table", "equipment", "--chunk", "0").returncode == 2
    assert dw(pg, "backfill", "-c", conf, "--table", "equipment", "--on-conflict", "x").returncode == 2


def test_dry_run_prints_plan_and_rows_and_writes_nothing(pg, tmp_path):
    conf = gear(pg, tmp_path, rows=50)
    r = dw(pg, "backfill", "-c", conf, "--table", "equipment", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "old_equipment" in r.stdout and "gear_items" in r.stdout and "ON CONFLICT" in r.stdout
    rows = [json.loads(l) for l in r.stdout.splitlines() if l.strip().startswith("{")]
    assert len(rows) == 5
    assert rows[0]["id"] == 1 and rows[0]["category"] == "stove" and rows[0]["status"] == "active"
    assert target_count(pg) == 0
    assert checkpoint_rows(pg) == "0"


def test_on_conflict_update_overwrites(pg, tmp_path):
    conf = gear(pg, tmp_path, rows=10)
    sql(pg, TGT_DB, "INSERT INTO gear_items (id, user_id, name) VALUES (3, 0, 'stale')")
    r = dw(pg, "backfill", "-c", conf, "--table", "equipment", "--on-conflict", "update")
    assert r.returncode == 0, r.stderr
    assert scalar(pg, TGT_DB, "SELECT name FROM gear_items WHERE id = 3") == "item 3"


# ---------------------------------------------------------------- verify


def inject(env):
    """Missing 17 and 5000, extra 10001 and 20002, changed 42 (category), 99 (name, brand),
    777 (created_at), 1234 (brand set to NULL)."""
    sql(env, TGT_DB, """
DELETE FROM gear_items WHERE id IN (17, 5000);
INSERT INTO gear_items (id, user_id, name) VALUES (10001, 1, 'x'), (20002, 2, 'y');
UPDATE gear_items SET category = 'changed' WHERE id = 42;
UPDATE gear_items SET name = 'renamed', brand = 'other' WHERE id = 99;
UPDATE gear_items SET created_at = created_at + interval '1 microsecond' WHERE id = 777;
UPDATE gear_items SET brand = NULL WHERE id = 1234;""")


INJECTED = {("17", "missing", ()), ("5000", "missing", ()), ("10001", "extra", ()),
            ("20002", "extra", ()), ("42", "changed", ("category",)),
            ("99", "changed", ("brand", "name")), ("777", "changed", ("created_at",)),
            ("1234", "changed", ("brand",))}


def test_verify_reports_exactly_the_injected_differences(pg, tmp_path):
    conf = gear(pg, tmp_path, rows=10_000)
    assert dw(pg, "backfill", "-c", conf, "--table", "equipment").returncode == 0
    inject(pg)
    code, rep = verify_json(pg, conf, "equipment", "--chunk", "1000")
    assert code == 1
    assert rep["equal"] is False
    assert rep["source_rows"] == 10_000 and rep["target_rows"] == 10_000
    assert diff_set(rep) == INJECTED
    assert rep["pending"] == []
    # The readable report lists the same keys.
    r = dw(pg, "verify", "-c", conf, "--table", "equipment")
    assert r.returncode == 1
    for key, kind, fields in INJECTED:
        assert re.search(rf"^\s+{kind}\s+{key}\b", r.stdout, re.M), r.stdout
    assert "(name, brand)" in r.stdout or "(brand, name)" in r.stdout


def test_verify_json_has_exactly_the_documented_shape(pg, tmp_path):
    conf = gear(pg, tmp_path, rows=300)
    assert dw(pg, "backfill", "-c", conf, "--table", "equipment").returncode == 0
    sql(pg, TGT_DB, "UPDATE gear_items SET category = 'x' WHERE id = 7")
    code, rep = verify_json(pg, conf, "equipment", "--sample", "300")
    assert code == 1
    assert list(rep) == ["table", "equal", "source_rows", "target_rows", "differences",
                         "pending", "sample"]
    assert rep["table"] == "equipment" and rep["equal"] is False
    assert rep["differences"] == [{"key": "7", "kind": "changed", "fields": ["category"]}]
    assert rep["sample"] == {"rows": 300, "differ": 1}


def test_repair_fixes_differences_then_verify_is_equal(pg, tmp_path):
    conf = gear(pg, tmp_path, rows=10_000)
    assert dw(pg, "backfill", "-c", conf, "--table", "equipment").returncode == 0
    inject(pg)
    # Without --delete-extra the extra rows stay and are still reported.
    r = dw(pg, "verify", "-c", conf, "--table", "equipment", "--repair")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "6 rows again from the source (2 missing, 4 changed)" in r.stdout
    assert target_count(pg) == 10_002
    code, rep = verify_json(pg, conf)
    assert diff_set(rep) == {("10001", "extra", ()), ("20002", "extra", ())}
    r = dw(pg, "verify", "-c", conf, "--table", "equipment", "--repair", "--delete-extra")
    assert r.returncode == 0, r.stdout + r.stderr
    code, rep = verify_json(pg, conf)
    assert code == 0 and rep["equal"] is True and rep["differences"] == []
    assert target_count(pg) == 10_000
    assert scalar(pg, TGT_DB, "SELECT category FROM gear_items WHERE id = 42") == "tent"


def make_spool_helper(tmp_path):
    """A tiny program journaling QUEUED records with given keys (lib/spool.h)."""
    lib = BUILD / "libdw.a"
    if not lib.exists() or shutil.which("cc") is None:
        return None
    src = tmp_path / "mkspool.c"
    src.write_text(r"""
#include <stdio.h>
#include "spool.h"
int main(int argc, char **argv)
{
	struct dw_err err = {{0}};
	struct spool_opts o = {0};
	struct spool *sp = spool_open(argv[1], &o, &err);
	if (!sp) { fprintf(stderr, "%s\n", err.msg); return 1; }
	for (int i = 2; i < argc; i++) {
		struct spool_record r = {0};
		r.state = SPOOL_QUEUED; r.route = "equipment-create"; r.upstream = "gear_ops";
		r.key = argv[i]; r.idem_key = argv[i]; r.method = "POST"; r.path = "/gear-items";
		if (spool_append(sp, &r, &err) != 0) { fprintf(stderr, "%s\n", err.msg); return 1; }
	}
	spool_close(sp);
	return 0;
}
""")
    exe = tmp_path / "mkspool"
    libs = subprocess.run(["pkg-config", "--libs", "jansson", "libconfig", "libpq", "libevent",
                           "openssl"], capture_output=True, text=True).stdout.split()
    r = subprocess.run(["cc", "-std=gnu11", "-D_GNU_SOURCE", f"-I{ROOT / 'lib'}", "-o", str(exe),
                        str(src), str(lib), *libs, "-lpthread", "-lm"], capture_output=True, text=True)
    return exe if r.returncode == 0 else None


def test_keys_waiting_in_the_replay_queue_are_pending_not_differences(pg, tmp_path):
    helper = make_spool_helper(tmp_path)
    if helper is None:
        pytest.skip("cannot build the spool helper against libdw.a")
    queue = tmp_path / "queue"
    conf = gear(pg, tmp_path, rows=1000, queue=str(queue))
    assert dw(pg, "backfill", "-c", conf, "--table", "equipment").returncode == 0
    sql(pg, TGT_DB, "DELETE FROM gear_items WHERE id IN (10, 11); UPDATE gear_items SET name = 'q' WHERE id = 12")
    r = subprocess.run([str(helper), str(queue), "10", "12"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    code, rep = verify_json(pg, conf)
    assert code == 1
    assert sorted(rep["pending"]) == ["10", "12"]
    assert diff_set(rep) == {("11", "missing", ())}


# ---------------------------------------------------------------- issue 15, issue 10 #7


def test_verify_and_backfill_read_an_include_from_any_cwd(pg, tmp_path):
    # The table mapping lives in an @include'd file next to the main one;
    # verify read the configuration a second time relative to the cwd and
    # broke when run from another folder.
    conf = gear(pg, tmp_path, rows=50)
    text = conf.read_text()
    start = text.index("tables = (")
    (tmp_path / "tables.inc").write_text(text[start:])
    conf.write_text(text[:start] + '@include "tables.inc"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*args):
        return subprocess.run([str(DW), *map(str, args)], env=pg, capture_output=True,
                              text=True, timeout=120, cwd=str(elsewhere))

    r = run("backfill", "-c", conf, "--table", "equipment")
    assert r.returncode == 0, r.stderr
    r = run("verify", "-c", conf, "--table", "equipment")
    assert r.returncode == 0, (r.stdout, r.stderr)
    sql(pg, TGT_DB, "UPDATE gear_items SET brand = 'other' WHERE id = 3")
    r = run("verify", "-c", conf, "--table", "equipment")
    assert r.returncode == 1 and re.search(r"^\s+changed\s+3\b", r.stdout, re.M), (r.stdout,
                                                                                  r.stderr)


@pytest.mark.parametrize("form", ["keyword", "uri"])
def test_connection_errors_never_show_the_password(tmp_path, form):
    # No cluster needed: a port nothing listens on. The whole DSN used to be
    # printed, password and all (SPEC 6: no command prints a password).
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    secret = "Sup3rSecretPw"
    try:
        if form == "keyword":
            dsn = (f"host=127.0.0.1 port={port} user=app password={secret} dbname=gear "
                   f"connect_timeout=3")
        else:
            dsn = f"postgresql://app:{secret}@127.0.0.1:{port}/gear?connect_timeout=3"
        conf = write_conf(tmp_path, "equipment", "old_equipment", "gear_items", GEAR_COLUMNS,
                          src_dsn=dsn)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        for cmd in (["verify"], ["backfill"], ["backfill", "--dry-run"]):
            r = dw(env, cmd[0], "-c", conf, "--table", "equipment", *cmd[1:])
            assert r.returncode == 1, (cmd, r.returncode, r.stdout, r.stderr)
            assert "cannot connect" in r.stderr, r.stderr
            assert secret not in r.stdout + r.stderr, (cmd, r.stdout, r.stderr)
            assert "password=***" in r.stderr and "user=app" in r.stderr, r.stderr
            assert f"port={port}" in r.stderr, r.stderr
    finally:
        s.close()


# ---------------------------------------------------------------- the Phase 1/2 race: deletes


def test_rows_deleted_on_the_source_mid_batch_are_removed_by_the_recheck(pg, tmp_path):
    """A run killed after committing a batch but before re-checking it (simulated through
    the checkpoint) re-checks that batch's key range first, whether it resumes or is
    complete: rows the source lost meanwhile go; rows outside the range are not scanned."""
    conf = gear(pg, tmp_path, rows=1000)
    r = dw(pg, "backfill", "-c", conf, "--table", "equipment", "--batch", "100")
    assert r.returncode == 0, r.stderr
    assert "deleted on the source" not in r.stdout
    assert scalar(pg, TGT_DB, "SELECT recheck_pending FROM dualwrite_backfill_checkpoint") == "f"
    # Deleted on the legacy while the last batch (900, 1000] was in flight; 10 long before
    # (its mirrored DELETE would have removed it: not the backfill's business).
    sql(pg, SRC_DB, "DELETE FROM old_equipment WHERE id IN (10, 950, 999)")
    sql(pg, TGT_DB, "UPDATE dualwrite_backfill_checkpoint SET recheck_pending = true, "
                    "recheck_after = '900'")
    r = dw(pg, "backfill", "-c", conf, "--table", "equipment")
    assert r.returncode == 0, r.stderr
    assert "already complete (1000 rows)" in r.stdout
    assert "2 rows deleted on the source meanwhile (removed again)" in r.stdout
    assert scalar(pg, TGT_DB, "SELECT count(*) FROM gear_items WHERE id IN (950, 999)") == "0"
    assert scalar(pg, TGT_DB, "SELECT recheck_pending FROM dualwrite_backfill_checkpoint") == "f"
    code, rep = verify_json(pg, conf)
    assert diff_set(rep) == {("10", "extra", ())}
    # Killed mid-run: the batch (400, 500] committed, not re-checked, and the run resumes.
    sql(pg, SRC_DB, "DELETE FROM old_equipment WHERE id IN (450, 451)")
    sql(pg, TGT_DB, """DELETE FROM gear_items WHERE id > 500;
        UPDATE dualwrite_backfill_checkpoint SET recheck_pending = true, recheck_after = '400',
               last_key = '500', rows_copied = 500, finished_at = NULL""")
    r = dw(pg, "backfill", "-c", conf, "--table", "equipment", "--batch", "100")
    assert r.returncode == 0, r.stderr
    assert "498 rows in" in r.stdout and "2 deleted on the source meanwhile" in r.stdout
    code, rep = verify_json(pg, conf)
    assert diff_set(rep) == {("10", "extra", ())}
    assert rep["source_rows"] == 995 and rep["target_rows"] == 996
