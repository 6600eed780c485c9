-- iot-v1: the single-tenant IoT platform (database iot_v1).
-- Applied by `dw-demo-backend --service iot-v1 --init-schema` (embedded in tools/demo/schema.c).
CREATE SEQUENCE IF NOT EXISTS devices_id_seq;
CREATE TABLE IF NOT EXISTS devices (
	id         text PRIMARY KEY,
	name       text NOT NULL,
	type       text NOT NULL,
	config     jsonb,
	status     text,
	created_at timestamptz DEFAULT now(),
	updated_at timestamptz
);
CREATE SEQUENCE IF NOT EXISTS users_id_seq;
CREATE TABLE IF NOT EXISTS users (
	id         text PRIMARY KEY,
	email      text NOT NULL UNIQUE,
	name       text,
	role       text NOT NULL DEFAULT 'USER',
	created_at timestamptz DEFAULT now(),
	updated_at timestamptz
);
-- Telemetry (the guide's deviceData): one reading per device and instant, so the
-- pair is the key; append-only, and large (no foreign key, as a time-series table).
CREATE TABLE IF NOT EXISTS device_data (
	device_id  text NOT NULL,
	timestamp  timestamptz NOT NULL,
	data       jsonb,
	protocol   text,
	source     text,
	PRIMARY KEY (device_id, timestamp)
);
