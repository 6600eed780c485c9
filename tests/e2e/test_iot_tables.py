"""End-to-end: `dualwrite backfill` and `verify` of the IoT seed's three tables (users, devices,
telemetry) with the shipped conf/iot-v2.conf, against a throwaway PostgreSQL.

The databases are the demo services' own (iot_v1, iot_v2, schemas from `dw-demo-backend
--print-schema`), so the table maps are checked against the schemas the demo runs. Telemetry
is keyed by (device_id, timestamp): pagination on that composite key across batch boundaries,
a resume after SIGKILL, drill-down and repair by composite key, and verify restricted to one
tenant (target.where) are checked here.
"""

import json
import os
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
BACKEND = BUILD / "dw-demo-backend"
V1, V2 = "iot_v1", "iot_v2"

DEVICES = 7  # telemetry rows are spread over this many devices


@pytest.fixture(scope="module")
def pg():
    """A running cluster with iot_v1 and iot_v2; yields the PG* environment."""
    for b in (DW, BACKEND):
        if not b.exists():
            pytest.fail(f"{b} not built (set DW_BUILD to the build directory)")
    c = ml.PgCluster(databases=(V1, V2))
    c.env["PGDATABASE"] = V2
    try:
        yield c.env
    finally:
        c.stop()


def sql(env, db, text):
    return ml.psql(env, db, text, timeout=120)


def scalar(env, db, text):
    return sql(env, db, text)[0][0]


def dw(env, *args, timeout=120):
    return subprocess.run([str(DW), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout)


def fresh(env, tmp_path, telemetry=0, users=40, devices=30):
    """Recreate both schemas, fill V1's history, and write the shipped conf (queue moved)."""
    for db, svc in ((V1, "iot-v1"), (V2, "iot-v2")):
        sql(env, db, "DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        ddl = subprocess.run([str(BACKEND), "--print-schema", svc], capture_output=True,
                             text=True, check=True).stdout
        sql(env, db, ddl)
    sql(env, V1, f"""
INSERT INTO users (id, email, name, role, created_at, updated_at)
SELECT 'usr-' || g, 'user' || g || '@example.com', CASE WHEN g % 5 = 0 THEN NULL ELSE 'User ' || g END,
       CASE WHEN g % 10 = 0 THEN 'ADMIN' ELSE 'USER' END,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour',
       timestamptz '2024-02-01 00:00:00.123456+00' + g * interval '1 hour'
FROM generate_series(1, {users}) g;
INSERT INTO devices (id, name, type, config, status, created_at)
SELECT 'dev-' || g, 'Device ' || g, (ARRAY['thermostat','camera','gateway'])[g % 3 + 1],
       CASE WHEN g % 4 = 0 THEN NULL ELSE jsonb_build_object('interval', g) END, 'ACTIVE',
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 day'
FROM generate_series(1, {devices}) g;
-- Readings: {DEVICES} devices at the same instants (equal timestamps across devices), in
-- microseconds, so the composite key's order matters at every batch boundary.
INSERT INTO device_data (device_id, timestamp, data, protocol, source)
SELECT 'dev-' || (g % {DEVICES} + 1),
       timestamptz '2024-03-01 00:00:00+00' + (g / {DEVICES}) * interval '1.000001 second',
       jsonb_build_object('t', round((g % 400) / 10.0, 1), 'seq', g),
       (ARRAY['mqtt','http'])[g % 2 + 1], CASE WHEN g % 3 = 0 THEN NULL ELSE 'gw-' || g % 5 END
FROM generate_series(0, {telemetry} - 1) g;
ANALYZE;""")
    # Phase 1 prep (the guide's getOrCreateDefaultTemplate): one template per V1 type.
    sql(env, V2, """INSERT INTO device_templates (id, tenant_id, name) VALUES
        ('thermostat', 'default_tenant_id', 'thermostat'), ('camera', 'default_tenant_id', 'camera'),
        ('gateway', 'default_tenant_id', 'gateway');""")
    text = (ROOT / "conf/iot-v2.conf").read_text()
    text = text.replace('"/var/lib/dualwrite/iot-v2"', f'"{tmp_path}/queue"')
    p = tmp_path / "iot-v2.conf"
    p.write_text(text)
    return p


def verify(env, conf, table, *extra):
    r = dw(env, "verify", "-c", conf, "--table", table, "--json", *extra)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout.strip().splitlines()[-1])


def backfill(env, conf, table, *extra):
    r = dw(env, "backfill", "-c", conf, "--table", table, *extra)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_three_tables_backfill_then_verify_equal_per_tenant(pg, tmp_path):
    conf = fresh(pg, tmp_path, telemetry=5000)
    # 333 does not divide 5000 nor the 7 readings of an instant: boundaries fall mid-instant.
    assert "backfill users: 40 rows" in backfill(pg, conf, "users", "--batch", "7")
    assert "backfill devices: 30 rows" in backfill(pg, conf, "devices", "--batch", "7")
    assert "backfill telemetry: 5000 rows" in backfill(pg, conf, "telemetry", "--batch", "333")
    assert scalar(pg, V2, "SELECT count(*) FROM telemetry") == "5000"
    # the guide's row mapping: data -> metrics, source || 'migrated', quality GOOD, the tenant
    assert sql(pg, V2, """SELECT count(*) FILTER (WHERE source = 'migrated'),
        count(*) FILTER (WHERE quality = 'GOOD'), count(DISTINCT tenant_id), min(tenant_id)
        FROM telemetry""") == [["1667", "5000", "1", "default_tenant_id"]]
    src = sql(pg, V1, """SELECT device_id, timestamp::text, data::text FROM device_data
        ORDER BY device_id, timestamp""")
    tgt = sql(pg, V2, """SELECT device_id, timestamp::text, metrics::text FROM telemetry
        ORDER BY device_id, timestamp""")
    assert [r[:2] + [json.loads(r[2])] for r in src] == [r[:2] + [json.loads(r[2])] for r in tgt]
    ck = sql(pg, V2, """SELECT last_key, rows_copied, finished_at IS NOT NULL
        FROM dualwrite_backfill_checkpoint WHERE table_name = 'telemetry'""")
    last = sql(pg, V1, """SELECT device_id, timestamp FROM device_data
        ORDER BY device_id DESC, timestamp DESC LIMIT 1""")[0]
    assert json.loads(ck[0][0]) == last and ck[0][1:] == ["5000", "t"]

    # Another tenant's rows in V2 are not V1's: verify reads the default tenant only, and
    # reports every tenant's count.
    sql(pg, V2, """INSERT INTO tenants (id, name, slug, plan, status) VALUES
            ('acme', 'Acme', 'acme', 'PRO', 'ACTIVE');
        INSERT INTO users (id, tenant_id, email) VALUES ('acme-1', 'acme', 'a@acme.test');
        INSERT INTO telemetry (tenant_id, device_id, timestamp) VALUES
            ('acme', 'acme-dev', '2024-01-01Z'), ('acme', 'acme-dev', '2024-01-02Z');""")
    for table, n in (("users", 40), ("devices", 30), ("telemetry", 5000)):
        code, rep = verify(pg, conf, table)
        assert code == 0 and rep["equal"] is True, rep
        assert rep["source_rows"] == n and rep["target_rows"] == n, rep
        assert rep["sample"]["differ"] == 0
    assert rep["target_rows_by"] == {"acme": 2, "default_tenant_id": 5000}
    assert "tenant_id" in rep["target_where"]
    r = dw(pg, "verify", "-c", conf, "--table", "telemetry")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "target rows by tenant_id: acme 2, default_tenant_id 5000" in r.stdout
    assert "result: equal" in r.stdout

    # As another tenant, the whole of V1 is missing there, and acme's own rows are extra.
    code, rep = verify(pg, conf, "users", "--tenant", "acme", "--sample", "0")
    assert code == 1 and rep["target_rows"] == 1
    kinds = {d["kind"] for d in rep["differences"]}
    assert kinds == {"missing", "extra"} and len(rep["differences"]) == 41


def test_telemetry_drill_down_and_repair_by_composite_key(pg, tmp_path):
    conf = fresh(pg, tmp_path, telemetry=3000)
    backfill(pg, conf, "telemetry", "--batch", "500")
    sql(pg, V2, """
UPDATE telemetry SET metrics = '{"t": -1}' WHERE device_id = 'dev-3' AND timestamp = '2024-03-01 00:00:10.00001+00';
DELETE FROM telemetry WHERE device_id = 'dev-5' AND timestamp = '2024-03-01 00:01:00.00006+00';
INSERT INTO telemetry (tenant_id, device_id, timestamp, quality) VALUES
  ('default_tenant_id', 'dev-9', '2024-03-01 00:00:00+00', 'GOOD');""")
    code, rep = verify(pg, conf, "telemetry", "--chunk", "100")
    assert code == 1
    got = {(tuple(json.loads(d["key"])), d["kind"], tuple(d["fields"])) for d in rep["differences"]}
    assert got == {
        (("dev-3", "2024-03-01 00:00:10.00001+00"), "changed", ("metrics",)),
        (("dev-5", "2024-03-01 00:01:00.00006+00"), "missing", ()),
        (("dev-9", "2024-03-01 00:00:00+00"), "extra", ()),
    }, rep["differences"]
    r = dw(pg, "verify", "-c", conf, "--table", "telemetry", "--repair", "--delete-extra")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "copied 2 rows, deleted 1 rows; re-verified: 0 differ" in r.stdout
    code, rep = verify(pg, conf, "telemetry")
    assert code == 0 and rep["equal"], rep


def test_telemetry_backfill_killed_midway_resumes_on_the_composite_key(pg, tmp_path):
    total = 40_000
    conf = fresh(pg, tmp_path, telemetry=total)
    p = subprocess.Popen([str(DW), "backfill", "-c", str(conf), "--table", "telemetry",
                          "--rate", "8000", "--batch", "250"], env=pg,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Wait for committed batches (the checkpoint moves), then kill without warning.
        deadline = time.monotonic() + 30
        copied = 0
        while time.monotonic() < deadline and copied < 2000:
            if scalar(pg, V2, "SELECT to_regclass('dualwrite_backfill_checkpoint') IS NOT NULL") == "t":
                copied = int(scalar(pg, V2, "SELECT coalesce(max(rows_copied), 0) FROM dualwrite_backfill_checkpoint"))
            assert p.poll() is None, "backfill ended before it could be killed"
            time.sleep(0.05)
        assert copied >= 2000, "the checkpoint never moved"
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    done = int(scalar(pg, V2, "SELECT count(*) FROM telemetry"))
    assert 0 < done < total
    last, copied = sql(pg, V2, "SELECT last_key, rows_copied FROM dualwrite_backfill_checkpoint")[0]
    assert int(copied) == done
    # What was committed is exactly the first `done` readings in key order, and the checkpoint
    # is the last of them.
    first = sql(pg, V1, f"""SELECT device_id, timestamp::text FROM device_data
        ORDER BY device_id, timestamp LIMIT {done}""")
    have = sql(pg, V2, "SELECT device_id, timestamp::text FROM telemetry ORDER BY device_id, timestamp")
    assert have == first
    assert json.loads(last)[0] == first[-1][0]
    assert scalar(pg, V2, f"SELECT '{json.loads(last)[1]}'::timestamptz = '{first[-1][1]}'::timestamptz") == "t"
    out = backfill(pg, conf, "telemetry", "--batch", "1000")
    assert f"{total - done} rows" in out and "0 skipped" in out, out
    assert scalar(pg, V2, "SELECT count(*) FROM telemetry") == str(total)
    code, rep = verify(pg, conf, "telemetry")
    assert code == 0 and rep["equal"] and rep["source_rows"] == total, rep


def test_a_checkpoint_of_another_key_shape_is_a_clear_error(pg, tmp_path):
    conf = fresh(pg, tmp_path, telemetry=100)
    sql(pg, V2, """CREATE TABLE dualwrite_backfill_checkpoint (table_name text PRIMARY KEY,
        last_key text, rows_copied bigint NOT NULL DEFAULT 0,
        started_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz);
        INSERT INTO dualwrite_backfill_checkpoint (table_name, last_key, rows_copied)
        VALUES ('telemetry', 'dev-3', 10);""")
    r = dw(pg, "backfill", "-c", conf, "--table", "telemetry")
    assert r.returncode == 1
    assert "key dev-3 is not a key of 2 columns" in r.stderr and "--restart" in r.stderr
    assert scalar(pg, V2, "SELECT count(*) FROM telemetry") == "0"
    out = backfill(pg, conf, "telemetry", "--restart")
    assert "backfill telemetry: 100 rows" in out


def test_readings_deleted_on_the_source_mid_batch_are_removed_by_the_recheck(pg, tmp_path):
    """The Phase 1/2 race on the composite key (device_id, timestamp): a run killed after
    committing a batch but before re-checking it (simulated through the checkpoint) re-checks
    that batch's key range first, on both key columns, whether it resumes or is complete:
    readings the source lost meanwhile go (a device that still has other readings must not
    keep them alive); readings outside the range are not scanned."""
    conf = fresh(pg, tmp_path, telemetry=700)
    out = backfill(pg, conf, "telemetry", "--batch", "100")
    assert "deleted on the source" not in out
    keys = sql(pg, V1, "SELECT device_id, timestamp::text FROM device_data "
                       "ORDER BY device_id, timestamp")
    assert len(keys) == 700
    ck = sql(pg, V2, """SELECT last_key, recheck_pending FROM dualwrite_backfill_checkpoint
        WHERE table_name = 'telemetry'""")
    assert json.loads(ck[0][0]) == keys[-1] and ck[0][1] == "f", ck

    def delete_on_source(*idx):
        sql(pg, V1, "DELETE FROM device_data WHERE (device_id, timestamp) IN (%s)" % ", ".join(
            "('%s', '%s'::timestamptz)" % tuple(keys[i]) for i in idx))

    def target_has(i):
        return scalar(pg, V2, "SELECT count(*) FROM telemetry WHERE device_id = '%s' "
                              "AND timestamp = '%s'::timestamptz" % tuple(keys[i]))

    # Deleted on the legacy while the last batch (keys[599], keys[699]] was in flight; keys[5]
    # long before (its mirrored DELETE would have removed it: not the backfill's business).
    # keys[650] and keys[699] share their device with readings that stay.
    delete_on_source(5, 650, 699)
    sql(pg, V2, "UPDATE dualwrite_backfill_checkpoint SET recheck_pending = true, "
                "recheck_after = '%s'" % json.dumps(keys[599]))
    out = backfill(pg, conf, "telemetry")
    assert "already complete (700 rows)" in out, out
    assert "2 rows deleted on the source meanwhile (removed again)" in out, out
    assert (target_has(650), target_has(699), target_has(5)) == ("0", "0", "1")
    assert scalar(pg, V2, "SELECT recheck_pending FROM dualwrite_backfill_checkpoint") == "f"
    code, rep = verify(pg, conf, "telemetry")
    assert [(json.loads(d["key"]), d["kind"]) for d in rep["differences"]] == \
        [(keys[5], "extra")], rep

    # Killed mid-run: the batch (keys[299], keys[399]] committed, not re-checked; the run
    # resumes from keys[399].
    delete_on_source(350, 351)
    sql(pg, V2, """DELETE FROM telemetry WHERE (device_id, timestamp) > ('%s', '%s'::timestamptz);
        UPDATE dualwrite_backfill_checkpoint SET recheck_pending = true, recheck_after = '%s',
               last_key = '%s', rows_copied = 400, finished_at = NULL""" % (
        keys[399][0], keys[399][1], json.dumps(keys[299]), json.dumps(keys[399])))
    out = backfill(pg, conf, "telemetry", "--batch", "100")
    assert "298 rows in" in out and "2 deleted on the source meanwhile" in out, out
    assert (target_has(350), target_has(351)) == ("0", "0")
    code, rep = verify(pg, conf, "telemetry")
    assert [(json.loads(d["key"]), d["kind"]) for d in rep["differences"]] == \
        [(keys[5], "extra")], rep
    assert rep["source_rows"] == 695 and rep["target_rows"] == 696, rep


def test_dry_run_shows_readings_decimals_as_stored(pg, tmp_path):
    """The dry run's mapped rows write a reading's reals as the backfill copies them: 0.7,
    not 0.69999999999999996."""
    conf = fresh(pg, tmp_path, telemetry=20)
    r = dw(pg, "backfill", "-c", conf, "--table", "telemetry", "--dry-run")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("  {")]
    assert [row["metrics"]["t"] for row in rows] == [0.0, 0.7, 1.4, 0.1, 0.8], r.stdout
    assert '"t":0.7,' in r.stdout or '"t":0.7}' in r.stdout, r.stdout
    assert "0.69999999999999996" not in r.stdout
