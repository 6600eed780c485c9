-- user-core: the legacy Gear Operations equipment API (database user_core).
-- Applied by `dw-demo-backend --service user-core --init-schema` (embedded in tools/demo/schema.c).
CREATE TABLE IF NOT EXISTS old_equipment (
	id         bigserial PRIMARY KEY,
	user_id    bigint NOT NULL,
	name       text NOT NULL,
	type       text,
	brand      text,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS old_equipment_user_id_idx ON old_equipment (user_id);
