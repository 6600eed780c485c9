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
