-- gear-ops: the new Gear Operations service (database gear_ops).
-- Applied by `dw-demo-backend --service gear-ops --init-schema` (embedded in tools/demo/schema.c).
-- gear_items.id is the id the legacy old_equipment row was given; no sequence here.
CREATE TABLE IF NOT EXISTS gear_items (
	id         bigint PRIMARY KEY,
	user_id    bigint NOT NULL,
	name       text NOT NULL,
	category   text,
	brand      text,
	status     text NOT NULL DEFAULT 'active',
	role       text NOT NULL DEFAULT 'personal',
	created_at timestamptz,
	updated_at timestamptz
);
CREATE INDEX IF NOT EXISTS gear_items_user_id_idx ON gear_items (user_id);
-- After the write cut-over (authority "new") this service assigns the ids of new items,
-- from a range the legacy never reaches; the legacy row gets the same id (reverse mirror).
CREATE SEQUENCE IF NOT EXISTS gear_items_id_seq START 1000000000;
-- The new system's own features (no legacy counterpart; not mirrored).
CREATE TABLE IF NOT EXISTS gear_inspections (
	id           bigserial PRIMARY KEY,
	gear_item_id bigint NOT NULL REFERENCES gear_items (id) ON DELETE CASCADE,
	inspected_at timestamptz NOT NULL DEFAULT now(),
	result       text NOT NULL DEFAULT 'ok',
	notes        text,
	created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS gear_reminders (
	id           bigserial PRIMARY KEY,
	gear_item_id bigint NOT NULL REFERENCES gear_items (id) ON DELETE CASCADE,
	kind         text NOT NULL DEFAULT 'inspection',
	due_at       timestamptz NOT NULL,
	done         boolean NOT NULL DEFAULT false,
	created_at   timestamptz NOT NULL DEFAULT now()
);
-- Idempotency-Key -> the answer given, stored in the same transaction as the write.
CREATE TABLE IF NOT EXISTS idempotency_keys (
	key        text PRIMARY KEY,
	status     int NOT NULL,
	body       text,
	request    text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
);
