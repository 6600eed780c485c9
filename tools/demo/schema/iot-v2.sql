-- iot-v2: the multi-tenant IoT platform (database iot_v2).
-- Applied by `dw-demo-backend --service iot-v2 --init-schema` (embedded in tools/demo/schema.c).
CREATE TABLE IF NOT EXISTS tenants (
	id         text PRIMARY KEY,
	name       text NOT NULL,
	slug       text NOT NULL UNIQUE,
	plan       text NOT NULL,
	status     text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz NOT NULL DEFAULT now()
);
-- The tenant the V1 data belongs to (migration guide, Phase 1.4).
INSERT INTO tenants (id, name, slug, plan, status, created_at, updated_at)
VALUES ('default_tenant_id', 'Default Tenant', 'default', 'ENTERPRISE', 'ACTIVE', now(), now())
ON CONFLICT (id) DO NOTHING;
-- One template per V1 device type (id = the type name), created on demand.
CREATE TABLE IF NOT EXISTS device_templates (
	id         text PRIMARY KEY,
	tenant_id  text REFERENCES tenants (id),
	name       text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS devices (
	id          text PRIMARY KEY,
	tenant_id   text NOT NULL REFERENCES tenants (id),
	name        text NOT NULL,
	template_id text REFERENCES device_templates (id),
	attributes  jsonb,
	metadata    jsonb,
	status      text,
	created_at  timestamptz,
	updated_at  timestamptz
);
CREATE INDEX IF NOT EXISTS devices_tenant_id_idx ON devices (tenant_id);
CREATE TABLE IF NOT EXISTS users (
	id          text PRIMARY KEY,
	tenant_id   text NOT NULL REFERENCES tenants (id),
	email       text NOT NULL,
	name        text,
	role        text,
	created_at  timestamptz,
	updated_at  timestamptz,
	UNIQUE (tenant_id, email)
);
-- Telemetry: keyed by (device_id, timestamp) as in V1; a reading stored twice is
-- the same reading (ON CONFLICT DO NOTHING). No foreign keys: bulk ingestion.
CREATE TABLE IF NOT EXISTS telemetry (
	tenant_id   text NOT NULL,
	device_id   text NOT NULL,
	timestamp   timestamptz NOT NULL,
	metrics     jsonb,
	protocol    text,
	source      text,
	quality     text,
	PRIMARY KEY (device_id, timestamp)
);
-- Idempotency-Key -> the answer given, stored in the same transaction as the write.
CREATE TABLE IF NOT EXISTS idempotency_keys (
	key        text PRIMARY KEY,
	status     int NOT NULL,
	body       text,
	request    text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
);
