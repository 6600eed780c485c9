/*
 * plan.c — the read decision of plan.h.
 */
#include "plan.h"

#include <stdlib.h>
#include <string.h>

static void decide(const struct dw_config *c, const struct dw_read *rd, enum read_side side,
		   enum read_reason why, struct read_plan *out)
{
	out->side = side;
	out->reason = why;
	out->upstream = side == READ_NEW ? rd->upstream : c->default_upstream;
}

/* Whether the read's key has a write not yet delivered. */
static bool read_pinned(const struct dw_config *c, const struct dw_read *rd,
			const struct expr_ctx *ctx, const struct plan_pins *pins)
{
	const struct expr *ke = rd->key ? rd->key : rd->sticky;
	const char *up = c->upstreams[rd->upstream].name;
	struct dw_err err = { { 0 } };
	char *v = NULL;
	bool r;

	if (!pins || !pins->pinned)
		return false;
	switch (ke ? expr_eval_string(ke, ctx, &v, &err) : EXPR_MISSING) {
	case EXPR_OK:
		r = pins->pinned(pins->arg, up, v);
		free(v);
		return r;
	case EXPR_MISSING:
		return pins->pinned(pins->arg, up, NULL);
	default:
		return true;
	}
}

static void decide_pinned(const struct dw_config *c, const struct dw_read *rd,
			  const struct expr_ctx *ctx, const struct plan_pins *pins,
			  struct read_plan *out)
{
	if ((out->side == READ_NEW || out->shadow) && read_pinned(c, rd, ctx, pins)) {
		if (out->side == READ_NEW)
			decide(c, rd, READ_LEGACY, READ_PINNED, out);
		out->shadow_pinned = out->shadow;
		out->shadow = false;
	}
}

static void plan_bucket(const struct dw_config *c, const struct dw_route *r,
			const struct expr_ctx *ctx, struct bucket_rng *rng, struct read_plan *out);

void plan_read(const struct dw_config *c, const struct dw_route *r, const struct expr_ctx *ctx,
	       struct bucket_rng *rng, struct read_plan *out)
{
	plan_read_pinned(c, r, ctx, rng, NULL, out);
}

void plan_read_pinned(const struct dw_config *c, const struct dw_route *r,
		      const struct expr_ctx *ctx, struct bucket_rng *rng,
		      const struct plan_pins *pins, struct read_plan *out)
{
	const struct dw_read *rd = r->read;

	out->shadow = rd->shadow && bucket_draw(rng) < rd->shadow;
	out->shadow_pinned = false;
	plan_bucket(c, r, ctx, rng, out);
	if (out->reason == READ_GUARD)
		out->shadow = false; /* rolled back: the new system gets nothing */
	decide_pinned(c, rd, ctx, pins, out);
}

static void plan_bucket(const struct dw_config *c, const struct dw_route *r,
			const struct expr_ctx *ctx, struct bucket_rng *rng, struct read_plan *out)
{
	const struct dw_read *rd = r->read;
	uint32_t w = rd->state ? readstate_effective(rd->state) : rd->weight;
	struct dw_err err = { { 0 } };
	char *v = NULL;

	out->bucket = BUCKET_COUNT;
	out->weight = w;
	if (rd->state && readstate_held(rd->state)) {
		decide(c, rd, READ_LEGACY, READ_GUARD, out);
		return;
	}
	if (w == 0 || w >= BUCKET_COUNT) {
		decide(c, rd, w ? READ_NEW : READ_LEGACY, READ_BUCKET, out);
		return;
	}
	switch (rd->sticky ? expr_eval_string(rd->sticky, ctx, &v, &err) : EXPR_MISSING) {
	case EXPR_OK:
		out->bucket = bucket_of(r->name, strlen(r->name), v, strlen(v));
		free(v);
		break;
	case EXPR_MISSING:
		out->bucket = bucket_draw(rng);
		break;
	default:
		decide(c, rd, READ_LEGACY, READ_BUCKET, out);
		return;
	}
	decide(c, rd, bucket_serves_new(out->bucket, w) ? READ_NEW : READ_LEGACY, READ_BUCKET, out);
}

void plan_fallback(const struct dw_config *c, struct read_plan *p)
{
	p->side = READ_LEGACY;
	p->reason = READ_FALLBACK;
	p->upstream = c->default_upstream;
}
